"""Command line: one click group, one thin function per command, in cli/<group>.py.

The only part that prints or exits. Every command parses its options, calls one core function, and renders the
value it returns as a table or (with --json) as one JSON document. Core errors are CpkgsError subclasses carrying
their exit code; they become one line on stderr. Tracebacks only with -v.

May import: every part.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import traceback
import warnings
from typing import Any

import click

from cpkgs_admin import __version__
from cpkgs_admin.cli.common import Ctx
from cpkgs_admin.errors import CpkgsError, os_error_text
from cpkgs_admin.site.notices import set_notice
from cpkgs_admin.site.text import printable
from cpkgs_admin.site.tools import running_tool

_state: dict[str, Any] = {"verbose": 0}

# Each command's module (cli/<group>.py) is imported when that command runs: it imports its part of cpkgs at the
# top, and the parts differ in cost (the catalog's jinja2, verify's hashing pools, conda-pack, rattler): 135 ms more
# on every `cpkgs list` if all were loaded (python -X importtime).
COMMANDS = {
    "init": "admin:init", "write-profiles": "admin:write_profiles_cmd", "refresh": "admin:refresh",
    "locks": "admin:locks", "catalog": "catalog:catalog", "usage": "usage:usage",
    "new-env": "build:new_env",
    "list": "envs:list_cmd", "info": "envs:info", "diff": "envs:diff", "export": "envs:export",
    "verify": "verify:verify", "doctor": "doctor:doctor",
    "seal": "status:seal", "unseal": "status:unseal", "retire": "status:retire", "remove": "status:remove",
    "purge": "status:purge",
    "pack": "pack:pack", "mirror": "pack:mirror",
    "link-user": "users:link_user", "unlink-user": "users:unlink_user", "extend": "users:extend",
    "install-tool": "tool:install_tool_cmd",
}


# What `cpkgs --help` lists for each command: the first sentence of its help, kept here so that listing them imports
# none of their modules (all of them: 200+ ms more, 5 s in a TCG guest reading cpkgs over NFS);
# tests/test_cli_help.py holds each to its command's own help.
SUMMARIES = {
    'catalog': "Render the catalog web page (every env, its packages, how to use it); print this host's index.html.",
    'diff': 'Packages added, removed and changed between two environments.',
    'doctor': "Check this user's and this host's setup (exit 4 when a check fails).",
    'export': 'Print an environment as an explicit lock file or environment.yml.',
    'extend': 'Personal layer in DIR on top of shared env BASE (pip installs go to DIR).',
    'info': "Show an environment's record and packages.",
    'init': 'Create or upgrade the site tree (idempotent).',
    'install-tool': "Put cpkgs itself on the share for each installation: a sealed build users' profiles put on PATH.",
    'link-user': "Add the site's shared envs to your own conda (envs_dirs).",
    'list': 'List environments (reads records only).',
    'locks': 'List held locks with owner and age.',
    'mirror': "A local channel holding exactly NAME's packages.",
    'new-env': 'Build a sealed, versioned environment NAME (e.g. ml-pyroot-2024.1).',
    'pack': 'conda-pack archive of NAME for machines without the drive.',
    'purge': ('Move removed envs past their grace into the trash and delete it; busy .nfs files are skipped and'
              ' reported.'),
    'refresh': 'Regenerate profiles, modulefiles and kernelspecs; remove orphans.',
    'remove': "Hide an environment and refuse new activations; 'purge' after the grace moves it away.",
    'retire': 'Mark an environment retired (it stays usable).',
    'seal': 'Make an environment read-only again.',
    'unlink-user': 'Remove exactly what link-user added.',
    'unseal': 'Make an environment owner-writable for a maintenance window (audited).',
    'usage': 'Runs, users and last use per env and users per package, from the usage logs (cpkgs.yaml usage.logs).',
    'verify': "Check permissions and every file's integrity (exit 4 on problems).",
    'write-profiles': 'Render <root>/etc/profile.d/conda.sh and conda.csh.',
}


class _Commands(click.Group):
    """The group whose commands are imported by name when they run (COMMANDS); `--help` lists SUMMARIES."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *COMMANDS})

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(n) for n in names)
        # click's own shortening of a help text, on the summary instead of the imported command
        rows = [(n, click.Command(n, help=SUMMARIES[n]).get_short_help_str(limit)) for n in names]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            module, attr = COMMANDS[cmd_name].split(":")
            self.add_command(getattr(importlib.import_module(f"cpkgs_admin.cli.{module}"), attr), cmd_name)
        return self.commands.get(cmd_name)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--root", metavar="DIR", help="Site root (default: $CPKGS_ROOT, else /nfs/cpkgs).")
@click.option("-v", "--verbose", count=True, help="More output; tracebacks on errors.")
@click.option("-q", "--quiet", is_flag=True, help="Only errors.")
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=lambda c, _p, v: _version(c, v),
              help="Show the version (and which site's tool this is) and exit.")
@click.pass_context
def cli(ctx: click.Context, root: str | None, verbose: int, quiet: bool) -> None:
    """cpkgs: a site's shared conda installation on a network drive.

    Admins build sealed, versioned environments under the site root; users activate them from any Linux or macOS
    host that mounts it (source <root>/etc/profile.d/conda.sh), from Lmod modules or from Jupyter.
    """
    _state["verbose"] = verbose
    ctx.obj = Ctx(root, verbose, quiet)
    # What core code says while it works (a lock waited for, a dead lock recovered): on stderr, unless -q.
    set_notice(None if quiet else _log_notice)


def _version(ctx: click.Context, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    tool = running_tool()
    where = f" (the site's tool for {tool.get('platform')} at {tool.get('prefix')})" if tool else ""
    click.echo(printable(f"cpkgs, version {__version__}{where}"))
    ctx.exit()


def _log_notice(msg: str) -> None:
    click.echo(f"cpkgs: {msg}", err=True)


# -------------------------------------------------------------------------------------------------------------- main


def _interrupted(exc: BaseException) -> bool:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, KeyboardInterrupt):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False


def _interrupted_exit() -> int:
    _quiet_teardown()
    # On a terminal the cursor is still after the "^C" the terminal echoed.
    click.echo(("\n" if sys.stderr.isatty() else "") + "cpkgs: interrupted", err=True)
    return 130


def _quiet_teardown() -> None:
    """An interrupt can land while asyncio is setting up an event loop for rattler: freeing the half-made loop
    and the coroutine it never ran then prints "Exception ignored ..." and "never awaited" to stderr; rattler's
    threads, still finishing their work for a moment, print "RuntimeError: Event loop is closed" through
    sys.excepthook when they hand a result to the closed loop. The process is about to exit; the user gets one
    line, not those."""
    sys.unraisablehook = lambda _unraisable: None
    sys.excepthook = lambda *_exc: None
    warnings.simplefilter("ignore")


def _failed(text: str, code: int) -> int:
    """One line whatever it quotes (a path, a package's file name, a spec): control characters escaped."""
    if _state["verbose"]:
        traceback.print_exc()
    click.echo(f"cpkgs: {printable(text)}", err=True)
    return code


def _click_error(exc: click.ClickException) -> int:
    if type(exc).__name__ == "NoArgsIsHelpError":  # bare `cpkgs` (click >= 8.2): the help, as click shows it
        click.echo(exc.format_message(), err=True)
        return 2
    # One line, like every other error (click's own show() adds a usage block and a hint line).
    hint = ""
    if isinstance(exc, click.UsageError) and exc.ctx is not None:
        hint = f" (see '{exc.ctx.command_path} --help')"
    click.echo(f"cpkgs: {exc.format_message()}{hint}", err=True)
    return 2 if isinstance(exc, click.UsageError) else exc.exit_code


def _internal_error(exc: Exception) -> int:
    if _interrupted(exc):  # Python 3.11 wraps an interrupt during some imports (e.g. "Error calling __set_name__")
        return _interrupted_exit()
    if _state["verbose"]:
        traceback.print_exc()
    click.echo(f"cpkgs: internal error: {type(exc).__name__}: {exc} (run with -v for the traceback)", err=True)
    return 1


def _run(argv: list[str] | None) -> int:
    if os.environ.get("_CPKGS_COMPLETE"):  # shell completion: click's own main() knows how
        cli.main(args=argv, prog_name="cpkgs")
    try:
        # click's main() without its interrupt handling, which writes an empty line to stderr before ours.
        args = list(sys.argv[1:] if argv is None else argv)
        with cli.make_context("cpkgs", args) as ctx:
            cli.invoke(ctx)
    except CpkgsError as exc:
        return _failed(str(exc), exc.exit_code)
    except click.exceptions.Abort:
        _quiet_teardown()
        click.echo("cpkgs: interrupted", err=True)
        return 130
    except click.ClickException as exc:
        return _click_error(exc)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code or 0)
    except (KeyboardInterrupt, EOFError):
        return _interrupted_exit()
    except BrokenPipeError:
        return 1
    except OSError as exc:
        # The filesystem failing under a command (EIO, EROFS, ENOSPC, a server gone): one line naming the path and
        # the errno; the locks a dead process leaves are recovered by the next one.
        return _failed(os_error_text(exc), 1)
    except Exception as exc:
        return _internal_error(exc)
    return 0


def _first_interrupt(_signum: int, _frame: Any) -> None:
    """Ctrl-C: stop cleanly. Further Ctrl-Cs are ignored from here on: an impatient second one used to land in the
    middle of the clean-up (staging dir, lock release) or of the one-line message, and ended in a traceback or a
    half-removed staging dir. SIGQUIT (Ctrl-\\) and SIGKILL still end the process at once."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _quiet_teardown()
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when the caller ignores SIGINT
        signal.signal(signal.SIGINT, _first_interrupt)
    code = _run(argv)
    # py-rattler 0.28's native runtime can crash during interpreter finalization (SIGSEGV/SIGABRT in about a third
    # of runs after a solve or index): the work is done and every lock released by now, so leave without
    # finalizing. Flush first: os._exit skips Python's buffered-stream cleanup.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass
    os._exit(code)
