"""`cpkgs usage`: read the collector's log files and count, per env, runs, distinct users and last use; per
package, distinct users across envs; and list the envs nobody used for a while (retirement candidates).

A record is the JSON the hook sends (usage_sitecustomize.py), found in a line by its first key, `{"cpkgs_usage":`,
whatever the collector put in front of it (rsyslog's timestamp, host and tag in any of its templates). Any other
line, and a record that does not parse or lacks what is counted, is skipped and counted: the collector's files may
hold other programs' messages, and UDP or a relay may cut a datagram.

Modules become packages at report time, through the module index each env carries (hook.MODULE_INDEX, one small
JSON per env that appears in the logs): a module the index does not know (an env without one, or removed) is
reported as kind `module`; modules from a personal layer or the user site (`user_modules`) as kind `user`.

Speed (bench/bench_usage.py: 1,000,000 records in under 5 s for the whole command): lines are read as bytes; a
record as the hook writes it is taken apart by one regular expression over its leading keys (anything else goes
through json.loads and a check); per record only counters change and one set of module names per (env, user) grows;
names are decoded and mapped to packages once per (env, user) at the end.
"""

from __future__ import annotations

import contextlib
import glob
import gzip
import json
import math
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, cast

from cpkgs_admin.errors import CpkgsError, UsageError
from cpkgs_admin.outputs.usage.hook import read_index
from cpkgs_admin.site.config import parse_duration
from cpkgs_admin.site.paths import Site
from cpkgs_admin.site.records import EnvRecord, load_all

MARK = b'{"cpkgs_usage":'
WEEK = 7 * 86400
MONDAY = 3 * 86400  # weeks start on Mondays (UTC): the epoch began on a Thursday


def week_of(t: float) -> int:
    return int((t + MONDAY) // WEEK)


def week_start(week: int) -> int:
    return week * WEEK - MONDAY
BATCH = 4096
TOP_PER_ENV = 10
DEFAULT_UNUSED = "90d"


# ----------------------------------------------------------------------------------------------------- values


@dataclass(slots=True)
class _Env:
    """Counters of one (env, platform) while the logs are read. Users and module names stay the bytes of the log
    until the end (decoded once per user, not once per record)."""

    runs: int = 0
    layer_runs: int = 0
    last: float = -math.inf
    first: float = math.inf
    users: dict[bytes, set[bytes]] = field(default_factory=dict)  # user -> modules imported from the env
    user_modules: dict[bytes, set[bytes]] = field(default_factory=dict)  # ... from other site-packages dirs
    weeks: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PackageCount:
    name: str
    kind: str  # conda | pypi | module (not in the env's index) | user (a layer's or the user site's)
    users: int
    envs: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "users": self.users, "envs": self.envs}


@dataclass(frozen=True)
class EnvUsage:
    name: str
    platform: str
    status: str  # the record's status, or "unknown" for an env the site has no record of
    runs: int
    users: int
    layer_runs: int
    last_used: float | None
    weekly: tuple[tuple[int, int], ...] = ()  # (week start, epoch seconds; runs)
    top_packages: tuple[PackageCount, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "platform": self.platform,
            "status": self.status,
            "runs": self.runs,
            "users": self.users,
            "layer_runs": self.layer_runs,
            "last_used": iso(self.last_used),
            "weekly": [[iso(w), n] for w, n in self.weekly],
            "top_packages": [p.to_json() for p in self.top_packages],
        }


@dataclass(frozen=True)
class Candidate:
    name: str
    platform: str
    last_used: float | None
    idle_days: int | None  # None: never used and no creation time

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "platform": self.platform, "last_used": iso(self.last_used),
                "idle_days": self.idle_days}


@dataclass(frozen=True)
class UsageReport:
    logs: tuple[str, ...]
    since: float | None
    records: int
    malformed_lines: int
    foreign_lines: int
    first: float | None
    last: float | None
    envs: tuple[EnvUsage, ...]
    packages: tuple[PackageCount, ...]
    unused_days: float
    candidates: tuple[Candidate, ...]
    covered: bool  # the logs reach back unused_days: candidates are known unused, not merely unseen

    @property
    def skipped_lines(self) -> int:
        return self.malformed_lines + self.foreign_lines

    def env(self, name: str) -> EnvUsage | None:
        return next((e for e in self.envs if e.name == name), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "logs": list(self.logs),
            "since": iso(self.since),
            "records": self.records,
            "skipped_lines": self.skipped_lines,
            "malformed_lines": self.malformed_lines,
            "foreign_lines": self.foreign_lines,
            "first": iso(self.first),
            "last": iso(self.last),
            "envs": [e.to_json() for e in self.envs],
            "packages": [p.to_json() for p in self.packages],
            "unused_days": self.unused_days / 86400,
            "logs_cover_unused_days": self.covered,
            "retirement_candidates": [c.to_json() for c in self.candidates],
        }


def iso(t: float | None) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))


def parse_since(text: str, now: float) -> float:
    """--since: a duration back from now (30d, 12h) or a date/time (2024-05-01, 2024-05-01T08:00)."""
    with contextlib.suppress(UsageError):
        return now - parse_duration(text, "--since")
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise UsageError(f"--since {text!r} is neither a duration (30d, 12h) nor a date (2024-05-01)") from None


# ----------------------------------------------------------------------------------------------------- reading


def log_files(patterns: Iterable[str]) -> list[str]:
    """The files the configured paths and globs name, each once, in order. None at all is an error naming them."""
    patterns = list(patterns)
    if not patterns:
        raise CpkgsError("no usage logs configured: set usage.logs in cpkgs.yaml to the collector's output files")
    out: list[str] = []
    for p in patterns:
        for f in sorted(glob.glob(p)) if glob.has_magic(p) else [p]:
            if f not in out and (Path(f).is_file() or not glob.has_magic(p)):
                out.append(f)
    existing = [f for f in out if Path(f).exists()]
    if not existing:
        raise CpkgsError(f"no usage log file exists: {', '.join(patterns)} (is the collector writing there?)")
    return existing


def _open(path: str) -> IO[bytes]:
    try:
        return cast(IO[bytes], gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb"))
    except PermissionError:
        raise CpkgsError(f"cannot read usage log {path}: permission denied (collector files are for admins)") from None
    except OSError as exc:
        raise CpkgsError(f"cannot read usage log {path}: {exc.strerror or exc}") from None


# The hook's records as it writes them (keys in this order; names and module lists without escapes): one match.
_FAST = re.compile(
    rb'\{"cpkgs_usage":1,"env":"([^"\\]+)","platform":"([^"\\]+)","user":"([^"\\]*)",(?:"uid":(\d+),)?'
    rb'"start":(\d+(?:\.\d*)?),"layer":(true|false),"modules":\[([^\]\\]*)\],"user_modules":\[([^\]\\]*)\],'
)
_Fields = tuple[bytes, bytes, bytes, "bytes | None", bytes, bytes, "Sequence[bytes]", "Sequence[bytes]"]


def _slow_fields(payload: bytes) -> _Fields | None:
    """A record in any other form (another hook version, a relay that reordered it): parsed and checked."""
    try:
        r = json.loads(payload)
        if not isinstance(r, dict) or r["cpkgs_usage"] != 1 or not payload.rstrip().endswith(b"}"):
            return None
        name, plat, user, start = r["env"], r["platform"], r.get("user", ""), float(r["start"])
        uid = r.get("uid")
        modules, others = r.get("modules", []), r.get("user_modules", [])
        if not (isinstance(name, str) and name and isinstance(plat, str) and plat and isinstance(user, str)
                and math.isfinite(start) and (uid is None or type(uid) is int) and isinstance(modules, list)
                and isinstance(others, list) and all(isinstance(m, str) for m in modules + others)):
            return None
    except (KeyError, TypeError, ValueError, OverflowError):
        return None

    return (name.encode(), plat.encode(), user.encode(), None if uid is None else str(uid).encode(),
            repr(start).encode(), b"true" if r.get("layer") is True else b"false", [m.encode() for m in modules],
            [m.encode() for m in others])


class _Tally:
    def __init__(self, since: float | None, env: str | None) -> None:
        self.since = -math.inf if since is None else since
        self.env = env.encode() if env is not None else None
        self.envs: dict[tuple[bytes, bytes], _Env] = {}
        self.malformed = 0
        self.foreign = 0

    @property
    def records(self) -> int:
        return sum(e.runs for e in self.envs.values())

    @property
    def first(self) -> float:
        return min((e.first for e in self.envs.values()), default=math.inf)

    @property
    def last(self) -> float:
        return max((e.last for e in self.envs.values()), default=-math.inf)

    def scan(self, lines: Iterable[bytes], needle: bytes | None = None) -> None:
        """Count every record in LINES (only lines holding NEEDLE, when given). The loop every log line goes
        through: kept to a find, a match and add()."""
        match, add = _FAST.match, self.add
        for line in lines:
            if needle is not None and needle not in line:
                continue
            i = line.find(MARK)
            if i < 0:
                # A record whose keys another hook version or a relay reordered still names its schema.
                j = line.find(b'"cpkgs_usage":')
                if j < 0:
                    self.foreign += 1
                    continue
                i = max(line.rfind(b"{", 0, j), 0)
            m = match(line, i)
            if m is not None and (line.endswith(b"}\n") or line.rstrip().endswith(b"}")):
                name, plat, user, uid, start, layer, mods, others = m.groups()
                # '"a","b"' -> a, b: the expression admits no backslash, so no name holds an escaped quote.
                add(name, plat, user, uid, start, layer, mods[1:-1].split(b'","') if mods else (),
                    others[1:-1].split(b'","') if others else ())
                continue
            fields = _slow_fields(line[i:])
            if fields is None:
                self.malformed += 1
            else:
                add(*fields)

    def add(self, name: bytes, plat: bytes, user: bytes, uid: bytes | None, start_b: bytes, layer: bytes,
            mods: Sequence[bytes], others: Sequence[bytes]) -> None:
        start = float(start_b)
        if start < self.since or (self.env is not None and name != self.env):
            return
        e = self.envs.get((name, plat))
        if e is None:
            e = self.envs[(name, plat)] = _Env()
        e.runs += 1
        if layer == b"true":
            e.layer_runs += 1
        e.last = max(e.last, start)
        e.first = min(e.first, start)
        week = week_of(start)
        e.weeks[week] = e.weeks.get(week, 0) + 1
        # Plain records count users by uid (exact; $USER is informative only), hashed ones by their hash.
        key = b"uid:" + uid if uid is not None else b"user:" + user
        seen = e.users.get(key)
        if seen is None:
            seen = e.users[key] = set()
        seen.update(mods)
        if others:
            e.user_modules.setdefault(key, set()).update(others)


def _lines(path: str) -> Iterator[bytes]:
    with _open(path) as fh:
        try:
            yield from fh
        except (OSError, EOFError) as exc:  # a truncated or corrupt .gz
            raise CpkgsError(f"cannot read usage log {path}: {exc}") from None


def read_logs(paths: list[str], since: float | None = None, env: str | None = None) -> _Tally:
    """The tally of every record in PATHS (since SINCE, of ENV only when given)."""
    tally = _Tally(since, env)
    # With one env asked for, lines not naming it are not even looked at (the hook writes "env":"NAME" verbatim:
    # names need no JSON escaping); they count neither as records nor as skipped.
    needle = f'"env":"{env}"'.encode() if env is not None else None
    for path in paths:
        tally.scan(_lines(path), needle)
    return tally


# ----------------------------------------------------------------------------------------------------- the report


def _created(rec: EnvRecord) -> float | None:
    try:
        return datetime.strptime(rec.created, "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except ValueError:
        return None


def _prefix(site: Site, key: tuple[str, str], rec: EnvRecord | None) -> Path:
    """Where the env of KEY (name, platform) lives: its record's prefix, else where the site would put it."""
    if rec is not None:
        return Path(rec.prefix)
    inst = site.config.installations.get(key[1])
    return site.root / inst / "envs" / key[0] if inst else site.root / ".cpkgs" / "no-such-platform"


def _by_name(tally: _Tally) -> dict[tuple[str, str], _Env]:
    return {(n.decode("utf-8", "replace"), p.decode("utf-8", "replace")): e for (n, p), e in tally.envs.items()}


def _modules_of(names: set[bytes]) -> set[str]:
    return {n.decode("utf-8", "replace") for n in names}


def _packages(site: Site, envs: dict[tuple[str, str], _Env], records: dict[tuple[str, str], EnvRecord]
              ) -> tuple[list[PackageCount], dict[tuple[str, str], list[PackageCount]]]:
    """Users per package across envs, and per env: modules mapped through each env's index."""
    users: dict[tuple[str, str], set[bytes]] = {}
    where: dict[tuple[str, str], set[tuple[str, str]]] = {}
    per_env: dict[tuple[str, str], list[PackageCount]] = {}
    for key, e in envs.items():
        index = read_index(_prefix(site, key, records.get(key))) or {}
        mine: dict[tuple[str, str], set[bytes]] = {}
        for sources, kind in ((e.users, None), (e.user_modules, "user")):
            for user, names in sources.items():
                for m in _modules_of(names):
                    pkg = (m, kind) if kind else index.get(m, (m, "module"))
                    users.setdefault(pkg, set()).add(user)
                    where.setdefault(pkg, set()).add(key)
                    mine.setdefault(pkg, set()).add(user)
        ranked = sorted(mine.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:TOP_PER_ENV]
        per_env[key] = [PackageCount(n, k, len(u), 1) for (n, k), u in ranked]
    overall = sorted(users.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    return [PackageCount(n, k, len(u), len(where[(n, k)])) for (n, k), u in overall], per_env


def usage_report(site: Site, *, since: str | None = None, env: str | None = None, unused: str | None = None,
                 now: float | None = None) -> UsageReport:
    """The report over the site's configured logs (cpkgs.yaml usage.logs)."""
    now = time.time() if now is None else now
    since_t = parse_since(since, now) if since else None
    unused_s = parse_duration(unused or DEFAULT_UNUSED, "--unused")
    paths = log_files(site.config.usage.logs)
    tally = read_logs(paths, since_t, env)
    envs = _by_name(tally)
    records = {(r.name, r.platform): r for r in load_all(site.records_dir) if r.status != "removed"}
    packages, per_env = _packages(site, envs, records)
    keys = set(envs) | {k for k in records if env is None or k[0] == env}
    rows = []
    for key in sorted(keys):
        e = envs.get(key, _Env())
        rec = records.get(key)
        rows.append(EnvUsage(
            name=key[0], platform=key[1], status=rec.status if rec else "unknown", runs=e.runs,
            users=len(e.users), layer_runs=e.layer_runs, last_used=e.last if e.runs else None,
            weekly=tuple(sorted((week_start(w), n) for w, n in e.weeks.items())),
            top_packages=tuple(per_env.get(key, ())),
        ))
    first = tally.first if tally.records else None
    # The logs vouch for "unused since" only as far back as they reach (and --since cuts them shorter).
    reach = max((x for x in (first, since_t) if x is not None), default=None)
    covered = reach is not None and reach <= now - unused_s
    return UsageReport(
        logs=tuple(paths), since=since_t, records=tally.records, malformed_lines=tally.malformed,
        foreign_lines=tally.foreign, first=first, last=tally.last if tally.records else None, envs=tuple(rows),
        packages=tuple(packages), unused_days=unused_s,
        candidates=tuple(_candidates(rows, records, now, unused_s) if covered else ()), covered=covered,
    )


def _candidates(rows: list[EnvUsage], records: dict[tuple[str, str], EnvRecord], now: float,
                unused_s: float) -> list[Candidate]:
    """Published envs whose last use (or, never used, their creation) is at least UNUSED_S ago."""
    out = []
    for row in rows:
        rec = records.get((row.name, row.platform))
        if rec is None:
            continue
        since = max((x for x in (row.last_used, _created(rec)) if x is not None), default=None)
        if since is None or now - since >= unused_s:
            idle = int((now - since) // 86400) if since is not None else None
            out.append(Candidate(row.name, row.platform, row.last_used, idle))
    return sorted(out, key=lambda c: (-(c.idle_days or 0), c.name))


def last_use_line(site: Site, name: str, platform: str, now: float | None = None) -> str | None:
    """For `retire`: when NAME was last used, from the usage logs; None when the site keeps none or they cannot be
    read here (then there is nothing to say)."""
    if not site.config.usage.logs:
        return None
    now = time.time() if now is None else now
    try:
        paths = log_files(site.config.usage.logs)
        e = _by_name(read_logs(paths, None, name)).get((name, platform))
        if e is not None:
            days = int((now - e.last) // 86400)
            return (f"{name}: last used {iso(e.last)} ({days} days ago) by {len(e.users)} user(s); "
                    f"{e.runs} run(s) in the usage logs")
        first = _first_record(paths)
    except CpkgsError:
        return None
    return None if first is None else f"{name}: no use recorded in the usage logs (they begin {iso(first)})"


def _first_record(paths: list[str]) -> float | None:
    """The start of the first record in the logs (they are written in time order)."""
    tally = _Tally(None, None)
    for path in paths:
        for line in _lines(path):
            tally.scan((line,))
            if tally.envs:
                return tally.first
    return None
