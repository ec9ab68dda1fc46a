"""What to build, as admins write it: spec files (environment.yml as conda reads it, `specs/<family>.yml` with
`extends:`), match specs, and explicit lock files (read by `new-env --lock`, written by `cpkgs export`: the format's
one home)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cpkgs_admin.errors import SpecError, UsageError
from cpkgs_admin.site.channels import CHANNEL_NAME, split_channel_spec
from cpkgs_admin.site.files import read_text_file
from cpkgs_admin.site.names import check_family
from cpkgs_admin.site.records import PackageEntry
from cpkgs_admin.site.text import control_character
from cpkgs_admin.site.yamlio import parse_yaml

_EXPLICIT_LINE = re.compile(r"(?P<url>\S+?)(?:#(?P<hash>[0-9a-fA-F]{32}|[0-9a-fA-F]{64}|sha256:[0-9a-fA-F]{64}))?\Z")


@dataclass(frozen=True)
class Spec:
    """A request: match specs plus the channels a spec file named (empty = the site's)."""

    specs: tuple[str, ...]
    channels: tuple[str, ...] = ()
    source: str | None = None  # spec file path, or "command line", "--from X", "--lock FILE"
    sha256: str | None = None  # of the spec file(s) that built it
    extends: tuple[str, ...] = ()
    # environment.yml `variables:` (NAME, value): set when the env is activated (conda.sh/conda.csh, modules,
    # kernels), unset when it is deactivated, as conda does with its env_vars.
    variables: tuple[tuple[str, str], ...] = ()
    # The `pip:` list of the dependencies, its lines as written (requirements, `-r FILE`, pip options), and the
    # directory of the spec file that gave them (a `-r FILE` is relative to it, as in conda's pip installer).
    pip: tuple[str, ...] = ()
    pip_dir: str | None = None
    # What the spec file holds that conda env create would warn about and ignore (unknown keys, variables: PATH).
    warnings: tuple[str, ...] = ()


VARIABLE_COMMENT = "# variable:"
CHANNEL_COMMENT = "# channel:"
# "# pip-lock: N packages, sha256 HEX; ..." in an explicit file of an env with a pip part: its pins are in the
# companion file (`cpkgs export NAME --format pip`), which `new-env --lock` then needs with --pip-lock.
PIP_LOCK_COMMENT = "# pip-lock:"
_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# conda's only reserved env var (conda/base/constants.py RESERVED_ENV_VARS): conda warns and ignores it
# (conda/core/prefix_data.py `_ensure_no_reserved_env_vars`, conda/activate.py).
CONDA_RESERVED_VAR = "PATH"

# The variables a spec file, a lock file's `# variable:` comments or a record carried by --from may not set: the one
# list, by why. (names, prefixes, what the refusal says).
_REFUSED_VARIABLES: tuple[tuple[frozenset[str], tuple[str, ...], str], ...] = (
    # Set by the activation itself, by cpkgs' profiles, the shell or the module system: a value here would be
    # overwritten, or would break activation, deactivation or the module system for the env's users.
    (frozenset({"PATH", "prompt", "_", "PWD", "OLDPWD", "SHLVL", "IFS", "MODULEPATH", "HOME"}),
     ("CONDA_", "CPKGS_", "_cpkgs", "_CE_", "LMOD_"), "is set by the activation itself"),
    # Make the users' shells run code without being asked: start-up files (BASH_ENV for every non-interactive bash,
    # ENV for sh/dash/ksh, which ksh even expands; ZDOTDIR moves zsh's), hooks run at every prompt, prompts that
    # bash (promptvars, on by default) and zsh (prompt_subst) expand with command substitution, PS4 at every traced
    # line, options handed to every bash started below (SHELLOPTS/BASHOPTS: xtrace + PS4, noexec...), where bash
    # writes its history (HISTFILE=~/.bashrc appends the user's commands to a file their shell runs), and what
    # `cd` and globs resolve to in every script (CDPATH, GLOBIGNORE).
    (frozenset({"PROMPT_COMMAND", "BASH_ENV", "ENV", "ZDOTDIR", "PS0", "PS1", "PS2", "PS3", "PS4", "PROMPT",
                "PROMPT2", "PROMPT3", "PROMPT4", "RPROMPT", "RPROMPT2", "RPS1", "RPS2", "SPROMPT", "SHELLOPTS",
                "BASHOPTS", "HISTFILE", "CDPATH", "GLOBIGNORE", "FPATH", "LESSOPEN", "LESSCLOSE"}),
     (), "makes the users' shells run code"),
    # Make the dynamic loader put code into every program the user runs, system ones included (ssh, git, the
    # shell itself): LD_PRELOAD, LD_AUDIT, GLIBC_TUNABLES, macOS's DYLD_*. LD_LIBRARY_PATH too: conda's binaries
    # find their libraries through RPATH ($ORIGIN) and never need it, while set in a shell it makes every system
    # program load the env's libraries first (broken tools at best, the env's code inside them at worst).
    (frozenset({"GLIBC_TUNABLES"}), ("LD_", "DYLD_"), "makes the dynamic loader load code into every program"),
    # Make an interpreter run or import code at start-up, in every program of that language the user runs (their
    # own interpreters too): PYTHONPATH as well, which puts modules ahead of every Python's own (an env's Python
    # finds its packages without it; a site's extra modules belong in a package).
    (frozenset({"PYTHONSTARTUP", "PYTHONPATH", "PYTHONHOME", "PYTHONUSERBASE", "PYTHONPYCACHEPREFIX",
                "PYTHONBREAKPOINT", "PERL5OPT", "PERL5LIB", "PERLLIB", "PERL5DB", "RUBYOPT", "RUBYLIB",
                "NODE_OPTIONS", "NODE_PATH", "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS", "R_PROFILE",
                "R_PROFILE_USER", "R_ENVIRON", "R_ENVIRON_USER", "TCLLIBPATH"}),
     ("LUA_INIT",), "makes an interpreter run code at start-up"),
)


def refused_variable(name: str) -> str | None:
    """Why a spec may not set the variable NAME, or None."""
    for names, prefixes, why in _REFUSED_VARIABLES:
        if name in names or name.startswith(prefixes):
            return why
    return None


def check_variables(value: Any, where: str, warnings: list[str] | None = None) -> tuple[tuple[str, str], ...]:
    """environment.yml `variables:`: a mapping of names to scalars, as conda takes them (values become strings).
    PATH is left out, as conda does, with a line in WARNINGS."""
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise SpecError(f"{where}: 'variables' must be a mapping of NAME: value")
    out = []
    for name, val in value.items():
        if not isinstance(name, str) or not _VAR_NAME.match(name):
            raise SpecError(f"{where}: variables: {name!r} is not a variable name")
        if name == CONDA_RESERVED_VAR:
            if warnings is not None:
                warnings.append(f"{where}: variables: {name} is reserved; ignored, as conda does")
            continue
        why = refused_variable(name)
        if why is not None:
            raise SpecError(f"{where}: variables: {name} {why} and cannot be given here")
        if isinstance(val, bool):
            val = "true" if val else "false"
        elif isinstance(val, (int, float)):
            val = str(val)
        if not isinstance(val, str):
            raise SpecError(f"{where}: variables: {name} must be a string or a number")
        if control_character(val):
            # newlines, tabs, CR: csh cannot carry them, Lmod's Tcl reading mangles them; escapes reach terminals
            raise SpecError(f"{where}: variables: {name} must be one line of printable characters")
        out.append((name, val))
    return tuple(out)


@dataclass(frozen=True)
class LockedPackage:
    url: str
    filename: str
    sha256: str | None
    md5: str | None


@dataclass(frozen=True)
class ExplicitLock:
    path: str
    platform: str | None
    packages: tuple[LockedPackage, ...] = field(default_factory=tuple)
    # "# variable: NAME=VALUE" comment lines (cpkgs export writes them; conda reads them as comments)
    variables: tuple[tuple[str, str], ...] = ()
    # "# channel: NAME URL" comment lines: the channel name each package URL's base stands for (base URL -> name),
    # so that a site mirroring NAME elsewhere finds the packages there.
    channels: dict[str, str] = field(default_factory=dict)
    # (packages, sha256 of the companion pip lock) when the env had a pip part, else None
    pip_lock: tuple[int, str] | None = None


# conda's MatchSpec drops a bracket section that holds no key=value pair: `dask[complete]` is `dask`
# (conda/models/match_spec.py `_parse_spec_str`, step 3); rattler refuses such a spec.
_BARE_BRACKETS = re.compile(r"\[(?P<inner>[^\[\]=]*)\]\s*\Z")
# A conda build string holds none of these (match_spec.py `_VERSION_BUILD_RE`): where rattler reads `<=3.0` of
# `r-tidyverse>=2.0<=3.0` as a build string, conda takes `>=2.0<=3.0` as the version and refuses it.
_NOT_IN_BUILD = re.compile(r"[<>=!~,|]")


def conda_spec_text(spec: str) -> tuple[str, str | None]:
    """SPEC as conda's MatchSpec reads it, and a warning when that is less than it says (`dask[complete]`)."""
    text = spec.strip()
    m = _BARE_BRACKETS.search(text)
    if m is None:
        return text, None
    bare = text[: m.start()].rstrip()
    return bare, f"{text}: conda ignores [{m.group('inner')}] (no key=value in it); requested as {bare}"


def spec_name(spec: str) -> str:
    """The package name a match spec constrains (validates the spec as a side effect)."""
    return str(parse_match_spec(spec).name.normalized)


def parse_match_spec(spec: str) -> Any:
    """SPEC read as rattler's MatchSpec, refused where conda's MatchSpec refuses it or rattler would misread it."""
    # rattler costs 33 ms to import: only once a spec is parsed (not by `list`, `info`, the catalog's spec view...).
    from rattler import MatchSpec  # noqa: PLC0415

    if not spec or not spec.strip():
        raise SpecError("empty match spec")
    if control_character(spec):  # requested specs reach users in `module help` and `cpkgs info`
        raise SpecError(f"match spec {spec!r} holds a control character ({control_character(spec)})")
    text = conda_spec_text(spec)[0]
    try:
        ms = MatchSpec(text)
    except Exception as exc:  # rattler raises its own InvalidMatchSpecError family
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        hint = " (a channel? list it under 'channels:')" if "/" in text and "::" not in text else ""
        raise SpecError(f"invalid match spec {spec!r}: {reason}{hint}") from None
    if ms.name is None:
        raise SpecError(f"match spec {spec!r} names no package")
    if ms.build is not None and _NOT_IN_BUILD.search(str(ms.build)):
        raise SpecError(f"invalid match spec {spec!r}: {str(ms.build)!r} is neither a version nor a build string "
                        "(conda refuses it; join version constraints with ',', e.g. >=2.0,<=3.0)")
    if ms.channel is not None and split_channel_spec(text)[0] is None:
        raise SpecError(f"match spec {spec!r}: give its channel as CHANNEL::{ms.name.normalized} (cpkgs maps channel "
                        "names to the site's URLs in that form only)")
    return ms


def validate_specs(specs: tuple[str, ...] | list[str], warnings: list[str] | None = None) -> tuple[str, ...]:
    """SPECS checked, as conda reads them (see conda_spec_text); what conda ignores goes to WARNINGS."""
    out = []
    for s in specs:
        parse_match_spec(s)
        text, warning = conda_spec_text(s)
        if warning and warnings is not None:
            warnings.append(warning)
        out.append(text)
    return tuple(out)


def _read_text(path: Path, what: str) -> str:
    try:
        return read_text_file(path, f"{what} {path}", SpecError)
    except FileNotFoundError:
        raise SpecError(f"{what} {path} does not exist") from None


def _load_yaml(path: Path) -> Any:
    text = _read_text(path, "spec file")
    return parse_yaml(text, f"spec file {path}", SpecError), text


# conda/env/env.py VALID_KEYS; `extends` is cpkgs' own, for the site's specs/<family>.yml.
ENV_FILE_KEYS = ("name", "channels", "dependencies", "variables", "prefix", "extends")
# conda-lock's platform selectors (`- cx_oracle  # [linux64]`): a comment to conda env create.
_SELECTOR = re.compile(r"^[ \t]*-[ \t]*[^#\s][^#\n]*(?P<sel>#[ \t]*\[[ \t]*[A-Za-z0-9_ !]+\])[ \t]*\r?$", re.MULTILINE)


def load_environment_yml(path: Path) -> tuple[dict[str, Any], str]:
    """Parse and check an environment.yml as `conda env create` reads it (conda/env/env.py `from_yaml`); the file's
    `name` and `prefix` are ignored. Sets data["dependencies"] (conda specs as conda reads them), data["pip"] (the
    `pip:` lines), data["variables"] ((NAME, value) pairs) and data["warnings"] (what conda warns about)."""
    data, text = _load_yaml(path)
    where = f"spec file {path}"
    if not isinstance(data, dict):
        raise SpecError(f"{where}: expected a mapping with 'dependencies', got {type(data).__name__}")
    warnings: list[str] = []
    for key in list(data):
        if key not in ENV_FILE_KEYS:
            # conda/env/env.py `validate_keys`: unknown sections (conda-lock's category, platforms) are ignored.
            warnings.append(f"{where}: key {key!r} is not an environment.yml key; ignored, as conda does "
                            f"(keys: {', '.join(ENV_FILE_KEYS[:-1])}; extends in specs/<family>.yml)")
            del data[key]
    data["variables"] = check_variables(data.get("variables"), where, warnings)
    deps = data.get("dependencies") or []
    if not isinstance(deps, list):
        raise SpecError(f"{where}: 'dependencies' must be a list")
    data["dependencies"], data["pip"] = _split_dependencies(deps, where, warnings)
    selector = _SELECTOR.search(text)
    if selector:
        line = text.count("\n", 0, selector.start()) + 1
        warnings.append(f"{where} line {line}: {selector.group('sel')!r} is a conda-lock platform selector, a comment "
                        "to conda env create and to cpkgs: every dependency is requested on every platform")
    channels = data.get("channels") or []
    if not isinstance(channels, list) or not all(isinstance(c, str) and c.strip() for c in channels):
        raise SpecError(f"{where}: 'channels' must be a list of channel names or URLs")
    data["channels"] = [c.strip() for c in channels]
    ext = data.get("extends")
    names = [ext] if isinstance(ext, str) else ext
    if ext is not None and not (isinstance(names, list) and all(isinstance(e, str) for e in names)):
        raise SpecError(f"{where}: 'extends' must be a family name or a list of them")
    data["warnings"] = warnings
    return data, text


def _split_dependencies(deps: list[Any], where: str, warnings: list[str]) -> tuple[list[str], list[str]]:
    """(conda specs, pip lines) of a `dependencies:` list, in any order (conda/env/env.py `Dependencies.parse`)."""
    specs: list[str] = []
    pip: list[str] = []
    for i, d in enumerate(deps):
        if isinstance(d, dict):
            for key, value in d.items():
                if key != "pip":
                    warnings.append(f"{where}: dependencies[{i}]: a {key!r} section is not installed by conda; "
                                    "ignored")
                    continue
                if value is not None and not (isinstance(value, list) and all(isinstance(x, str) for x in value)):
                    raise SpecError(f"{where}: dependencies[{i}]: 'pip' must be a list of requirement lines")
                pip += [x.strip() for x in value or [] if x.strip()]
            continue
        if not isinstance(d, str):
            raise SpecError(f"{where}: dependencies[{i}] must be a match spec string")
        said: list[str] = []
        try:
            specs += validate_specs([d], said)
        except SpecError as exc:
            raise SpecError(f"{where}: dependencies[{i}]: {exc}") from None
        warnings += [f"{where}: dependencies[{i}]: {w}" for w in said]
    return specs, pip


def from_environment_file(path: Path) -> Spec:
    data, text = load_environment_yml(path)
    if data.get("extends"):
        raise SpecError(f"spec file {path}: 'extends' is only for the site's specs/<family>.yml files")
    return Spec(
        specs=tuple(data["dependencies"]),
        channels=tuple(data["channels"]),
        source=str(path),
        sha256=hashlib.sha256(text.encode()).hexdigest(),
        variables=data["variables"],
        pip=tuple(data["pip"]),
        pip_dir=str(path.resolve().parent) if data["pip"] else None,
        warnings=tuple(data["warnings"]),
    )


def from_family(specs_dir: Path, family: str) -> Spec:
    """specs/<family>.yml, following `extends:` (parents first, their channels first; cycles refused)."""
    check_family(family)
    digest = hashlib.sha256()
    chain: list[str] = []

    variables: dict[str, str] = {}
    pip: list[str] = []  # parents' lines first; every file is in specs_dir, where `-r FILE` starts
    warnings: list[str] = []

    def load(fam: str, seen: tuple[str, ...]) -> tuple[list[str], list[str]]:
        check_family(fam)
        if fam in seen:
            raise SpecError(f"spec {specs_dir / (fam + '.yml')}: 'extends' cycle: {' -> '.join((*seen, fam))}")
        path = specs_dir / f"{fam}.yml"
        if not path.exists():
            if not seen:
                raise SpecError(
                    f"no spec file {path} for family {fam!r}: give specs, -f FILE, --from OLD or --lock FILE"
                )
            raise SpecError(f"spec {specs_dir / (seen[-1] + '.yml')} extends {fam!r}, but {path} does not exist")
        data, text = load_environment_yml(path)
        digest.update(text.encode())
        parents = data.get("extends") or []
        if isinstance(parents, str):
            parents = [parents]
        deps: list[str] = []
        chans: list[str] = []
        for parent in parents:
            pd, pc = load(parent, (*seen, fam))
            deps += pd
            chans += pc
            chain.append(parent)
        # Own dependencies (and variables) override a parent's for the same name.
        variables.update(data["variables"])
        pip.extend(data["pip"])
        warnings.extend(data["warnings"])
        own = list(data["dependencies"])
        own_names = {spec_name(d) for d in own}
        deps = [d for d in deps if spec_name(d) not in own_names] + own
        chans = list(dict.fromkeys([*chans, *data["channels"]]))
        return deps, chans

    deps, chans = load(family, ())
    return Spec(
        specs=tuple(deps),
        channels=tuple(chans),
        source=str(specs_dir / f"{family}.yml"),
        sha256=digest.hexdigest(),
        extends=tuple(dict.fromkeys(chain)),
        variables=tuple(variables.items()),
        pip=tuple(pip),
        pip_dir=str(specs_dir.resolve()) if pip else None,
        warnings=tuple(warnings),
    )


def apply_changes(base: tuple[str, ...], add: tuple[str, ...], remove: tuple[str, ...]) -> tuple[str, ...]:
    """--from OLD --add/--remove: drop removed names, replace specs of added names, append new ones."""
    removed = {spec_name(r) if r.strip() else "" for r in remove}
    added = {spec_name(a): conda_spec_text(a)[0] for a in add}
    out = [s for s in base if spec_name(s) not in removed and spec_name(s) not in added]
    return tuple(out) + tuple(added.values())


def split_filename(filename: str) -> tuple[str, str, str]:
    """(name, version, build) of a conda package file name."""
    stem = filename.removesuffix(".conda").removesuffix(".tar.bz2")
    parts = stem.rsplit("-", 2)
    if len(parts) != 3:
        raise SpecError(f"{filename!r} is not a conda package file name (name-version-build)")
    return parts[0], parts[1], parts[2]


def read_explicit(path: Path) -> ExplicitLock:
    """A conda explicit file: '@EXPLICIT' then one package URL per line, with #md5 or #sha256."""
    text = _read_text(path, "lock file")
    platform = None
    seen_explicit = False
    pkgs: list[LockedPackage] = []
    first_line: dict[str, tuple[int, str]] = {}  # package name -> (line, file name)
    variables: dict[str, str] = {}
    channels: dict[str, str] = {}
    pip_lock = None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith(PIP_LOCK_COMMENT):
            pip_lock = _pip_lock_comment(path, n, line)
            continue
        if line.startswith("#"):
            named = _lock_comment(path, n, raw, variables, channels)
            platform = platform if named is None else named
            continue
        if line == "@EXPLICIT":
            seen_explicit = True
            continue
        if not seen_explicit:
            raise SpecError(f"lock file {path} line {n}: expected '@EXPLICIT' before package URLs")
        pkgs.append(_locked_package(path, n, line, first_line))
    if not seen_explicit:
        raise SpecError(f"lock file {path}: not a conda explicit file (no '@EXPLICIT' line)")
    if not pkgs:
        raise SpecError(f"lock file {path}: lists no packages")
    return ExplicitLock(path=str(path), platform=platform, packages=tuple(pkgs),
                        variables=check_variables(variables, f"lock file {path}"), channels=channels,
                        pip_lock=pip_lock)


def _pip_lock_comment(path: Path, n: int, line: str) -> tuple[int, str]:
    m = re.match(re.escape(PIP_LOCK_COMMENT) + r" (\d+) packages?, sha256 ([0-9a-f]{64})\b", line)
    if m is None:
        raise SpecError(f"lock file {path} line {n}: expected '{PIP_LOCK_COMMENT} N packages, sha256 HEX'")
    return int(m.group(1)), m.group(2)


def _lock_comment(path: Path, n: int, raw: str, variables: dict[str, str], channels: dict[str, str]) -> str | None:
    """A lock file's comment line N: the platform it names (None: not a platform line); its variables and channels
    into VARIABLES and CHANNELS."""
    line = raw.strip()
    if line.startswith("# platform:"):
        return line.split(":", 1)[1].strip()
    if line.startswith(VARIABLE_COMMENT):
        name, eq, value = raw.split(":", 1)[1].lstrip().partition("=")
        if not eq:
            raise SpecError(f"lock file {path} line {n}: expected '{VARIABLE_COMMENT} NAME=VALUE'")
        variables[name] = value.rstrip("\r")
    elif line.startswith(CHANNEL_COMMENT):
        parts = line[len(CHANNEL_COMMENT):].split()
        if len(parts) != 2 or "://" not in parts[1]:
            raise SpecError(f"lock file {path} line {n}: expected '{CHANNEL_COMMENT} NAME URL'")
        channels[parts[1].rstrip("/")] = parts[0]
    return None


def _locked_package(path: Path, n: int, line: str, first_line: dict[str, tuple[int, str]]) -> LockedPackage:
    """Line N of a lock file: a package URL with its hash; FIRST_LINE: the packages seen so far (one build each)."""
    m = _EXPLICIT_LINE.match(line)
    if m is not None and "#" in m.group("url"):
        raise SpecError(f"lock file {path} line {n}: the hash after '#' must be an md5 (32 hex digits) or a "
                        f"sha256 (64): {line.rpartition('#')[2][:80]!r}")
    if not m or "://" not in m.group("url"):
        raise SpecError(f"lock file {path} line {n}: not a package URL: {line[:80]!r}")
    url = m.group("url")
    filename = url.rsplit("/", 1)[-1]
    if not filename.endswith((".conda", ".tar.bz2")):
        raise SpecError(f"lock file {path} line {n}: {filename!r} is not a .conda or .tar.bz2 package")
    try:
        name = split_filename(filename)[0]
    except SpecError as exc:
        raise SpecError(f"lock file {path} line {n}: {exc}") from None
    if name in first_line:
        was, other = first_line[name]
        raise SpecError(f"lock file {path} line {n}: {name} again (line {was}: {other}); an environment holds "
                        "one build of each package")
    first_line[name] = (n, filename)
    h = m.group("hash")
    sha256 = md5 = None
    if h:
        h = h.removeprefix("sha256:").lower()
        if len(h) == 64:
            sha256 = h
        else:
            md5 = h
    return LockedPackage(url=url, filename=filename, sha256=sha256, md5=md5)


def check_sources(
    specs: tuple[str, ...], spec_file: Path | None, from_env: str | None, lock_file: Path | None,
    add: tuple[str, ...], remove: tuple[str, ...],
) -> None:
    if lock_file and (specs or spec_file or from_env):
        raise UsageError("--lock builds exactly the lock file's packages; it takes no specs, -f or --from")
    if (add or remove) and not from_env:
        raise UsageError("--add and --remove go with --from OLD")
    if from_env and spec_file:
        raise UsageError("use either --from OLD or -f FILE, not both")
    if from_env and specs:
        raise UsageError(f"--from OLD starts from OLD's specs; give more with --add, not as arguments ({specs[0]})")


def explicit_text(packages: list[PackageEntry], subdir: str, variables: dict[str, str] | None = None,
                  pip_lock: str | None = None, name: str = "NAME") -> str:
    """A conda explicit file; the env's spec-file variables and the names of the channels its URLs stand for ride
    along as comments (conda skips them, read_explicit reads them back), and for an env with a pip part (PIP_LOCK:
    the text of its companion lock) the count and hash of its pins."""
    named = {}
    for p in packages:
        base = p.url.rsplit("/", 2)[0]
        if CHANNEL_NAME.match(p.channel) and "://" in base:
            named[base] = p.channel
    lines = [
        "# This file may be used to create an environment using: cpkgs new-env NAME --lock FILE",
        f"# platform: {subdir}",
        *(f"{VARIABLE_COMMENT} {k}={v}" for k, v in (variables or {}).items()),
        *(f"{CHANNEL_COMMENT} {channel} {base}" for base, channel in named.items()),
        *([pip_lock_comment(pip_lock, name)] if pip_lock else []),
        "@EXPLICIT",
    ]
    for p in packages:
        lines.append(f"{p.url}#{p.sha256}" if p.sha256 else (f"{p.url}#{p.md5}" if p.md5 else p.url))
    return "\n".join(lines) + "\n"


def pip_lock_comment(text: str, name: str) -> str:
    n = sum(1 for line in text.splitlines() if re.match(r"[A-Za-z0-9]", line))
    digest = hashlib.sha256(text.encode()).hexdigest()
    return (f"{PIP_LOCK_COMMENT} {n} package{'s' if n != 1 else ''}, sha256 {digest}; the pip part's pins: "
            f"cpkgs export {name} --format pip > FILE, then new-env --lock THIS --pip-lock FILE")
