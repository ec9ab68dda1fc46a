"""`cpkgs link-user` / `cpkgs unlink-user`: list the site's shared envs in the user's own conda (`envs_dirs`).

Shared homes: one `~/.condarc` is read by conda on Linux and on macOS alike, so the entry must not name one OS's
installation. It names none: link-user appends exactly one item

    <root>/${CPKGS_INSTALLATION}/envs

and the site's `etc/profile.d/conda.sh` / `conda.csh` export CPKGS_INSTALLATION for the host they run on
(`anaconda3_linux` on Linux x86_64, `anaconda3_macOS` on an arm64 Mac). conda expands environment variables in
envs_dirs (github.com/conda/conda): conda/base/context.py declares `_envs_dirs = ParameterLoader(SequenceParameter(...),
aliases=("envs_dirs", "envs_path"), expandvars=True)` (conda/common/configuration.py applies `os.path.expandvars`
to each raw value) and `mockable_context_envs_dirs` passes every entry through conda/common/path.py
`expand()` = `abspath(expanduser(expandvars(path)))`. Where CPKGS_INSTALLATION is unset, expandvars leaves the text
as it is: `<root>/${CPKGS_INSTALLATION}/envs` does not exist and users cannot create it (the root is not theirs),
so conda lists nothing from it and never creates an env there. The item goes last: conda creates new envs in the
first writable entry, so the user's own dirs keep that role.

The user's file is theirs. ruamel.yaml's round-trip composer (the YAML library conda itself reads condarc files
with) locates the nodes; the change is spliced in at their marks so every byte outside the touched list stays as
it was (a full round-trip dump re-indents and re-spaces); every result is parsed again and must equal the old
settings plus (or minus) exactly that one item, else ruamel's round-trip dump is used and checked the same way.
userfile.edit_file does the writing: with the rights of the user who controls the file (root editing a user's
condarc becomes that user in a child process), under a lock beside it, a timestamped backup (the newest 3 kept),
an atomic replace that keeps owner, group and mode, and no lost lines when the user's editor writes meanwhile; a
symlinked file (dotfile managers) is edited at its target and stays a symlink.

unlink-user removes every item equal to that entry, nothing else. When link-user had to create the `envs_dirs` key
it marks the key's line with the comment `# added by cpkgs link-user`; unlink-user removes such a key once its list
is empty, and leaves `envs_dirs: []` when the key was the user's.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError
from ruamel.yaml.nodes import MappingNode, ScalarNode, SequenceNode

from cpkgs_admin.errors import ConfigError, CpkgsError, UsageError
from cpkgs_admin.site.config import SiteConfig
from cpkgs_admin.site.files import read_text_file
from cpkgs_admin.site.paths import Site, open_site
from cpkgs_admin.users.mounts import current_mounts, network_fstype
from cpkgs_admin.users.userfile import KEEP_BACKUPS, Outcome, edit_file

INSTALLATION_VAR = "CPKGS_INSTALLATION"
MARKER = "added by cpkgs link-user"
KEY = "envs_dirs"
ALIAS_KEY = "envs_path"  # conda's alias of envs_dirs; a file holding both is rejected by conda itself
LOCK_LEASE = 30.0
LOCK_TIMEOUT = 120.0

_DASH_PREFIX = re.compile(r"[ \t]*-[ \t]+\Z")
_BLANK_OR_COMMENT = re.compile(r"[ \t]*(#.*)?\Z")


@dataclass(frozen=True)
class CondarcChange:
    """What link-user / unlink-user did (or, with --dry-run, would do) to one condarc file."""

    path: str  # the file as named (may be a symlink)
    target: str  # the file actually read and written
    entry: str
    changed: bool
    created: bool
    written: bool
    backup: str | None
    diff: str
    message: str
    warnings: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "target": self.target,
            "entry": self.entry,
            "changed": self.changed,
            "created": self.created,
            "written": self.written,
            "backup": self.backup,
            "diff": self.diff,
            "message": self.message,
            "warnings": list(self.warnings),
        }


# ----------------------------------------------------------------------------------------------------- the entry


def shared_envs_entry(site: Site) -> str:
    """`<root>/${CPKGS_INSTALLATION}/envs`: the site's envs dir with the installation left to the shell profile.

    Asked of the Site (which alone knows the tree) for an installation whose name is the variable itself.
    """
    if "$" in str(site.root):
        raise UsageError(f"site root {site.root} contains '$': conda would expand it inside envs_dirs")
    templ = SiteConfig(installations={"*": "${" + INSTALLATION_VAR + "}"})
    return str(site.with_config(templ).envs_dir("*"))


def conda_expand(value: str, environ: Mapping[str, str] | None = None) -> str:
    """An envs_dirs/pkgs_dirs item as conda resolves it: `abspath(expanduser(expandvars(path)))`.

    conda/common/path.py `expand`; os.path.expandvars reads os.environ, so another environment is swapped in.
    """
    if environ is None:
        return os.path.abspath(os.path.expanduser(os.path.expandvars(value)))
    with _swapped_environ(environ):
        return os.path.abspath(os.path.expanduser(os.path.expandvars(value)))


@contextlib.contextmanager
def _swapped_environ(environ: Mapping[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(environ)
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def default_condarc(environ: Mapping[str, str] | None = None) -> Path:
    """$CONDARC when set (conda reads it as one more config file), else ~/.condarc."""
    env = os.environ if environ is None else environ
    if env.get("CONDARC"):
        return Path(os.path.expanduser(env["CONDARC"]))
    home = env.get("HOME") or os.path.expanduser("~")
    return Path(home) / ".condarc"


# ----------------------------------------------------------------------------------------------------- parsing


@dataclass
class _Doc:
    """One condarc file parsed twice: the node tree (for marks) and plain settings (for checks)."""

    name: str  # how messages name the file
    text: str
    root: Any  # ruamel MappingNode, or None for an empty document
    data: dict[str, Any]
    key: str = KEY
    key_node: Any = None
    seq: Any = None  # ruamel SequenceNode of envs_dirs, or None when the key is absent

    @property
    def items(self) -> list[Any]:
        return list(self.seq.value) if self.seq is not None else []

    def values(self) -> list[Any]:
        return list(self.data.get(self.key) or [])


def _describe(value: Any) -> str:
    if value is None:
        return "empty (null)"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, Mapping):
        return "a mapping"
    return f"a {type(value).__name__}"


def _yaml_problem(name: str, exc: Exception) -> ConfigError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark is not None else ""
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or str(exc).splitlines()[0]
    return ConfigError(f"{name}: invalid YAML:{where} {problem}")


def _plain(text: str) -> Any:
    return YAML(typ="safe", pure=True).load(text)


def parse_condarc(text: str, name: str) -> _Doc:
    """Parse and validate; every problem is one ConfigError line naming the file."""
    try:
        root = YAML(typ="rt").compose(text)
        # Constructing too: the composer accepts duplicate keys, which conda's loader (and this one) reject.
        YAML(typ="rt").load(text)
        data = _plain(text)
    except YAMLError as exc:
        raise _yaml_problem(name, exc) from None
    except Exception as exc:  # ruamel raises a few plain exceptions (e.g. on some bad unicode)
        raise ConfigError(f"{name}: invalid YAML: {exc}") from None
    if root is None or data is None:
        return _Doc(name=name, text=text, root=None, data={})
    if not isinstance(root, MappingNode) or not isinstance(data, dict):
        raise ConfigError(f"{name}: the document is {_describe(data)}, not a mapping of settings")
    problem = _shape_problem(data)
    if problem:
        raise ConfigError(f"{name}: {problem}")
    doc = _Doc(name=name, text=text, root=root, data=data)
    own = {k.value: (k, v) for k, v in root.value if hasattr(k, "value") and isinstance(k.value, str)}
    if KEY in data and ALIAS_KEY in data:
        raise ConfigError(f"{name}: both {KEY} and its alias {ALIAS_KEY} are set (conda rejects that); keep one")
    if ALIAS_KEY in data:
        doc.key = ALIAS_KEY
    if doc.key not in data:
        return doc
    if doc.key not in own:
        raise ConfigError(f"{name}: {doc.key} comes from a merge key (<<); edit it by hand")
    doc.key_node, node = own[doc.key]
    value = data[doc.key]
    if not isinstance(node, SequenceNode) or not isinstance(value, list):
        raise ConfigError(f"{name}: {doc.key} is {_describe(value)}, not a list")
    if _references(root, node) > 1:
        anchor = getattr(node, "anchor", None)
        raise ConfigError(
            f"{name}: {doc.key} shares its list with another key through the YAML anchor"
            f"{' &' + str(anchor) if anchor else ''}; edit it by hand"
        )
    doc.seq = node
    return doc


_MAX_ITEMS = 100_000  # a condarc is a few dozen settings; aliases nested ten deep can mean 10**10 items


def _shape_problem(data: Any) -> str | None:
    """Why DATA (a parsed condarc) cannot be compared or written back: a list or mapping that contains itself
    through an alias ('a: &x [*x]'), or aliases of aliases that expand to more items than any condarc has (every
    comparison would walk them all). Each list or mapping is visited once: its expanded size is remembered."""
    size: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Any, bool]] = [(data, False)]
    while stack:
        node, leaving = stack.pop()
        children = list(node.values() if isinstance(node, dict) else node) if isinstance(node, (dict, list)) else []
        if leaving:
            on_path.discard(id(node))
            size[id(node)] = 1 + sum(size.get(id(c), 1) for c in children)
            if size[id(node)] > _MAX_ITEMS:
                return f"its YAML aliases expand to more than {_MAX_ITEMS} items"
            continue
        if not isinstance(node, (list, dict)) or id(node) in size:
            continue
        if id(node) in on_path:
            return ("a YAML alias refers to the list or mapping it is in (like 'a: &x [*x]'); "
                    "conda cannot read that either")
        on_path.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in children if isinstance(c, (list, dict)) and id(c) not in size)
    return None


def _references(tree: Any, target: Any) -> int:
    """How often `target` occurs in the node tree (an alias composes to the anchored node itself)."""
    count, stack, seen = 0, [tree], set()
    while stack:
        node = stack.pop()
        if node is target:
            count += 1
        if id(node) in seen:
            continue
        seen.add(id(node))
        value = getattr(node, "value", None)
        if isinstance(value, list):
            for child in value:
                if isinstance(child, tuple):
                    stack.extend(child)
                else:
                    stack.append(child)
    return count


def read_condarc(path: Path) -> _Doc | None:
    """A condarc file, parsed (None when it does not exist); ConfigError when unusable. For doctor."""
    text = _read_text(path, path)
    if text is None:
        return None
    return parse_condarc(text, str(path))


def _read_text(path: Path, name: Path) -> str | None:
    try:
        return read_text_file(path, str(name), ConfigError)
    except FileNotFoundError:
        return None


# ----------------------------------------------------------------------------------------------------- splicing


def _newline(text: str) -> str:
    return "\r\n" if "\r\n" in text else "\n"


def _line_start(text: str, index: int) -> int:
    return text.rfind("\n", 0, index) + 1


def _line_end(text: str, index: int) -> int:
    """Index just past the newline ending the line that holds `index` (len(text) on the last line)."""
    nl = text.find("\n", index)
    return len(text) if nl < 0 else nl + 1


def _scalar(value: str, style: str | None, flow: bool) -> str:
    """`value` as a YAML scalar in the style of its neighbours; plain only where plain reads back as itself."""
    if style == "'":
        return "'" + value.replace("'", "''") + "'"
    if style != '"':
        probe = f"[{value}]" if flow else f"- {value}"
        with contextlib.suppress(Exception):
            if _plain(probe) == [value]:
                return value
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a YAML double-quoted scalar


def _item_style(doc: _Doc) -> str | None:
    for node in reversed(doc.items):
        if getattr(node, "style", None) in ("'", '"'):
            return str(node.style)
    return None


def _seq_indent(doc: _Doc) -> int:
    """How far block sequences in this file sit right of their key (conda's own `conda config` writes 2)."""
    stack = [doc.root] if doc.root is not None else []
    seen: set[int] = set()  # an alias makes the node graph cyclic ('a: &x [*x]'): visit each node once
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, MappingNode):
            for k, v in node.value:
                if isinstance(v, SequenceNode) and not v.flow_style and v.value:
                    first = v.value[0]
                    prefix = doc.text[_line_start(doc.text, first.start_mark.index) : first.start_mark.index]
                    if _DASH_PREFIX.match(prefix):
                        return max(0, prefix.index("-") - int(k.start_mark.column))
                stack.append(v)
        elif isinstance(node, SequenceNode):
            stack.extend(node.value)
    return 2


def _splice_append(doc: _Doc, entry: str) -> str | None:
    """The text with `entry` appended to envs_dirs, or None when the layout is one the splice does not handle."""
    text, nl = doc.text, _newline(doc.text)
    if doc.seq is None:
        if doc.root is not None and doc.root.flow_style:
            return None
        col = doc.root.value[0][0].start_mark.column if doc.root is not None and doc.root.value else 0
        head = text if not text or text.endswith("\n") else text + nl
        ind = " " * col
        item = " " * _seq_indent(doc) + "- " + _scalar(entry, None, flow=False)
        return f"{head}{ind}{doc.key}:  # {MARKER}{nl}{ind}{item}{nl}"
    items = doc.items
    if doc.seq.flow_style:
        close = doc.seq.end_mark.index - 1
        if text[close : close + 1] != "]":
            return None
        value = _scalar(entry, _item_style(doc), flow=True)
        if not items:
            return text[:close] + value + text[close:]
        at = items[-1].end_mark.index
        sep = ", "
        if len(items) > 1 and " " not in text[items[-2].end_mark.index : items[-1].start_mark.index]:
            sep = ","
        return text[:at] + sep + value + text[at:]
    last = items[-1]
    if not isinstance(last, ScalarNode) or last.style in ("|", ">"):
        return None
    prefix = text[_line_start(text, last.start_mark.index) : last.start_mark.index]
    if not _DASH_PREFIX.match(prefix):
        return None
    at = _line_end(text, last.end_mark.index)
    head = text[:at] if text[:at].endswith("\n") else text[:at] + nl
    return head + prefix + _scalar(entry, last.style, flow=False) + nl + text[at:]


def _splice_remove_one(doc: _Doc, entry: str) -> str | None:
    """The text without the first item equal to `entry` (the key too when link-user created it), or None."""
    text = doc.text
    items = doc.items
    i = next(n for n, node in enumerate(items) if getattr(node, "value", None) == entry)
    node = items[i]
    marked = _key_marked(doc)
    if len(items) == 1 and marked:
        start = _line_start(text, doc.key_node.start_mark.index)
        if text[start : doc.key_node.start_mark.index].strip():
            return None
        end_index = doc.seq.end_mark.index if doc.seq.flow_style else node.end_mark.index
        end = _line_end(text, end_index)
        rest = text[end_index:end].rstrip("\r\n")
        if not _BLANK_OR_COMMENT.match(rest):
            return None
        return text[:start] + text[end:]
    if doc.seq.flow_style:
        if i > 0:
            return text[: items[i - 1].end_mark.index] + text[node.end_mark.index :]
        if i + 1 < len(items):
            return text[: node.start_mark.index] + text[items[i + 1].start_mark.index :]
        return text[: node.start_mark.index] + text[node.end_mark.index :]
    start = _line_start(text, node.start_mark.index)
    if not _DASH_PREFIX.match(text[start : node.start_mark.index]):
        return None
    end = _line_end(text, node.end_mark.index)
    out = text[:start] + text[end:]
    if len(items) == 1:
        # A block sequence cannot be empty: the user's key stays, as `envs_dirs: []`.
        colon = doc.key_node.end_mark.index
        while colon < len(out) and out[colon] in " \t":
            colon += 1
        if out[colon : colon + 1] != ":":
            return None
        out = out[: colon + 1] + " []" + out[colon + 1 :]
    return out


def _key_marked(doc: _Doc) -> bool:
    if doc.key_node is None:
        return False
    text = doc.text
    line = text[doc.key_node.start_mark.index : _line_end(text, doc.key_node.start_mark.index)]
    return f"# {MARKER}" in line


def _dump_edit(doc: _Doc, edit: Callable[[Any], None]) -> str:
    """Fallback: ruamel's own round trip (keeps comments, quotes, flow style, anchors; may re-indent)."""
    y = YAML(typ="rt")
    y.preserve_quotes = True
    y.width = 4096
    ind = _seq_indent(doc)
    y.indent(mapping=2, sequence=ind + 2, offset=ind)
    data = y.load(doc.text)
    if data is None:
        data = CommentedMap()
    edit(data)
    buf = io.StringIO()
    y.dump(data, buf)
    return buf.getvalue()


def _appended(doc: _Doc, entry: str) -> str:
    def edit(data: Any) -> None:
        if doc.key in data:
            data[doc.key].append(entry)
        else:
            data[doc.key] = CommentedSeq([entry])

    expect = dict(doc.data)
    expect[doc.key] = [*doc.values(), entry]
    out = _splice_append(doc, entry)
    if out is not None and _reads_as(out, expect):
        return out
    out = _dump_edit(doc, edit)
    if _reads_as(out, expect):
        return out
    raise CpkgsError(f"{doc.name}: cannot add {entry!r} to {doc.key} without changing other settings; add it by hand")


def _removed(doc: _Doc, entry: str) -> str:
    expect_list = [v for v in doc.values() if v != entry]
    current = doc
    while any(getattr(n, "value", None) == entry for n in current.items):
        out = _splice_remove_one(current, entry)
        if out is None:
            break
        current = parse_condarc(out, doc.name)
    else:
        if _removed_ok(current.text, doc, expect_list):
            return current.text

    def edit(data: Any) -> None:
        seq = data[doc.key]
        for n in reversed(range(len(seq))):
            if seq[n] == entry:
                del seq[n]

    out = _dump_edit(doc, edit)
    if _removed_ok(out, doc, expect_list):
        return out
    raise CpkgsError(f"{doc.name}: cannot remove {entry!r} from {doc.key} without changing other settings")


def _removed_ok(text: str, doc: _Doc, expect_list: list[Any]) -> bool:
    expect = dict(doc.data)
    expect[doc.key] = expect_list
    if _reads_as(text, expect):
        return True
    if not expect_list:  # the key link-user created is gone
        del expect[doc.key]
        return _reads_as(text, expect)
    return False


def _reads_as(text: str, expect: dict[str, Any]) -> bool:
    try:
        data = _plain(text)
    except Exception:
        return False
    return (data or {}) == expect


# ----------------------------------------------------------------------------------------------------- writing


def _diff(old: str | None, new: str, target: str) -> str:
    def lines(text: str) -> list[str]:
        out = text.splitlines(keepends=True)
        if out and not out[-1].endswith("\n"):
            out[-1] += "\n\\ No newline at end of file\n"
        return out

    return "".join(
        difflib.unified_diff(
            lines(old or ""), lines(new), fromfile=target if old is not None else "/dev/null", tofile=target
        )
    )


# What parsing and splicing import when first used (edit_file may run them with a user's rights, see run_as).
_YAML_MODULES = ("io", "ruamel.yaml", "ruamel.yaml.nodes", "ruamel.yaml.comments", "ruamel.yaml.error",
                 "ruamel.yaml.mergevalue")


def _edit(path: Path, compute: Callable[[str | None], str | None], dry_run: bool) -> Outcome:
    return edit_file(path, compute, dry_run=dry_run, lease=LOCK_LEASE, timeout=LOCK_TIMEOUT, preload=_YAML_MODULES)


def _where(path: Path, out: Outcome) -> str:
    return f"{path}" + (f" (symlink to {out.target})" if out.target != str(path) else "")


def _written_notes(out: Outcome) -> str:
    """What the message adds after a write: the backup, whose rights, what was carried over."""
    notes = ""
    if out.backup:
        notes += f"; backup {out.backup} (the newest {KEEP_BACKUPS} backups are kept)"
    if out.editor:
        notes += f"; edited with the rights of its owner {out.editor}"
    if out.carried:
        notes += f"; {out.carried} bytes written to the file meanwhile were kept"
    return notes


def _change(path: Path, entry: str, out: Outcome, message: str, warnings: list[str] | None = None) -> CondarcChange:
    changed = out.new is not None and out.new != out.old
    return CondarcChange(
        path=str(path),
        target=out.target,
        entry=entry,
        changed=changed,
        created=changed and out.old is None,
        written=out.written,
        backup=out.backup,
        diff=_diff(out.old, out.new, out.target) if changed and out.new is not None else "",
        message=message,
        warnings=tuple(warnings or ()),
    )


# ----------------------------------------------------------------------------------------------------- commands


def link_user(root: Path, condarc: Path | None = None, *, dry_run: bool = False) -> CondarcChange:
    """Append the site's envs entry to envs_dirs of `condarc` (default $CONDARC, else ~/.condarc)."""
    site = open_site(root)
    entry = shared_envs_entry(site)
    path = condarc if condarc is not None else default_condarc()

    def compute(old: str | None) -> str | None:
        doc = parse_condarc(old if old is not None else "", str(path))
        if entry in doc.values():
            return None
        return _appended(doc, entry)

    out = _edit(path, compute, dry_run)
    # Parsed again here: the edit may have run in a child process with the file owner's rights.
    doc = parse_condarc(out.old if out.old is not None else "", str(path))
    changed = out.new is not None and out.new != out.old
    final = parse_condarc(out.new, str(path)) if changed and out.new is not None else doc
    where = _where(path, out)
    if not changed:
        message = f"already linked: {where} lists {entry}; nothing changed"
    elif dry_run:
        message = f"would add {entry} to {doc.key} in {where}"
    else:
        message = f"{'created' if out.old is None else 'updated'} {where}: {doc.key} += {entry}" + _written_notes(out)
    return _change(path, entry, out, message, link_warnings(site, final, entry))


def unlink_user(root: Path, condarc: Path | None = None, *, dry_run: bool = False) -> CondarcChange:
    """Remove exactly the item link-user adds (and the key when link-user created it and it is now empty)."""
    site = open_site(root)
    entry = shared_envs_entry(site)
    path = condarc if condarc is not None else default_condarc()

    def compute(old: str | None) -> str | None:
        if old is None:
            return None
        doc = parse_condarc(old, str(path))
        if entry not in doc.values():
            return None
        return _removed(doc, entry)

    out = _edit(path, compute, dry_run)
    changed = out.new is not None and out.new != out.old
    where = _where(path, out)
    key = parse_condarc(out.old, str(path)).key if out.old is not None else KEY
    if out.old is None:
        message = f"not linked: {path} does not exist; nothing changed"
    elif not changed:
        message = f"not linked: {where} does not list {entry}; nothing changed"
    elif dry_run:
        message = f"would remove {entry} from {key} in {where}"
    else:
        message = f"updated {where}: removed {entry} from {key}" + _written_notes(out)
    return _change(path, entry, out, message)


def link_warnings(
    site: Site,
    doc: _Doc,
    entry: str,
    environ: Mapping[str, str] | None = None,
    mounts: list[Any] | None = None,
) -> list[str]:
    """Things that would make the link useless or harmful; reported, never fatal. `mounts`: see mounts.mount_of.
    (`cpkgs doctor` judges the same items with the same rules: envs_dirs_items, pkgs_dirs_items.)"""
    env = os.environ if environ is None else environ
    out: list[str] = []
    if not env.get(INSTALLATION_VAR):
        out.append(
            f"{INSTALLATION_VAR} is not set in this shell: the entry resolves only where "
            f"{site.profile_dir / 'conda.sh'} (or conda.csh) is sourced; add that line to your shell start-up file"
        )
    for value, _resolved, platform in envs_dirs_items(site, doc.values(), env):
        if value != entry and platform is not None:
            out.append(
                f"{doc.key} also lists {value}, the {platform} envs: conda on every OS sharing this home "
                f"would offer them; remove that item (the entry link-user adds picks this OS's envs)"
            )
    for value, _resolved, fstype in pkgs_dirs_items(doc, env, current_mounts() if mounts is None else mounts):
        if fstype:
            out.append(
                f"pkgs_dirs item {value} is on {fstype}: conda's package cache misbehaves on network drives; "
                f"remove pkgs_dirs (the site's conda.sh points CONDA_PKGS_DIRS to local disk)"
            )
    return out


def envs_dirs_items(site: Site, values: Iterable[Any], environ: Mapping[str, str]) -> list[tuple[str, str, str | None]]:
    """Each string item of an envs_dirs list as (the item, where conda resolves it, the platform whose shared envs
    dir that is, or None)."""
    hard = {str(site.envs_dir(sub)): sub for sub in site.config.installations}
    out = []
    for value in values:
        if isinstance(value, str):
            resolved = conda_expand(value, environ)
            out.append((value, resolved, hard.get(resolved)))
    return out


def pkgs_dirs_items(doc: _Doc, environ: Mapping[str, str], mounts: Iterable[Any]) -> list[tuple[str, str, str | None]]:
    """Each string item of pkgs_dirs as (the item, where conda resolves it, the network filesystem it lies on or
    None: conda's package cache misbehaves there)."""
    out = []
    for value in doc.data.get("pkgs_dirs") or []:
        if isinstance(value, str):
            resolved = conda_expand(value, environ)
            out.append((value, resolved, network_fstype(resolved, mounts)))
    return out
