"""NFS-safe locking with real processes: exact counts, kill -9 recovery, another host's lease, locks break."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, make_site, run_cpkgs

WORKER = str(REPO / "tests" / "helpers" / "lock_worker.py")
LEASE = 2.0


@pytest.fixture
def lsite(tmp_path: Path) -> Path:
    return make_site(tmp_path / "site", None, lease=LEASE)


def start_holder(root: Path, hostname: str | None = None) -> subprocess.Popen[str]:
    cmd = [sys.executable, WORKER, str(root), "hold"]
    if hostname:
        # A child with its own UTS namespace and hostname: to filelock and cpkgs it is another host.
        cmd = ["unshare", "--uts", "sh", "-c", f'hostname {hostname} && exec "$@"', "sh", *cmd]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "held"
    return p


def take(root: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, WORKER, str(root), "take", str(timeout)], capture_output=True, text=True)


def test_four_processes_count_exactly(lsite: Path, tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    counter.write_text("0")
    procs = [subprocess.Popen([sys.executable, WORKER, str(lsite), "count", "50", str(counter)]) for _ in range(4)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0, 0, 0]
    assert counter.read_text() == "200"


def test_unlocked_control_loses_updates(lsite: Path, tmp_path: Path) -> None:
    """Proves the counting test can fail: without the lock, increments get lost (or the file garbled by
    interleaved truncate+write), so the total is not 200."""
    counter = tmp_path / "counter"
    counter.write_text("0")
    procs = [subprocess.Popen([sys.executable, WORKER, str(lsite), "nolock", "50", str(counter)]) for _ in range(4)]
    for p in procs:
        p.wait(timeout=120)
    assert counter.read_text() != "200"


def test_killed_holder_same_host_recovered_within_a_second(lsite: Path) -> None:
    holder = start_holder(lsite)
    busy = take(lsite, 0.3)
    assert busy.returncode == 3 and "locked by" in busy.stdout
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    t = time.monotonic()
    r = take(lsite, 5)
    assert r.returncode == 0, r.stdout
    assert float(r.stdout) < 1.0
    assert time.monotonic() - t < 5


def test_other_host_not_broken_by_pid_but_after_lease(lsite: Path) -> None:
    holder = start_holder(lsite, hostname="otherhost")
    holder.send_signal(signal.SIGKILL)  # dead, but on "another host": its pid means nothing here
    holder.wait()
    busy = take(lsite, 0.5)
    assert busy.returncode == 3, busy.stdout
    assert "otherhost" in busy.stdout
    locks = run_cpkgs("locks", "--json", root=lsite)
    assert locks.returncode == 0, locks
    (info,) = locks.json()
    assert info["name"] == "site.lock"
    assert info["owner"]["host"] == "otherhost"
    assert info["owner"]["command"].startswith("cpkgs")
    r = take(lsite, LEASE * 4)
    assert r.returncode == 0, r.stdout
    assert float(r.stdout) >= LEASE * 0.9  # only once the lease ran out


def test_locks_break_frees_other_hosts_lock_at_once(lsite: Path) -> None:
    holder = start_holder(lsite, hostname="otherhost")
    try:
        human = run_cpkgs("locks", root=lsite)
        assert "site.lock" in human.stdout and "otherhost" in human.stdout
        r = run_cpkgs("locks", "break", "site.lock", root=lsite)
        assert r.returncode == 0, r
        assert "otherhost" in r.stdout
        t = take(lsite, 0.5)
        assert t.returncode == 0, t.stdout
        audit = [json.loads(line) for line in (lsite / ".cpkgs" / "audit.log").read_text().splitlines()]
        assert audit[-1]["action"] == "locks-break"
    finally:
        holder.kill()
        holder.wait()


def test_live_holder_on_same_host_is_not_broken(lsite: Path) -> None:
    holder = start_holder(lsite)
    try:
        # Longer than the lease: the holder's heartbeat keeps refreshing it.
        busy = take(lsite, LEASE * 1.6)
        assert busy.returncode == 3
    finally:
        holder.kill()
        holder.wait()


def test_locks_break_unknown_lock(lsite: Path) -> None:
    r = run_cpkgs("locks", "break", "nope.lock", root=lsite)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "no lock named nope.lock" in r.stderr


def test_atomic_write_leaves_old_or_new(tmp_path: Path) -> None:
    """A writer killed mid-way never leaves a torn file: readers see old or new content only."""
    target = tmp_path / "state.json"
    target.write_text(json.dumps({"v": 0}))
    code = (
        "import sys, json; from pathlib import Path; from cpkgs_admin.site.files import atomic_write_json\n"
        "i = 0\n"
        "while True:\n"
        "    i += 1; atomic_write_json(Path(sys.argv[1]), {'v': i, 'pad': 'x' * 200000})\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code, str(target)])
    deadline = time.monotonic() + 1.5
    reads = 0
    while time.monotonic() < deadline:
        json.loads(target.read_text())  # never a partial document
        reads += 1
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    data = json.loads(target.read_text())
    assert data["v"] >= 1 and reads > 10
    leftovers = [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    assert len(leftovers) <= 1  # at most the one temp file the kill interrupted, never the target


def test_release_after_break_keeps_the_new_owners_record_and_reports_the_loss(lsite: Path) -> None:
    """A holder whose lock was broken must not delete its successor's owner record, and must not report success."""
    code = (
        "import sys, time, subprocess\n"
        "from pathlib import Path\n"
        "from cpkgs_admin.errors import CpkgsError\n"
        "from cpkgs_admin.site.locks import site_locked, read_owner\n"
        "from cpkgs_admin.site.paths import open_site\n"
        "site = open_site(Path(sys.argv[1]))\n"
        "try:\n"
        "    with site_locked(site):\n"
        "        print('held', flush=True)\n"
        "        sys.stdin.readline()\n"
        "except CpkgsError as exc:\n"
        "    print('lost:', exc, flush=True)\n"
        "else:\n"
        "    print('ok', flush=True)\n"
    )
    first = subprocess.Popen([sys.executable, "-c", code, str(lsite)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    assert first.stdout.readline().strip() == "held"  # type: ignore[union-attr]
    assert run_cpkgs("locks", "break", "site.lock", root=lsite).returncode == 0
    second = subprocess.Popen([sys.executable, WORKER, str(lsite), "hold"], stdout=subprocess.PIPE, text=True)
    try:
        assert second.stdout.readline().strip() == "held"  # type: ignore[union-attr]
        time.sleep(LEASE)  # the first holder's heartbeat notices its marker now names another owner
        out, _ = first.communicate("\n", timeout=30)
        assert out.startswith("lost:") and "lost the lock" in out, out
        owner = run_cpkgs("locks", "--json", root=lsite).json()[0]["owner"]
        assert owner is not None and owner["pid"] == second.pid
    finally:
        second.kill()
        second.wait()


def test_expired_lease_taken_over_by_the_servers_clock(lsite: Path) -> None:
    """On NFS filelock cannot take over an expired lease (the client refuses RENAME_EXCHANGE); cpkgs judges expiry
    by the marker's age on the server's clock instead. A marker from another host, unrefreshed for longer than two
    leases, is taken over at once, without the lease-long observation filelock would need."""
    holder = start_holder(lsite, hostname="otherhost")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    marker = lsite / ".cpkgs" / "locks" / "site.lock"
    busy = take(lsite, 0.3)
    assert busy.returncode == 3  # fresh: another host's lock is never broken by pid
    old = time.time() - 3 * LEASE
    os.utime(marker, (old, old))
    r = take(lsite, 0.3)
    assert r.returncode == 0, r.stdout
    assert not list((lsite / ".cpkgs" / "locks").glob(".*expired*"))
