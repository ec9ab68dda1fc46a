"""Step 1 for the pip part: the `pip:` lines of an environment.yml, read as conda hands them to pip.

conda writes the list into a requirements file next to the spec file and runs `pip install -r` there, so each
item is a requirements-file line: a PEP 508 requirement (extras, markers, `name @ URL`), a wheel or sdist URL or
path (relative to the spec file), a `git+` URL, or one of the options `-r FILE`, `-c FILE`, `--index-url`,
`--extra-index-url`, `--find-links`, `--no-index`, `--pre`, `--hash=sha256:...`. Editable installs and local
source directories are refused: a sealed shared env cannot hold a source tree that lives elsewhere, nor rebuild it.
Every problem is one PipError line naming the spec file and item (or the -r file and line).
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from cpkgs_admin.errors import PipError
from cpkgs_admin.site.pypi_config import index_url_problem

WHEEL_EXT = ".whl"
SDIST_EXTS = (".tar.gz", ".zip", ".tar.bz2", ".tgz")
_HASH = re.compile(r"sha256:([0-9a-fA-F]{64})\Z")
_COMMENT = re.compile(r"(^|\s+)#.*$")
_VCS_OTHER = ("hg+", "svn+", "bzr+")


@dataclass(frozen=True)
class IndexOptions:
    """Where packages come from. index_url None: not given (the site's applies)."""

    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    no_index: bool = False
    pre: bool = False


@dataclass(frozen=True)
class PipRequirement:
    text: str  # as written
    where: str  # "spec.yml: pip[2]" or "reqs.txt line 3"
    name: str | None  # canonical name, when the line says it (a git URL without #egg= does not)
    kind: str  # "index" (name + specifier) | "url" (a wheel or sdist by URL or path) | "vcs" (git)
    line: str  # the requirement as the resolver gets it: absolute file:// URLs, no hash fragment
    hashes: tuple[str, ...] = ()  # sha256 hex digests the artifact must have (--hash, #sha256=)
    sdist: bool = False  # kind "url": a source archive, built into a wheel


@dataclass(frozen=True)
class PipRequest:
    requirements: tuple[PipRequirement, ...]
    constraints: tuple[PipRequirement, ...] = ()
    options: IndexOptions = field(default_factory=IndexOptions)
    files: tuple[str, ...] = ()  # -r / -c files read (absolute): they belong to the spec's digest

    @property
    def names(self) -> frozenset[str]:
        return frozenset(r.name for r in self.requirements if r.name)


def canonical(name: str) -> str:
    """PEP 503 normalised name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, line): continuations joined, comments and blank lines dropped (pip's rules)."""
    out: list[tuple[int, str]] = []
    buf: list[str] = []
    start = 0
    for n, raw in enumerate(text.splitlines(), 1):
        if not buf:
            start = n
        line = raw.rstrip()
        cont = line.endswith("\\") and not line.endswith("\\\\")
        # A comment ends a continuation; pip strips it before joining.
        body = _COMMENT.sub("", line[:-1] if cont else line)
        buf.append(body)
        if cont:
            continue
        joined = " ".join(b.strip() for b in buf if b.strip())
        buf = []
        if joined:
            out.append((start, joined))
    if buf:
        joined = " ".join(b.strip() for b in buf if b.strip())
        if joined:
            out.append((start, joined))
    return out


def split_line(line: str) -> tuple[str, list[str]]:
    """(requirement part, option tokens): options start at the first word beginning with '-' (pip's split)."""
    words = line.split(" ")
    for i, w in enumerate(words):
        if w.startswith("-"):
            try:
                return " ".join(words[:i]).strip(), shlex.split(" ".join(words[i:]))
            except ValueError as exc:
                raise PipError(f"unbalanced quotes in {line!r}: {exc}") from None
    return line.strip(), []


def parse_hash(value: str, where: str) -> str:
    m = _HASH.match(value.strip())
    if not m:
        raise PipError(f"pip: {where}: --hash {value!r}: only sha256:<64 hex digits> hashes are accepted")
    return m.group(1).lower()


class _Reader:
    def __init__(self) -> None:
        self.reqs: list[PipRequirement] = []
        self.constraints: list[PipRequirement] = []
        self.opts = IndexOptions()
        self.files: list[str] = []

    def line(self, text: str, where: str, base: Path, stack: tuple[str, ...]) -> None:
        if "${" in text:
            raise PipError(f"pip: {where}: {text!r}: environment variables are not expanded in pip lines")
        req, tokens = split_line(text)
        if not req:
            self._options(tokens, where, base, stack)
            return
        hashes: list[str] = []
        i = 0
        while i < len(tokens):
            tok = tokens[i]
            if tok == "--hash" and i + 1 < len(tokens):
                hashes.append(parse_hash(tokens[i + 1], where))
                i += 2
                continue
            if tok.startswith("--hash="):
                hashes.append(parse_hash(tok.partition("=")[2], where))
                i += 1
                continue
            raise PipError(f"pip: {where}: option {tok!r} after a requirement is not supported (only --hash)")
        self.reqs.append(parse_requirement(req, where, base, tuple(hashes)))

    def _options(self, tokens: list[str], where: str, base: Path, stack: tuple[str, ...]) -> None:
        i = 0
        while i < len(tokens):
            opt, eq, val = tokens[i].partition("=")
            takes_value = opt in ("-r", "--requirement", "-c", "--constraint", "-i", "--index-url",
                                  "--extra-index-url", "-f", "--find-links", "-e", "--editable")
            if opt[:2] in ("-r", "-c", "-i", "-f", "-e") and len(opt) > 2 and not opt.startswith("--"):
                opt, val, eq = opt[:2], opt[2:], "="  # -rfile, pip's short form
            if takes_value and not eq:
                if i + 1 >= len(tokens):
                    raise PipError(f"pip: {where}: {opt} needs a value")
                val = tokens[i + 1]
                i += 1
            i += 1
            self._option(opt, val, where, base, stack)

    def _option(self, opt: str, val: str, where: str, base: Path, stack: tuple[str, ...]) -> None:
        if opt in ("-e", "--editable"):
            raise PipError(f"pip: {where}: {opt} {val}: an editable install points into a source tree outside the "
                           "env, which a sealed shared env cannot hold; build a wheel and list it instead")
        if opt in ("-r", "--requirement", "-c", "--constraint"):
            self.read_file(_local_path(val, base, where), where, stack, constraint=opt in ("-c", "--constraint"))
        elif opt in ("-i", "--index-url", "--extra-index-url"):
            url = _index_url(val, base, where, opt)
            if opt == "--extra-index-url":
                self.opts = replace(self.opts, extra_index_urls=(*self.opts.extra_index_urls, url))
            else:
                self.opts = replace(self.opts, index_url=url)
        elif opt in ("-f", "--find-links"):
            loc = val if "://" in val else str(_local_path(val, base, where))
            if "://" in loc and index_url_problem(loc):
                raise PipError(f"pip: {where}: --find-links {val}: {index_url_problem(loc)}")
            self.opts = replace(self.opts, find_links=(*self.opts.find_links, loc))
        elif opt == "--no-index":
            self.opts = replace(self.opts, no_index=True)
        elif opt == "--pre":
            self.opts = replace(self.opts, pre=True)
        else:
            raise PipError(f"pip: {where}: unknown pip option {opt!r} (supported: -r, -c, --index-url, "
                           "--extra-index-url, --find-links, --no-index, --pre, --hash)")

    def read_file(self, path: Path, where: str, stack: tuple[str, ...], *, constraint: bool = False) -> None:
        key = str(path)
        if key in stack:
            raise PipError(f"pip: {where}: -r cycle: {' -> '.join((*stack, key))}")
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise PipError(f"pip: {where}: requirements file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise PipError(f"pip: {where}: cannot read {path}: {exc}") from None
        self.files.append(key)
        before = len(self.reqs)
        for n, line in logical_lines(text):
            self.line(line, f"{path} line {n}", path.parent, (*stack, key))
        if constraint:
            new = self.reqs[before:]
            del self.reqs[before:]
            for r in new:
                if r.kind != "index":
                    raise PipError(f"pip: {r.where}: a constraint must be a name and version specifier: {r.text!r}")
            self.constraints += new


def _local_path(value: str, base: Path, where: str) -> Path:
    if "://" in value:
        if not value.startswith("file://"):
            raise PipError(f"pip: {where}: {value!r}: only local requirements files can be included")
        value = unquote(urlsplit(value).path)
    return Path(os.path.abspath(base / os.path.expanduser(value)))


def _index_url(val: str, base: Path, where: str, opt: str) -> str:
    if "://" not in val and (val.startswith((".", "/", "~"))):
        return _local_path(val, base, where).as_uri()
    problem = index_url_problem(val)
    if problem:
        raise PipError(f"pip: {where}: {opt} {problem}")
    return val.rstrip("/")


def parse_requirement(text: str, where: str, base: Path, hashes: tuple[str, ...] = ()) -> PipRequirement:
    """One requirement line (without options): specifier, `name @ URL`, a bare URL or a path."""
    from packaging.requirements import InvalidRequirement, Requirement  # noqa: PLC0415  (packaging: see __init__)

    s = text.strip()
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", s) or s.startswith(_VCS_OTHER):
        url, marker = _split_marker(s)
        return _url_requirement(text, where, None, "", url, marker, hashes, base)
    named = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*\s*(\[[^\]]*\])?\s*@", s) is not None
    if not named and (s.startswith((".", "/", "~")) or s.endswith((WHEEL_EXT, *SDIST_EXTS)) or (
        "/" in s and (base / s.split(";")[0].strip()).exists()
    )):
        path, marker = _split_marker(s)
        local = Path(os.path.abspath(base / os.path.expanduser(path)))
        return _url_requirement(text, where, None, "", local.as_uri(), marker, hashes, base)
    try:
        req = Requirement(s)
    except InvalidRequirement as exc:
        if "/" in s and not named:  # pip's reading too: a path, to a file or directory that is not there
            missing = Path(os.path.abspath(base / os.path.expanduser(s.split(";")[0].strip())))
            raise PipError(f"pip: {where}: {s!r} looks like a path, but {missing} does not exist") from None
        detail = str(exc).splitlines()[0] if str(exc) else "invalid"
        raise PipError(f"pip: {where}: invalid requirement {s!r}: {detail}") from None
    extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
    marker = f" ; {req.marker}" if req.marker else ""
    if req.url:
        return _url_requirement(text, where, canonical(req.name), extras, req.url, marker, hashes, base)
    return PipRequirement(text=text, where=where, name=canonical(req.name), kind="index",
                          line=f"{req.name}{extras}{req.specifier}{marker}", hashes=hashes)


def _split_marker(s: str) -> tuple[str, str]:
    """A bare URL or path may carry '; marker' (pip takes ';' followed by a space as the separator)."""
    head, sep, marker = s.partition("; ")
    if not sep:
        head, sep, marker = s.partition(" ;")
    return head.strip(), (f" ; {marker.strip()}" if sep and marker.strip() else "")


def _url_requirement(text: str, where: str, name: str | None, extras: str, url: str, marker: str,
                     hashes: tuple[str, ...], base: Path) -> PipRequirement:
    if url.startswith(_VCS_OTHER):
        raise PipError(f"pip: {where}: {url.split('+', maxsplit=1)[0]} URLs are not supported (only git+)")
    parts = urlsplit(url)
    frag = dict(p.partition("=")[::2] for p in parts.fragment.split("&") if p)
    name = name or (canonical(frag["egg"]) if frag.get("egg") else None)
    if "sha256" in frag:
        hashes = (*hashes, parse_hash("sha256:" + frag["sha256"], where))
    if url.startswith("git+"):
        if not name and not frag.get("egg"):
            name = None  # the resolver learns it from the repository's metadata
        line = f"{name}{extras} @ {url}{marker}" if name else f"{url}{marker}"
        return PipRequirement(text=text, where=where, name=name, kind="vcs", line=line, hashes=hashes)
    if parts.scheme not in ("http", "https", "file"):
        raise PipError(f"pip: {where}: {url!r}: unsupported URL scheme {parts.scheme!r}")
    filename = unquote(parts.path.rsplit("/", 1)[-1])
    if parts.scheme == "file":
        local = Path(unquote(parts.path))
        if local.is_dir():
            raise PipError(f"pip: {where}: {text.strip()!r} is a local source directory: it cannot be recorded or "
                           "rebuilt exactly; build a wheel (uv build) and list the wheel, or use a git URL")
        if not local.is_file():
            raise PipError(f"pip: {where}: {text.strip()!r}: no such file {local}")
    sdist = filename.endswith(SDIST_EXTS)
    if not (filename.endswith(WHEEL_EXT) or sdist):
        raise PipError(f"pip: {where}: {url!r} names neither a wheel (.whl) nor a source archive (.tar.gz, .zip)")
    name = name or _archive_name(filename)
    kept = "&".join(f"{k}={v}" for k, v in frag.items() if k not in ("sha256", "egg"))
    clean = parts._replace(fragment=kept).geturl()
    line = f"{name}{extras} @ {clean}{marker}" if name else f"{clean}{marker}"
    return PipRequirement(text=text, where=where, name=name, kind="url", line=line, hashes=hashes, sdist=sdist)


def _archive_name(filename: str) -> str | None:
    from packaging.utils import InvalidSdistFilename, InvalidWheelFilename, parse_sdist_filename, parse_wheel_filename  # noqa: PLC0415  (packaging: see __init__)

    try:
        if filename.endswith(WHEEL_EXT):
            return canonical(parse_wheel_filename(filename)[0])
        if filename.endswith((".tar.gz", ".zip")):
            return canonical(parse_sdist_filename(filename)[0])
    except (InvalidWheelFilename, InvalidSdistFilename):
        pass
    return None


def parse_pip_section(items: Any, spec_file: Path) -> PipRequest:
    """The `pip:` list of an environment.yml; relative paths and -r files are relative to SPEC_FILE's directory."""
    if not isinstance(items, list):
        raise PipError(f"spec file {spec_file}: 'pip' must be a list of pip requirement lines")
    reader = _Reader()
    base = Path(os.path.abspath(spec_file)).parent
    for i, item in enumerate(items):
        where = f"{spec_file}: pip[{i}]"
        if not isinstance(item, str):
            raise PipError(f"pip: {where}: must be a string (a requirement or a pip option), got {type(item).__name__}")
        for _n, line in logical_lines(item):
            reader.line(line, where, base, ())
    if not reader.reqs:
        raise PipError(f"spec file {spec_file}: the 'pip' section lists no requirements")
    _check_duplicates(reader.reqs)
    return PipRequest(requirements=tuple(reader.reqs), constraints=tuple(reader.constraints), options=reader.opts,
                      files=tuple(dict.fromkeys(reader.files)))


def _check_duplicates(reqs: list[PipRequirement]) -> None:
    """Two URL requirements for one name cannot both be installed; say so before resolving."""
    seen: dict[str, PipRequirement] = {}
    for r in reqs:
        if r.name is None or r.kind == "index":
            continue
        other = seen.get(r.name)
        if other is not None and other.line != r.line:
            raise PipError(f"pip: {r.where}: {r.name} is already given by {other.where} ({other.text!r})")
        seen[r.name] = r
