"""The test-nfs scenarios, run inside both guests at once (role A and role B), one boot each.

usage (inside a guest, see nfs/guest.sh): run.py ROLE CHANNEL_URL [ONLY]

Mounts (made by nfs/init.sh): /mnt/nfs = the export with default mount options (the sites live here),
/mnt/ctl = a sub-dir of it mounted with noac,lookupcache=none (barriers and results), /mnt/sq = the root-squashed
export. The two roles meet at barrier files in /mnt/ctl/sig. Each scenario writes lines to
/mnt/ctl/results-ROLE.txt: `PASS name: ...`, `FAIL name: ...`, `PENDING name: ...` (a feature not written yet),
`MEASURE name: ...` (benchmark figures). A scenario that raises on one side writes an abort marker so the other
side stops waiting for it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from cpkgs_admin.site.paths import ENVS_GUARD

ROLE = sys.argv[1]
PEER = "B" if ROLE == "A" else "A"
CHANNEL = sys.argv[2]
ONLY = {s for s in (sys.argv[3] if len(sys.argv) > 3 else "").split(",") if s}
REPO = Path(__file__).resolve().parent.parent.parent
PY = str(REPO / ".venv/bin/python")
CPKGS = str(REPO / ".venv/bin/cpkgs")
LOCK_WORKER = str(REPO / "tests/helpers/lock_worker.py")
CTL = Path("/mnt/ctl")
SIG = CTL / "sig"
NFS = Path("/mnt/nfs")
R = NFS / "site"  # the shared site root on NFS
RL = NFS / "lease-site"  # a site with a short lease for the lease scenario
SQ = Path("/mnt/sq/site")  # on the root-squashed export, owned by uid 1000
IPY_ENV = "ipy-1.0"
IPY_SPECS = ["python", "ipykernel", "cpkgs-test-app"]
FULL_SPECS = ["python", "cpkgs-test-app", "cpkgs-test-textprefix", "cpkgs-test-binprefix", "cpkgs-test-activate"]
ADMIN_UID = 1000
HOST = socket.gethostname()
RESULTS = CTL / f"results-{ROLE}.txt"
T0 = time.monotonic()


class Abort(Exception):
    pass


# ------------------------------------------------------------------------------------------------ plumbing


def out(kind: str, name: str, msg: str) -> None:
    line = f"{kind} {name} [{ROLE}@{HOST}]: {msg}"
    print(line, flush=True)
    with open(RESULTS, "a") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def note(msg: str) -> None:
    print(f"  {ROLE} {time.monotonic() - T0:7.1f}s {msg}", flush=True)


def put(name: str, data: str = "") -> None:
    SIG.mkdir(exist_ok=True)
    tmp = SIG / f".{name}.{ROLE}.tmp"
    tmp.write_text(data)
    os.replace(tmp, SIG / f"{name}.{ROLE}")


def get(name: str, timeout: float = 600) -> str:
    """Wait for the peer's signal NAME; raise Abort if the peer aborted its current scenario."""
    f = SIG / f"{name}.{PEER}"
    end = time.monotonic() + timeout
    scen = name.split(".", 1)[0]
    while True:
        try:
            return f.read_text()
        except FileNotFoundError:
            pass
        if (SIG / f"{scen}.abort.{PEER}").exists():
            raise Abort(f"peer {PEER} aborted scenario {scen}")
        if time.monotonic() > end:
            raise Abort(f"timed out after {timeout:.0f}s waiting for {PEER}'s '{name}'")
        time.sleep(0.1)


def barrier(name: str, data: str = "", timeout: float = 600) -> str:
    put(name, data)
    return get(name, timeout)


def run(cmd: list[str], *, env: dict[str, str] | None = None, timeout: float = 900,
        user: int | None = None) -> tuple[subprocess.CompletedProcess[str], float]:
    full_env = dict(os.environ)
    full_env.update(env or {})
    if user is not None:
        home = Path(f"/tmp/home-{user}")
        home.mkdir(exist_ok=True)
        os.chown(home, user, user)
        full_env["HOME"] = str(home)
        cmd = ["setpriv", "--reuid", str(user), "--regid", str(user), "--clear-groups", *cmd]
    t = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout, cwd="/tmp", check=False)
    return p, time.monotonic() - t


def cpkgs(root: Path, *args: str, **kw) -> tuple[subprocess.CompletedProcess[str], float]:  # type: ignore[no-untyped-def]
    return run([CPKGS, "--root", str(root), *args], **kw)


def brief(p: subprocess.CompletedProcess[str]) -> str:
    err = (p.stderr or "").strip().splitlines()
    return f"exit {p.returncode}" + (f", stderr: {err[-1][:200]!r}" if err else "")


# What cpkgs says while it works, before any error: a lock it waits for (after 2 s), a dead lock it recovered.
NOTICES = ("cpkgs: waiting for ", "cpkgs: recovered ")


def clean_error(p: subprocess.CompletedProcess[str]) -> bool:
    """A failed command's stderr is one clear line (after any notices), no traceback."""
    err = [ln for ln in (p.stderr or "").strip().splitlines() if ln.strip() and not ln.startswith(NOTICES)]
    return p.returncode != 0 and len(err) == 1 and "Traceback" not in p.stderr


def set_config(root: Path, key: str, value: str) -> None:
    cfg = root / "cpkgs.yaml"
    text = re.sub(rf"(?m)^{key}:.*$", f"{key}: {value}", cfg.read_text())
    cfg.write_text(text)


def env_dir(root: Path, name: str) -> Path:
    return root / "anaconda3_linux" / "envs" / name


SCENARIOS: list[tuple[str, Callable[[], None]]] = []


def scenario(fn: Callable[[], None]) -> Callable[[], None]:
    SCENARIOS.append((fn.__name__, fn))
    return fn


# ------------------------------------------------------------------------------------------------ scenarios


@scenario
def setup() -> None:
    if ROLE == "A":
        for root, lease in ((R, None), (RL, "6")):
            p, dt = cpkgs(root, "init", "-c", CHANNEL)
            if p.returncode != 0:
                raise Abort(f"init {root}: {brief(p)}")
            if lease:
                set_config(root, "lease_seconds", lease)
            note(f"init {root} in {dt:.1f}s")
        (NFS / "home").mkdir(exist_ok=True)
    barrier("setup.done")
    p, _ = cpkgs(R, "list", "--json")
    if p.returncode != 0 or json.loads(p.stdout) != []:
        raise Abort(f"list on the fresh site: {brief(p)}")
    out("PASS", "setup", f"site {R} initialised by A, readable from both hosts")


@scenario
def lock_count() -> None:
    counters = {"lock": NFS / "counter-locked", "nolock": NFS / "counter-nolock"}
    if ROLE == "A":
        for c in counters.values():
            c.write_text("0")
    crashed: dict[str, str] = {}
    for mode in ("lock", "nolock"):
        barrier(f"lock_count.{mode}.start")
        p, dt = run([PY, LOCK_WORKER, str(R), "count" if mode == "lock" else "nolock", "100", str(counters[mode])])
        status = "ok"
        if p.returncode != 0:
            if mode == "nolock" and "ValueError" in p.stderr:
                # unlocked read-modify-write across NFS clients: it read the other host's half-written counter
                status = "corrupt: " + p.stderr.strip().splitlines()[-1][:120]
            else:
                put(f"lock_count.{mode}.done", "error")
                raise Abort(f"lock_worker {mode}: {brief(p)}")
        note(f"lock_worker {mode}: 100 increments in {dt:.1f}s ({status})")
        peer = barrier(f"lock_count.{mode}.done", status)
        for who, st in ((ROLE, status), (PEER, peer)):
            if st.startswith("corrupt"):
                crashed[who] = st
    if ROLE == "A":
        raw = {m: c.read_text() for m, c in counters.items()}
        if raw["lock"] == "200":
            out("PASS", "lock_count", "2 hosts x 100 increments under the site lock: counter = 200 exactly")
        else:
            out("FAIL", "lock_count", f"2 hosts x 100 increments under the site lock: counter = {raw['lock']!r}, "
                "expected 200 (lost updates: the lock does not exclude across NFS clients)")
        try:
            got = int(raw["nolock"])
        except ValueError:
            got = -1
        if got != 200 or crashed:
            lost = f"lost {200 - got} of 200 updates" if got >= 0 and not crashed else f"counter {raw['nolock']!r}"
            why = f"; workers that read a torn counter and stopped: {crashed}" if crashed else ""
            out("PASS", "lock_control", f"unlocked control failed as it must: {lost}{why} (the harness detects a "
                "missing lock)")
        else:
            out("FAIL", "lock_control", "unlocked control lost no update: this run cannot tell a working lock "
                "from a missing one")


@scenario
def lease() -> None:
    from cpkgs_admin.errors import LockBusy
    from cpkgs_admin.site.locks import site_locked
    from cpkgs_admin.site.paths import open_site

    if ROLE == "A":
        holder = subprocess.Popen([PY, LOCK_WORKER, str(RL), "hold"], stdout=subprocess.PIPE, text=True, cwd="/tmp")
        assert holder.stdout is not None
        line = holder.stdout.readline().strip()
        if line != "held":
            holder.kill()
            raise Abort(f"holder on A did not take the lock: {line!r}")
        barrier("lease.held", str(holder.pid))
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        put("lease.killed", str(time.time()))
        get("lease.done", timeout=120)
        return
    site = open_site(RL)
    pid = int(get("lease.held", timeout=120))
    try:
        with site_locked(site, timeout=0):
            out("FAIL", "lease_live", "B took the lock while A's holder was alive")
    except LockBusy:
        out("PASS", "lease_live", "a live holder on host A blocks host B")
    put("lease.held")
    killed_at = float(get("lease.killed", timeout=120))
    seen = time.time()
    # the holder's pid means nothing on this host (it may even exist here): B must not break the lock by pid
    pid_here = os.path.exists(f"/proc/{pid}")
    try:
        with site_locked(site, timeout=0):
            out("FAIL", "lease_no_pid_break", f"B broke A's lock {seen - killed_at:.1f}s after A's holder died, "
                f"before its {site.config.lease_seconds:.0f}s lease ran out (pid check across hosts?)")
    except LockBusy as exc:
        out("PASS", "lease_no_pid_break", f"{seen - killed_at:.1f}s after A's holder was killed -9, B is refused "
            f"(pid {pid} {'exists' if pid_here else 'absent'} on B): {str(exc)[:120]}")
    t = time.monotonic()
    lease_s = site.config.lease_seconds
    try:
        with site_locked(site, timeout=lease_s * 3 + 10):
            waited = time.monotonic() - t
            total = time.time() - killed_at
            if total <= lease_s * 3 + 10:
                out("PASS", "lease_recovery", f"B took over A's dead lock {total:.1f}s after the kill "
                    f"(waited {waited:.1f}s; lease {lease_s:.0f}s)")
            else:
                out("FAIL", "lease_recovery", f"B took over only {total:.1f}s after the kill (lease {lease_s:.0f}s)")
    except LockBusy:
        lk, _ = cpkgs(RL, "locks", "--json")
        state = [(i.get("name"), i.get("state")) for i in json.loads(lk.stdout)] if lk.returncode == 0 else brief(lk)
        out("FAIL", "lease_recovery", f"B still refused {time.time() - killed_at:.0f}s after A's holder died "
            f"(lease {lease_s:.0f}s); `cpkgs locks` on B says {state}. filelock's SoftFileLease takes an expired "
            "lease over only by renameat2(RENAME_EXCHANGE), which NFS refuses (EINVAL), so on NFS it never does")
        br, _ = cpkgs(RL, "locks", "break", "site.lock")
        try:
            with site_locked(site, timeout=0):
                after = "then B takes it at once"
        except LockBusy as exc:
            after = f"B is still refused: {exc}"
        out("PASS" if br.returncode == 0 and after.startswith("then") else "FAIL", "lease_locks_break",
            f"operator recovery on B: `cpkgs locks break site.lock` {brief(br)}; {after}")
    put("lease.done")


def conda_sh_supports_activate() -> bool:
    p, _ = run(["bash", "-c", f'. "{R}/etc/profile.d/conda.sh" && type conda >/dev/null 2>&1 && '
                f'conda activate --help >/dev/null 2>&1; type conda'])
    return p.returncode == 0 and "function" in p.stdout


def activate_and_run(name: str) -> tuple[bool, str]:
    """`conda activate NAME` in a real bash through the site's conda.sh, then run the env's program."""
    script = (f'. "{R}/etc/profile.d/conda.sh" || exit 90; conda activate {name} || exit 91; '
              f'[ "$CONDA_PREFIX" = "{env_dir(R, name)}" ] || exit 92; cpkgs-test-app || exit 93')
    p, _ = run(["bash", "-c", script], timeout=120)
    return p.returncode == 0 and "app ok" in p.stdout, brief(p)


@scenario
def build_while_reading() -> None:
    name = IPY_ENV
    if ROLE == "A":
        barrier("build_while_reading.start")
        p, dt = cpkgs(R, "new-env", name, *IPY_SPECS)
        put("build_while_reading.built", json.dumps({"rc": p.returncode, "secs": dt, "err": brief(p)}))
        if p.returncode != 0:
            raise Abort(f"new-env {name} on NFS: {brief(p)}")
        files, size = tree_size(env_dir(R, name))
        out("MEASURE", "new_env_nfs_under_load", f"new-env {name} ({' '.join(IPY_SPECS)}: {files} files, "
            f"{size / 2**20:.0f} MiB) on NFS while B reads: {dt:.1f}s")
        get("build_while_reading.checked", timeout=600)
        return
    use_conda = conda_sh_supports_activate()
    if not use_conda:
        out("PENDING", "conda_activate", "R/etc/profile.d/conda.sh defines no `conda` function with `activate` yet: "
            "B runs the env's program directly instead")
    barrier("build_while_reading.start")
    problems: list[str] = []
    iterations = 0
    seen_env = 0
    while True:
        done = (SIG / f"build_while_reading.built.{PEER}").exists()
        iterations += 1
        p, _ = cpkgs(R, "list", "--json")
        if p.returncode != 0:
            problems.append(f"list: {brief(p)}")
            names: list[str] = []
        else:
            names = [e["name"] for e in json.loads(p.stdout)]
        envs = env_dir(R, "x").parent
        # envs/conda-meta is init's guard against a user's conda (issue 16), never an env: cpkgs lists it nowhere.
        visible = sorted(n for n in os.listdir(envs) if not n.startswith(".") and n != ENVS_GUARD)
        for n in sorted(set(names) | set(visible)):
            d = env_dir(R, n)
            if n in names:
                v, _ = cpkgs(R, "verify", n)
                if v.returncode != 0:
                    problems.append(f"iteration {iterations}: verify {n}: {brief(v)}")
            if use_conda:
                ok, why = activate_and_run(n)
            else:
                e, _ = run([str(d / "bin" / "cpkgs-test-app")], timeout=60)
                ok, why = e.returncode == 0 and "app ok" in e.stdout, brief(e)
            if not ok:
                problems.append(f"iteration {iterations}: env {n} visible ({'listed' if n in names else 'in envs/'}) "
                                f"but not usable: {why}")
            else:
                seen_env += 1
        if done:
            break
    built = json.loads(get("build_while_reading.built"))
    if built["rc"] != 0:
        problems.append(f"A's new-env failed: {built['err']}")
    if name not in names:
        problems.append(f"{name} not listed after A's new-env finished")
    how = "conda activate + program" if use_conda else "the env's program (no conda activate yet)"
    if problems:
        out("FAIL", "build_while_reading", "; ".join(problems[:5]))
    else:
        out("PASS", "build_while_reading", f"{iterations} rounds of list --json / verify / {how} on B during A's "
            f"new-env: never a half-built env ({seen_env} complete sightings)")
    put("build_while_reading.checked")


@scenario
def same_name_race() -> None:
    name = "race-1.0"
    barrier("same_name_race.start")
    p, dt = cpkgs(R, "new-env", name, "cpkgs-test-app")
    mine = {"rc": p.returncode, "secs": round(dt, 1), "clean": clean_error(p) if p.returncode else True,
            "err": brief(p)}
    theirs = json.loads(barrier("same_name_race.done", json.dumps(mine)))
    if ROLE != "A":
        return
    rcs = sorted([mine["rc"], theirs["rc"]])
    ls, _ = cpkgs(R, "list", "--json")
    listed = [e["name"] for e in json.loads(ls.stdout)].count(name) if ls.returncode == 0 else -1
    leftovers = [n for n in os.listdir(env_dir(R, name).parent) if n.startswith(".staging")]
    loser = theirs if mine["rc"] == 0 else mine
    ok = rcs[0] == 0 and rcs[1] != 0 and listed == 1 and not leftovers
    msg = (f"A: {mine['err']} in {mine['secs']}s; B: {theirs['err']} in {theirs['secs']}s; listed {listed}x; "
           f"staging leftovers {leftovers}")
    out("PASS" if ok else "FAIL", "same_name_race", ("exactly one wins. " if ok else "") + msg)
    if ok:
        clear = loser["clean"] and "already exists" in loser["err"] and "internal error" not in loser["err"]
        out("PASS" if clear else "FAIL", "same_name_race_message",
            f"the loser's error: {loser['err']}" + ("" if clear else
            " -- expected a clear 'already exists' (EnvExists); the loser's in-lock existence check missed the "
            "winner's publish (NFS negative-lookup cache) and its rename hit ENOTEMPTY"))


HOLDER = r"""
import os, sys
fhs = [open(f, "rb") for f in sys.argv[1:]]
print("open", flush=True)
for line in sys.stdin:
    cmd, i = line.split()
    fh = fhs[int(i)]
    try:
        if cmd == "read":
            fh.seek(0)
            print("ok", len(fh.read()), flush=True)
        else:
            fh.close()
            print("closed", flush=True)
    except OSError as exc:
        print("err", exc.errno, exc.strerror, flush=True)
"""


class Holder:
    """A process on this host that keeps files open (and reads them on request), so a hang stays contained."""

    def __init__(self, *files: Path) -> None:
        self.p = subprocess.Popen([PY, "-c", HOLDER, *map(str, files)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, cwd="/tmp")
        self.ask(None, 60)

    def ask(self, cmd: str | None, timeout: float = 60) -> str:
        import select

        assert self.p.stdin is not None and self.p.stdout is not None
        if cmd is not None:
            self.p.stdin.write(cmd + "\n")
            self.p.stdin.flush()
        r, _, _ = select.select([self.p.stdout], [], [], timeout)
        if not r:
            return f"no answer in {timeout:.0f}s (hung)"
        return self.p.stdout.readline().strip()

    def stop(self) -> None:
        self.p.kill()
        self.p.wait()


@scenario
def silly_rename() -> None:
    """B removes + purges an env while A holds a file of it open; then A itself purges an env whose file it holds
    open, so A's NFS client silly-renames it to .nfsXXXX: purge (on either host) must skip and report it."""
    trash = R / ".cpkgs" / "trash"
    if ROLE == "A":
        p, _ = cpkgs(R, "new-env", "sr-1.0", "cpkgs-test-app")
        if p.returncode != 0:
            put("silly_rename.ready", "error")
            raise Abort(f"new-env sr-1.0: {brief(p)}")
        holder = Holder(env_dir(R, "race-1.0") / "bin" / "cpkgs-test-app",
                        env_dir(R, "sr-1.0") / "bin" / "cpkgs-test-app")
        try:
            before = holder.ask("read 0")
            put("silly_rename.ready")
            get("silly_rename.purged_by_B")
            after = holder.ask("read 0")
            note(f"A's read of its open file after B purged it: {after} (before: {before})")
            holder.ask("close 0", 30)
            p, _ = cpkgs(R, "remove", "sr-1.0")
            if p.returncode != 0:
                put("silly_rename.a_purged", "error")
                raise Abort(f"remove sr-1.0 on A: {brief(p)}")
            p, _ = cpkgs(R, "purge", "--older-than", "0s", "--json", timeout=300)
            nfs_files = [str(x.relative_to(trash)) for x in trash.rglob(".nfs*")]
            rep = json.loads(p.stdout) if p.returncode == 0 else {}
            ok = p.returncode == 0 and "Traceback" not in p.stderr and bool(nfs_files) and bool(rep.get("kept_busy"))
            out("PASS" if ok else "FAIL", "silly_rename_holder_purges",
                f"A purged an env whose file it holds open: {brief(p)}; silly-renamed {nfs_files}; "
                f"kept_busy {rep.get('kept_busy')}, deleted {rep.get('deleted')}; A's read of a file B purged "
                f"under it: {after}" + ("" if ok else " -- purge reports the entry deleted while A's .nfs file "
                "keeps it in the trash (lifecycle/purge.py _delete_tree_except_nfs: the unlink on the holding host silly-renames "
                "and succeeds, the final rmtree(ignore_errors) leaves the dir, and busy stays empty)"))
            put("silly_rename.a_purged")
            get("silly_rename.b_purged2")
            still = holder.ask("read 1")
            holder.ask("close 1", 30)
        finally:
            holder.stop()
        put("silly_rename.closed", still)
        return
    get("silly_rename.ready")
    p1, _ = cpkgs(R, "remove", "race-1.0")
    p2, _ = cpkgs(R, "purge", "--older-than", "0s", "--json", timeout=300)
    ok = p1.returncode == 0 and p2.returncode == 0 and "Traceback" not in p1.stderr + p2.stderr
    rep = json.loads(p2.stdout) if p2.returncode == 0 else {}
    out("PASS" if ok else "FAIL", "silly_rename_remove_purge",
        f"B: remove race-1.0 ({brief(p1)}) + purge ({brief(p2)}; deleted {len(rep.get('deleted', []))}, kept_busy "
        f"{rep.get('kept_busy')}) while A holds a file of it open")
    put("silly_rename.purged_by_B")
    get("silly_rename.a_purged")
    p3, _ = cpkgs(R, "purge", "--older-than", "0s", "--json", timeout=300)
    nfs_files = [str(x.relative_to(trash)) for x in trash.rglob(".nfs*")]
    rep = json.loads(p3.stdout) if p3.returncode == 0 else {}
    ok = p3.returncode == 0 and "Traceback" not in p3.stderr and bool(nfs_files) and bool(rep.get("kept_busy"))
    out("PASS" if ok else "FAIL", "silly_rename_other_host_purge",
        f"B's purge with A's .nfs file in the trash: {brief(p3)}; kept_busy {rep.get('kept_busy')}; "
        f".nfs files left {nfs_files}")
    put("silly_rename.b_purged2")
    n = get("silly_rename.closed")
    p4, _ = cpkgs(R, "purge", "--older-than", "0s", "--json", timeout=300)
    rep = json.loads(p4.stdout) if p4.returncode == 0 else {}
    left = os.listdir(trash)
    ok = p4.returncode == 0 and not left
    out("PASS" if ok else "FAIL", "silly_rename_cleanup",
        f"A read its silly-renamed file ({n}) then closed it; B's next purge: {brief(p4)}, "
        f"deleted {len(rep.get('deleted', []))}, trash now {left}")


@scenario
def link_user() -> None:
    have = (REPO / "cpkgs_admin" / "users" / "condarc.py").exists()
    if not have:
        if ROLE == "A":
            out("PENDING", "link_user", "cpkgs_admin/users/condarc.py (link-user) does not exist yet")
        return
    home = NFS / "home" / "shared"
    condarc = home / ".condarc"
    if ROLE == "A":
        home.mkdir(parents=True, exist_ok=True)
        condarc.write_text("channels:\n  - conda-forge\n")
    barrier("link_user.start")
    errs = []
    for _ in range(4):
        p, _ = cpkgs(R, "link-user", "--condarc", str(condarc), env={"HOME": str(home)})
        if p.returncode != 0:
            errs.append(brief(p))
    res = barrier("link_user.done", json.dumps(errs))
    if ROLE != "A":
        return
    errs += json.loads(res)
    import yaml

    text = condarc.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        out("FAIL", "link_user", f".condarc is not valid YAML after concurrent link-user: {exc}")
        return
    envs = f"{R}/${{CPKGS_INSTALLATION}}/envs"
    dups = {k: v for k, v in (data or {}).items() if isinstance(v, list) and len(v) != len(set(map(str, v)))}
    count = [str(x) for x in (data or {}).get("envs_dirs") or []].count(envs)
    ok = not errs and isinstance(data, dict) and not dups and count == 1 and "conda-forge" in text
    out("PASS" if ok else "FAIL", "link_user",
        f"8 link-user runs from 2 hosts on one NFS .condarc: errors {errs[:2]}; {envs} appears {count}x; "
        f"duplicate list entries {dups}; user's own keys kept: {'conda-forge' in text}")


@scenario
def ipython_history() -> None:
    if ROLE != "A":
        return
    env = env_dir(R, IPY_ENV)
    if not (env / "bin" / "ipython").exists():
        raise Abort(f"{env}/bin/ipython missing (build_while_reading builds {IPY_ENV})")
    home = NFS / "home" / "ipy"
    home.mkdir(parents=True, exist_ok=True)
    code = "import sys; print('HIST', get_ipython().history_manager.hist_file); sys.stdout.flush()"
    q, dt = run([str(env / "bin" / "ipython"), "--no-banner", "-c", code], env={"HOME": str(home)}, timeout=300)
    hist = next((ln.split(" ", 1)[1] for ln in q.stdout.splitlines() if ln.startswith("HIST ")), None)
    if q.returncode != 0 or hist is None:
        out("FAIL", "ipython_history", f"ipython -c in {IPY_ENV}: {brief(q)} {q.stdout[-300:]!r}")
        return
    typ = "memory" if hist == ":memory:" else fs_type(hist)
    dbs = [str(x) for x in home.rglob("*.sqlite")]
    configured = (env / "etc" / "ipython" / "ipython_config.py").exists()
    if typ not in ("nfs", "nfs4") and not dbs:
        out("PASS", "ipython_history", f"HOME on NFS; ipython's history DB is {hist} ({typ}); no sqlite file in "
            f"the NFS home (ipython -c took {dt:.1f}s)")
    elif not configured:
        out("PENDING", "ipython_history", f"{IPY_ENV} has no etc/ipython config from cpkgs yet: history DB at {hist} "
            f"({typ}); sqlite files on NFS: {dbs}")
    else:
        out("FAIL", "ipython_history", f"history DB at {hist} ({typ}); sqlite files on NFS: {dbs}")


def fs_type(path: str) -> str:
    best, typ = "", "?"
    for line in Path("/proc/mounts").read_text().splitlines():
        _, mnt, t = line.split()[:3]
        if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best):
            best, typ = mnt, t
    return typ


@scenario
def root_squash() -> None:
    if ROLE == "A":
        p, _ = cpkgs(SQ, "init", "-c", CHANNEL)
        ok = clean_error(p)
        out("PASS" if ok else "FAIL", "root_squash_root_init",
            f"root on the root-squashed export: init {brief(p)}" + ("" if ok else f"; full stderr {p.stderr[-600:]!r}"))
        p, _ = cpkgs(SQ, "init", "-c", CHANNEL, user=ADMIN_UID)
        if p.returncode != 0:
            out("FAIL", "root_squash_admin", f"uid {ADMIN_UID} owning {SQ}: init {brief(p)}")
            put("root_squash.ready", "error")
            return
        p, dt = cpkgs(SQ, "new-env", "sq-1.0", "cpkgs-test-app", user=ADMIN_UID)
        ok = p.returncode == 0
        out("PASS" if ok else "FAIL", "root_squash_admin",
            f"uid {ADMIN_UID} (owns the site root) on the root-squashed export: init ok, new-env sq-1.0 {brief(p)} "
            f"in {dt:.1f}s")
        put("root_squash.ready", "ok" if ok else "error")
        return
    if get("root_squash.ready") != "ok":
        return
    bad = []
    for args in (("new-env", "sq-2.0", "cpkgs-test-app"), ("remove", "sq-1.0"), ("purge", "--older-than", "0s")):
        p, _ = cpkgs(SQ, *args)
        if not clean_error(p):
            bad.append(f"{args[0]}: {brief(p)} {p.stderr[-400:]!r}")
        else:
            msg = p.stderr.strip()
    ls, _ = cpkgs(SQ, "list", "--json")
    listed = [e["name"] for e in json.loads(ls.stdout)] if ls.returncode == 0 else None
    ok = not bad and listed == ["sq-1.0"]
    out("PASS" if ok else "FAIL", "root_squash_root_admin_cmds",
        f"root on B: new-env/remove/purge fail with one clear line ({msg[:160]!r} ...); list as root works: "
        f"{listed}" if ok else f"root on B: {bad}; list: {listed}")


# ------------------------------------------------------------------------------------------------ measurements


def tree_size(d: Path) -> tuple[int, int]:
    files = size = 0
    for dp, _, fns in os.walk(d):
        for fn in fns:
            p = os.path.join(dp, fn)
            if not os.path.islink(p):
                files += 1
                size += os.lstat(p).st_size
    return files, size


@scenario
def bench() -> None:
    """A measures while B waits (the guests share this machine's 2 cores)."""
    if ROLE == "B":
        get("bench.done", timeout=900)
        return
    try:
        _bench()
    finally:
        put("bench.done")


def _bench() -> None:
    local = Path("/tmp/local-site")
    fig: dict[str, str] = {}
    for where, root in (("NFS", NFS / "bench-site"), ("local tmpfs", local)):
        p, _ = cpkgs(root, "init", "-c", CHANNEL)
        p, dt = cpkgs(root, "new-env", "b-1.0", *FULL_SPECS)
        if p.returncode != 0:
            out("FAIL", "bench", f"new-env b-1.0 on {where}: {brief(p)}")
            return
        files, size = tree_size(env_dir(root, "b-1.0"))
        _, hdt = cpkgs(root, "--help")
        v, vdt = cpkgs(root, "verify", "b-1.0")
        fig[where] = (f"new-env {dt:.1f}s (fresh site, cold package cache); verify {files} files "
                      f"{size / 2**20:.0f} MiB in {vdt:.1f}s (incl. {hdt:.1f}s CLI start-up) = "
                      f"{files / vdt:.0f} files/s, {size / 2**20 / vdt:.1f} MiB/s (exit {v.returncode})")
        out("MEASURE", f"new_env_verify_{where.split()[0].lower()}", f"{where}: {fig[where]} "
            f"[{len(FULL_SPECS)} specs, one TCG vCPU]")
    # conda.sh start-up with the site on NFS
    conda_sh = R / "etc" / "profile.d" / "conda.sh"
    n = 10
    t = time.monotonic()
    for _ in range(n):
        run(["bash", "-c", f'. "{conda_sh}"'])
    src = (time.monotonic() - t) / n
    t = time.monotonic()
    for _ in range(n):
        run(["bash", "-c", ":"])
    base = (time.monotonic() - t) / n
    msg = (f"bash -c '. R/etc/profile.d/conda.sh' {src * 1000:.0f} ms vs bare bash {base * 1000:.0f} ms "
           f"(mean of {n}, TCG guest; conda.sh is {conda_sh.stat().st_size} bytes)")
    if shutil.which("strace"):
        cfile, tfile = "/tmp/strace-c.txt", "/tmp/strace-f.txt"
        run(["strace", "-f", "-c", "-o", cfile, "bash", "-c", f'. "{conda_sh}"'])
        run(["strace", "-f", "-o", tfile, "bash", "-c", f'. "{conda_sh}"'])
        total = _strace_total(Path(cfile).read_text())
        lines = Path(tfile).read_text().splitlines()
        nfs_calls = [ln for ln in lines if "/mnt/nfs" in ln]
        forks = sum(1 for ln in lines if re.search(r"\b(clone|clone3|fork|vfork)\(", ln))
        execs = sum(1 for ln in lines if re.search(r"\bexecve\(", ln))
        kinds: dict[str, int] = {}
        for ln in nfs_calls:
            m = re.match(r"^\d+\s+(\w+)\(", ln)
            if m:
                kinds[m.group(1)] = kinds.get(m.group(1), 0) + 1
        msg += (f"; strace -f -c: {total} syscalls in all, {len(nfs_calls)} on the NFS path {kinds}, "
                f"{forks} fork/clone, {execs} execve")
    out("MEASURE", "conda_sh_startup", msg)
    # list of 500 envs
    recdir = R / ".cpkgs" / "records" / "linux-64"
    src_rec = recdir / f"{IPY_ENV}.json"
    if not src_rec.exists():
        src_rec = sorted(recdir.glob("*.json"))[0]
    rec = json.loads(src_rec.read_text())
    p, few = cpkgs(R, "list", "--json")
    base_n = len(json.loads(p.stdout)) if p.returncode == 0 else -1
    t = time.monotonic()
    for i in range(500):
        r = dict(rec)
        r["name"] = f"fake{i:03d}-1.0"
        r["family"] = f"fake{i:03d}"
        (recdir / f"fake{i:03d}-1.0.json").write_text(json.dumps(r))
    made = time.monotonic() - t
    p, dt = cpkgs(R, "list", "--json")
    n_listed = len(json.loads(p.stdout)) if p.returncode == 0 else -1
    _, dt2 = cpkgs(R, "list")
    _, dth = cpkgs(R, "--help")
    ok = n_listed == base_n + 500
    out("MEASURE" if ok else "FAIL", "list_500",
        f"list --json with {n_listed} envs on NFS: {dt:.2f}s (table: {dt2:.2f}s); with {base_n} envs {few:.2f}s; "
        f"`cpkgs --help` alone {dth:.2f}s; writing the 500 records took {made:.1f}s"
        + ("" if ok else f"; expected {base_n + 500} envs: {brief(p)}"))
    for i in range(500):
        (recdir / f"fake{i:03d}-1.0.json").unlink()


@scenario
def tool() -> None:
    """cpkgs on the share (install-tool): A installs it on the NFS site; on both hosts an ordinary user (uid 1000)
    with only the profile sourced runs it; then `cpkgs --help` and `cpkgs list` from the tool on NFS against the
    venv's cpkgs (a pip install, read over 9p here), A then B (the guests share 2 cores), the first run on each host
    with a cold NFS cache."""
    wheels = os.environ.get("TOOL_WHEELS", "")
    if ROLE == "A":
        if not wheels:
            out("FAIL", "tool", "no TOOL_WHEELS from the harness (tests/wheelhouse/build_wheelhouse.py)")
        else:
            cfg = R / "cpkgs.yaml"
            # init writes the site's own pypi: section; this offline site's is the tool wheelhouse
            text = re.sub(r"(?ms)^pypi:.*?(?=^\S|\Z)", "", cfg.read_text())
            cfg.write_text(text + f"pypi:\n  index_url: null\n  find_links:\n    - {wheels}\n")
            p, dt = cpkgs(R, "install-tool")
            out("MEASURE" if p.returncode == 0 else "FAIL", "tool_install",
                f"install-tool onto the NFS site: {dt:.1f}s ({brief(p)}) [one TCG vCPU]")
    barrier("tool.installed")
    tool_bin = R / "anaconda3_linux" / "cpkgs-tool" / "bin" / "cpkgs"
    if not tool_bin.exists():
        if ROLE == "A":
            out("FAIL", "tool", f"{tool_bin} is missing after install-tool")
        return
    if ROLE == "B":
        get("tool.measured", timeout=1800)
    prof = R / "etc" / "profile.d" / "conda.sh"
    p, first = run(["bash", "--norc", "--noprofile", "-c",
                    f". '{prof}'; command -v cpkgs; cpkgs --version; cpkgs list --json"], user=1000)
    lines = p.stdout.splitlines()
    ok = p.returncode == 0 and lines[:1] == [str(tool_bin)] and "the site's tool" in (lines[1:2] or [""])[0]
    try:
        listed = len(json.loads("\n".join(lines[2:])))
    except ValueError:
        listed, ok = -1, False
    out("PASS" if ok else "FAIL", "tool",
        f"uid 1000 with only conda.sh sourced on {HOST}: `cpkgs` is {lines[:1]}, --version {lines[1:2]}, "
        f"list --json {listed} envs; first run (cold NFS cache, bash + 3 commands) {first:.2f}s ({brief(p)})")
    env = {"CPKGS_ROOT": str(R)}
    fig = []
    for name, args in (("--help", ["--help"]), ("list", ["list"])):
        ta, tb = [], []
        for _ in range(7):
            ta.append(run([str(tool_bin), *args], env=env, user=1000)[1])
            tb.append(run([CPKGS, *args], env=env, user=1000)[1])
        a, b = sorted(ta)[3], sorted(tb)[3]
        fig.append(f"`cpkgs {name}` tool on NFS {a * 1000:.0f} ms vs venv (9p) {b * 1000:.0f} ms = {a / b:.2f}")
    out("MEASURE", "tool_vs_local", f"{HOST}: " + "; ".join(fig) + " (medians of 7 alternating, TCG guest)")
    if ROLE == "A":
        put("tool.measured")


def _strace_total(text: str) -> str:
    for line in text.splitlines():
        if line.strip().endswith("total"):
            parts = line.split()
            # % time, seconds, usecs/call, calls, [errors], total
            return parts[3] if len(parts) >= 5 else line
    return "?"


# ------------------------------------------------------------------------------------------------ main


def main() -> int:
    os.environ.pop("CPKGS_ROOT", None)
    note(f"scenarios on {HOST}: {', '.join(n for n, _ in SCENARIOS if not ONLY or n in ONLY or n == 'setup')}")
    for name, fn in SCENARIOS:
        if ONLY and name not in ONLY and name != "setup":
            continue
        t = time.monotonic()
        try:
            fn()
        except Abort as exc:
            put(f"{name}.abort")
            out("FAIL", name, str(exc))
        except Exception:
            put(f"{name}.abort")
            out("FAIL", name, "crashed: " + traceback.format_exc()[-1500:].replace("\n", " | "))
        note(f"scenario {name} done in {time.monotonic() - t:.1f}s")
        if name == "setup" and (SIG / "setup.abort.A").exists() | (SIG / "setup.abort.B").exists():
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
