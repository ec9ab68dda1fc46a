"""Usage records (issue #18) with real parts: a real rsyslogd collecting UDP on 127.0.0.1, envs built by
`cpkgs new-env` from the local channel (they carry the hook), pythons run as two unprivileged uids, strace for
what a start opens and which sockets it makes, then `cpkgs usage --json` over the collector's file.

rsyslogd runs in the foreground with its own config, pid file and work directory under tmp_path (no systemd, no
system config); `make test` installs the Debian package when root.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from conftest import ENVS, make_site, run_cpkgs, world_traversable

ENV = "ana-1.0"
ALICE = ("--reuid", "65534", "--regid", "65534", "--clear-groups")
BOB = ("--reuid", "65533", "--regid", "65533", "--clear-groups")

pytestmark = pytest.mark.skipif(shutil.which("rsyslogd") is None, reason="rsyslogd missing (make test installs it)")


# ----------------------------------------------------------------------------------------------------- collector


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bound(port: int) -> bool:
    """Whether a UDP socket is bound to 127.0.0.1:PORT (the kernel's own table: no packet sent)."""
    want = f"0100007F:{port:04X}"
    with open("/proc/net/udp") as fh:
        return any(line.split()[1] == want for line in fh.readlines()[1:])


class Collector:
    """rsyslogd -n with a config of its own: UDP on 127.0.0.1:PORT, every message into one file."""

    def __init__(self, workdir: Path, template: str = "RSYSLOG_TraditionalFileFormat") -> None:
        self.dir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = _free_udp_port()
        self.log = workdir / "usage.log"
        conf = workdir / "rsyslog.conf"
        conf.write_text(
            f'global(workDirectory="{workdir}" net.enableDNS="off")\n'
            'module(load="imudp")\n'
            f'input(type="imudp" address="127.0.0.1" port="{self.port}")\n'
            f'*.* action(type="omfile" file="{self.log}" template="{template}")\n'
        )
        self.pidfile = workdir / "rsyslogd.pid"
        self.proc = subprocess.Popen(["rsyslogd", "-n", "-f", str(conf), "-i", str(self.pidfile)],
                                     stdout=subprocess.DEVNULL, stderr=open(workdir / "rsyslogd.err", "wb"))
        deadline = time.monotonic() + 30
        while not _bound(self.port):
            assert self.proc.poll() is None, (workdir / "rsyslogd.err").read_text()
            assert time.monotonic() < deadline, "rsyslogd did not bind its UDP port"
            time.sleep(0.05)
        self._marks = 0

    @property
    def url(self) -> str:
        return f"udp://127.0.0.1:{self.port}"

    def send(self, line: bytes) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(line, ("127.0.0.1", self.port))

    def sync(self) -> list[str]:
        """Every datagram sent before this call is in the file (one UDP queue, one worker: in order); its lines."""
        self._marks += 1
        mark = f"cpkgs-test-sync-{self._marks}-{os.getpid()}"
        self.send(f"<14>1 2024-01-01T00:00:00Z host synctest 1 - - {mark}".encode())
        deadline = time.monotonic() + 30
        while True:
            text = self.log.read_text() if self.log.exists() else ""
            if mark in text:
                return text.splitlines()
            assert time.monotonic() < deadline, f"rsyslogd did not write {mark}"
            time.sleep(0.05)

    def records(self) -> list[dict]:  # type: ignore[type-arg]
        out = []
        for line in self.sync():
            i = line.find('{"cpkgs_usage":')
            if i >= 0:
                try:
                    out.append(json.loads(line[i:]))
                except ValueError:
                    pass
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Collector]:
    c = Collector(tmp_path / "collector")
    yield c
    c.stop()


# ----------------------------------------------------------------------------------------------------- site


def set_usage(root: Path, **usage: object) -> None:
    cfg = root / "cpkgs.yaml"
    data = yaml.safe_load(cfg.read_text())
    data["usage"] = usage
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.fixture(scope="module")
def usage_site(tmp_path_factory: pytest.TempPathFactory, channel_url: str) -> Iterator[Path]:
    """ana-1.0: python, pip and ipykernel (IPython, traitlets, ... in one conda package), built with records off."""
    root = make_site(tmp_path_factory.mktemp("usage") / "site", channel_url)
    r = run_cpkgs("new-env", ENV, "python", "pip", "ipykernel", root=root)
    assert r.returncode == 0, r
    world_traversable(root)
    yield root
    for dirpath, dirnames, _ in os.walk(root):
        for d in dirnames:
            p = os.path.join(dirpath, d)
            if not os.path.islink(p):
                os.chmod(p, 0o755)
    shutil.rmtree(root, ignore_errors=True)


def py(root: Path) -> str:
    return str(root / ENVS / ENV / "bin" / "python")


def send_value(url: str, **extra: str) -> str:
    words = {"to": url, "sample": "1", "users": "plain", **extra}
    return " ".join(f"{k}={v}" for k, v in words.items())


def user_env(user: str, send: str | None = None, **extra: str) -> dict[str, str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "USER": user, "LC_ALL": "C.UTF-8"}
    if send is not None:
        env["CPKGS_USAGE_SEND"] = send
    env.update(extra)
    return env


def run_as(who: tuple[str, ...], cmd: list[str], env: dict[str, str], **kw) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return subprocess.run(["setpriv", *who, *cmd], capture_output=True, text=True, env=env, timeout=120, **kw)


def scratch(path: Path) -> Path:
    """A directory both test uids can read (scripts, layers)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o755)
    world_traversable(path)
    return path


# ----------------------------------------------------------------------------------------------------- the env


def test_env_carries_hook_bytecode_source_and_module_index(usage_site: Path) -> None:
    prefix = usage_site / ENVS / ENV
    stdlib = prefix / "lib" / "python3.11"
    assert (stdlib / "sitecustomize.pyc").is_file()
    # Byte code only on sys.path: a source file there would cost two more stats per start.
    assert not (stdlib / "sitecustomize.py").exists()
    assert not (stdlib / "site-packages" / "sitecustomize.py").exists()
    source = (prefix / "conda-meta" / "cpkgs" / "usage-hook.py").read_text()
    assert f"_ENV = '{ENV}'" in source and "_PLATFORM = 'linux-64'" in source and "_CHAIN_OWN = False" in source
    index = json.loads((prefix / "conda-meta" / "cpkgs" / "modules.json").read_text())["modules"]
    assert index["pip"] == ["pip", "conda"]
    assert index["IPython"] == ["ipykernel", "conda"] and index["traitlets"] == ["ipykernel", "conda"]
    assert not any(k.endswith((".dist-info", "__pycache__")) for k in index)
    # Sealed and checked like every other file cpkgs writes into an env.
    assert oct((stdlib / "sitecustomize.pyc").stat().st_mode & 0o777) == "0o444"
    r = run_cpkgs("verify", ENV, root=usage_site)
    assert r.returncode == 0, r


def test_hook_is_python_s_byte_code_of_this_env(usage_site: Path) -> None:
    """The env's python imports it (it is the module `sitecustomize`) and its JSON encoder agrees with json."""
    code = ("import sitecustomize as s, json, sys\n"
            "print(s.__file__)\n"
            "v = {'a': 'x\"y\\\\z\\n\\u00e9\\U0001f600', 'b': [1, 2.5, True, False], 'c': 'plain'}\n"
            "print(json.loads(s._json(v)) == v, s._json(v).isascii())\n")
    r = run_as(ALICE, [py(usage_site), "-c", code], user_env("alice"))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].endswith("/lib/python3.11/sitecustomize.pyc")
    assert lines[1] == "True True"


# ----------------------------------------------------------------------------------------------------- the switch


def test_profiles_modules_kernels_carry_the_switch_and_refresh_removes_it(tmp_path: Path, channel_url: str) -> None:
    root = make_site(tmp_path / "site", channel_url)
    r = run_cpkgs("new-env", "k-1.0", "python", "ipykernel", root=root)
    assert r.returncode == 0, r
    set_usage(root, enabled=True, collector="udp://127.0.0.1:5514", logs=[str(tmp_path / "u.log")], sample=0.5,
              user_names="hashed")
    r = run_cpkgs("refresh", root=root)
    assert r.returncode == 0, r
    world_traversable(root)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    sh = subprocess.run(["bash", "-c", f". '{root}/etc/profile.d/conda.sh'; printf '%s' \"$CPKGS_USAGE_SEND\""],
                        capture_output=True, text=True, env=env)
    value = sh.stdout
    assert re.fullmatch(r"to=udp://127\.0\.0\.1:5514 sample=0\.5 users=hashed salt=[0-9a-f]{16}", value), sh
    for shell in ("zsh", "dash", "ksh"):  # exported, under set -eu, in every shell the profile supports
        if shutil.which(shell):
            r = subprocess.run([shell, "-c", f"set -eu; . '{root}/etc/profile.d/conda.sh'; /usr/bin/env"],
                               capture_output=True, text=True, env=env)
            assert f"CPKGS_USAGE_SEND={value}" in r.stdout.splitlines(), (shell, r)
    csh = subprocess.run(["tcsh", "-f", "-c", f"source '{root}/etc/profile.d/conda.csh'; printenv CPKGS_USAGE_SEND"],
                         capture_output=True, text=True, env=env)
    assert csh.stdout.strip() == value, csh
    lua = (root / "modulefiles" / "k" / "1.0.lua").read_text()
    assert f'pushenv("CPKGS_USAGE_SEND", "{value}")' in lua
    tcl = (root / "modulefiles-tcl" / "k" / "1.0").read_text()
    assert f'setenv "CPKGS_USAGE_SEND" "{value}"' in tcl
    kernel = json.loads((root / "share/jupyter/kernels/k-1.0/kernel.json").read_text())
    assert kernel["env"]["CPKGS_USAGE_SEND"] == value
    # Off again: a refresh takes it out everywhere, and sourcing the profile unsets what an earlier one exported.
    set_usage(root, enabled=False)
    r = run_cpkgs("refresh", root=root)
    assert r.returncode == 0, r
    sh = subprocess.run(["bash", "-c", f". '{root}/etc/profile.d/conda.sh'; echo \"${{CPKGS_USAGE_SEND-unset}}\""],
                        capture_output=True, text=True, env={**env, "CPKGS_USAGE_SEND": value})
    assert sh.stdout.strip() == "unset", sh
    assert "CPKGS_USAGE_SEND" not in (root / "modulefiles" / "k" / "1.0.lua").read_text()
    assert "CPKGS_USAGE_SEND" not in (root / "share/jupyter/kernels/k-1.0/kernel.json").read_text()


@pytest.mark.parametrize(("usage", "message"), [
    ({"enabled": "yes please"}, "key 'usage.enabled' must be true or false"),
    ({"enabled": True}, "key 'usage.collector' is required when usage.enabled is true"),
    ({"collector": "udp://logs.example.org:514"}, "is not an IP address (the hook makes no name lookups"),
    ({"collector": "tcp://10.0.0.1:514"}, "is neither udp://IP:PORT nor syslog"),
    ({"collector": "udp://10.0.0.1:70000"}, "needs a port"),
    ({"sample": 1.5}, "key 'usage.sample' must be between 0 and 1"),
    ({"user_names": "anonymous"}, "key 'usage.user_names' must be plain or hashed"),
    ({"logs": ["relative.log"]}, "key 'usage.logs[0]' 'relative.log' is not an absolute path"),
    ({"salt": "x"}, "key 'usage.salt' is unknown"),
])
def test_bad_usage_config_is_one_line(tmp_path: Path, usage: dict, message: str) -> None:  # type: ignore[type-arg]
    root = make_site(tmp_path / "site", None)
    set_usage(root, **usage)
    r = run_cpkgs("list", root=root)
    assert r.returncode == 1, r
    assert r.stderr.count("\n") == 1 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert str(root / "cpkgs.yaml") in r.stderr


# ----------------------------------------------------------------------------------------------------- runs


def test_records_counted_exactly(usage_site: Path, collector: Collector, tmp_path: Path) -> None:
    """Two users, different packages, an interactive session, a crash, an opt-out, usage off, a personal layer with
    its own sitecustomize; foreign and malformed lines in the collector's file. `cpkgs usage --json` counts exactly
    what ran."""
    root = usage_site
    set_usage(root, enabled=True, collector=collector.url, logs=[str(collector.log)])
    try:
        r = run_cpkgs("refresh", root=root)
        assert r.returncode == 0, r
        send = send_value(collector.url)
        work = scratch(tmp_path / "work")
        # 1. alice through the site's profile (the variable comes from conda.sh) imports pip.
        r = run_as(ALICE, ["bash", "-c", f". '{root}/etc/profile.d/conda.sh'; conda activate {ENV}; "
                                         "python -c 'import pip; print(pip.__name__)'"], user_env("alice"))
        assert r.returncode == 0 and r.stdout == "pip\n", r
        # 2. bob runs a script importing IPython (package ipykernel).
        (work / "analysis.py").write_text("import IPython\nprint('ok')\n")
        r = run_as(BOB, [py(root), str(work / "analysis.py")], user_env("bob", send))
        assert r.returncode == 0 and r.stdout == "ok\n", r
        # 3. bob interactively (python -i, commands on stdin) imports packaging (also in ipykernel).
        r = run_as(BOB, [py(root), "-i", "-q"], user_env("bob", send), input="import packaging\nprint(6*7)\n")
        assert r.returncode == 0 and "42" in r.stdout, r
        # 4. alice's crashing script: same traceback and exit status as with records off.
        (work / "crash.py").write_text("import pip\nraise SystemExit(print('before') or 1/0)\n")
        on = run_as(ALICE, [py(root), str(work / "crash.py")], user_env("alice", send))
        off = run_as(ALICE, [py(root), str(work / "crash.py")], user_env("alice"))
        assert (on.returncode, on.stdout, on.stderr) == (off.returncode, off.stdout, off.stderr)
        assert on.returncode == 1 and "ZeroDivisionError" in on.stderr
        # 5. opted out, and 6. records off (no variable): the same program, nothing sent.
        r = run_as(ALICE, [py(root), "-c", "import IPython"], user_env("alice", send, CPKGS_USAGE="0"))
        assert r.returncode == 0, r
        r = run_as(BOB, [py(root), "-c", "import pip"], user_env("bob"))
        assert r.returncode == 0, r
        # 7. alice's personal layer with a module and a sitecustomize of its own: both still work.
        home = scratch(tmp_path / "alice")
        os.chown(home, 65534, 65534)
        layer = home / "layer"
        r = run_cpkgs("extend", ENV, str(layer), root=root, user=True)
        assert r.returncode == 0, r
        sp = layer / "lib" / "python3.11" / "site-packages"
        (sp / "sitecustomize.py").write_text("import os\nos.environ['LAYER_SITECUSTOMIZE'] = 'ran'\n")
        (sp / "mytool.py").write_text("VALUE = 7\n")
        r = run_as(ALICE, [str(layer / "bin" / "python"), "-c",
                           "import os, mytool, pip; print(os.environ.get('LAYER_SITECUSTOMIZE'), mytool.VALUE)"],
                   user_env("alice", send))
        assert r.returncode == 0 and r.stdout == "ran 7\n", r
        # Lines that are not records: another program's message, a record cut short by a relay.
        subprocess.run(["logger", "-n", "127.0.0.1", "-P", str(collector.port), "-d", "-t", "sshd",
                        "session opened for user alice"], check=True)
        collector.send(b'<14>1 2024-01-01T00:00:00Z relay cpkgs-usage 9 - - {"cpkgs_usage":1,"env":"ana-1.0","plat')

        records = collector.records()
        assert len(records) == 5, records  # runs 1, 2, 3, 4 and 7
        by_script = {r["script"]: r for r in records}
        assert by_script["interactive"]["interactive"] is True and by_script["interactive"]["user"] == "bob"
        assert by_script["analysis.py"]["uid"] == 65533 and "IPython" in by_script["analysis.py"]["modules"]
        assert by_script["crash.py"]["modules"] == ["pip"]
        layer_rec = next(r for r in records if r["layer"])
        assert layer_rec["env"] == ENV and layer_rec["user_modules"] == ["mytool"] and layer_rec["modules"] == ["pip"]
        assert all(r["host"] == os.uname().nodename and r["seconds"] >= 0 for r in records)

        rep = run_cpkgs("usage", "--json", root=root)
        assert rep.returncode == 0, rep
        data = rep.json()
        lines = collector.log.read_text().splitlines()
        assert data["records"] == 5
        assert data["malformed_lines"] == 1
        assert data["skipped_lines"] == len(lines) - 5
        env = next(e for e in data["envs"] if e["name"] == ENV)
        assert (env["runs"], env["users"], env["layer_runs"]) == (5, 2, 1)
        assert env["last_used"] is not None
        pkgs = {(p["name"], p["kind"]): p["users"] for p in data["packages"]}
        assert pkgs[("pip", "conda")] == 1  # alice only: bob's pip run had records off
        assert pkgs[("ipykernel", "conda")] == 1  # bob: IPython, packaging; alice's IPython run opted out
        assert pkgs[("mytool", "user")] == 1
        assert not [k for k in pkgs if k[1] == "module"], pkgs  # every env module mapped to its package
        # The catalog: a full render reads the logs into the env's panel and the index's chart.
        r = run_cpkgs("catalog", root=root)
        assert r.returncode == 0, r
        index = Path(r.stdout.strip())
        page = index.parent / "envs" / ENV / "index.html"
        assert "<dt>runs</dt><dd>5</dd><dt>distinct users</dt><dd>2</dd>" in page.read_text(), page.read_text()
        front = index.read_text()
        assert 'id="usage-records"' in front and "5 python runs recorded" in front and "<svg" in front
        assert ">pip<" in front and ">ipykernel<" in front  # bars of the package chart
        # A sixth run; retire then updates the catalog without reading the logs (the panels of the last full
        # render: a publish's update stays fast however large the logs), and names the last use itself.
        r = run_as(ALICE, [py(root), "-c", "import pip"], user_env("alice", send))
        assert r.returncode == 0 and len(collector.records()) == 6, r
        r = run_cpkgs("retire", ENV, root=root)
        assert r.returncode == 0, r
        assert re.search(rf"{ENV}: last used \d{{4}}-\d\d-\d\dT.* by 2 user\(s\); 6 run\(s\)", r.stdout), r
        assert "retired" in page.read_text() and "<dt>runs</dt><dd>5</dd>" in page.read_text()
        assert run_cpkgs("catalog", root=root).returncode == 0
        assert "<dt>runs</dt><dd>6</dd>" in page.read_text() and "6 python runs recorded" in index.read_text()
    finally:
        set_usage(root, enabled=False)
        run_cpkgs("refresh", root=root)


def test_off_and_opted_out_open_no_socket(usage_site: Path, collector: Collector) -> None:
    """strace: with records off, or CPKGS_USAGE=0, a python start and exit make no socket call at all; with them
    on, exactly one datagram (the control that makes this test able to fail)."""
    send = send_value(collector.url)
    cases = {"off": user_env("alice"), "opted-out": user_env("alice", send, CPKGS_USAGE="0"),
             "on": user_env("alice", send)}
    calls = {}
    for name, env in cases.items():
        r = subprocess.run(["strace", "-f", "-qq", "-e", "trace=execve,socket,connect,sendto", "-o", "/dev/stderr",
                            "setpriv", *ALICE, py(usage_site), "-c", "import pip"],
                           capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 0, r
        # From python's exec on (setpriv and env look up groups through nscd's socket before that).
        python = r.stderr.split("execve(")[-1]
        calls[name] = [ln for ln in python.splitlines() if re.search(r"\b(socket|connect|sendto)\(", ln)]
    assert calls["off"] == [] and calls["opted-out"] == []
    assert len([c for c in calls["on"] if "socket(AF_INET, SOCK_DGRAM" in c]) == 1, calls["on"]
    assert len([c for c in calls["on"] if "sendto(" in c and str(collector.port) in c]) == 1, calls["on"]
    assert not [c for c in calls["on"] if "connect(" in c], calls["on"]  # no resolver, no TCP
    assert len(collector.records()) == 1


def _file_calls(python: str, env: dict[str, str]) -> str:
    """strace of file system calls of `python -c 'import IPython'` as alice, from the interpreter's exec on."""
    r = subprocess.run(["strace", "-f", "-qq", "-e", "trace=%file", "-o", "/dev/stderr",
                        "setpriv", *ALICE, python, "-c", "import IPython"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r
    return r.stderr.split("execve(")[-1]


def _writes(trace: str) -> set[str]:
    """Paths the process tried to create or open for writing (Python itself tries __pycache__ on the sealed env)."""
    out = set()
    for line in trace.splitlines():
        if re.search(r"O_(WRONLY|RDWR|CREAT)|mkdir\(|rename\(|unlink", line):
            m = re.search(r'"([^"]+)"', line)
            out.add(re.sub(r"\.\d+$", "", m.group(1)) if m else line)
    return out


def test_no_name_lookup_and_nothing_written(usage_site: Path, collector: Collector) -> None:
    """With records on: no resolver or password file is read, and the process tries to write nothing that it
    does not try with records off (Python's own __pycache__ attempts on the read-only env)."""
    on = _file_calls(py(usage_site), user_env("alice", send_value(collector.url)))
    off = _file_calls(py(usage_site), user_env("alice"))
    for name in ("resolv.conf", "/etc/hosts", "nsswitch.conf", "/etc/passwd", "gai.conf"):
        assert name not in on, name
    assert _writes(on) == _writes(off)
    assert len(collector.records()) == 1


def test_collector_down_changes_nothing(usage_site: Path, tmp_path: Path) -> None:
    """Nothing listens on the port (and a second run: a syslog socket that does not exist): output and exit status
    are those of a run with records off."""
    port = _free_udp_port()
    script = scratch(tmp_path / "w") / "s.py"
    script.write_text("import sys, pip\nprint('out'); print('err', file=sys.stderr)\nsys.exit(3)\n")
    off = run_as(ALICE, [py(usage_site), str(script)], user_env("alice"))
    assert off.returncode == 3 and off.stdout == "out\n" and off.stderr == "err\n"
    # A port nobody listens on; a syslog socket that does not exist; a broadcast address, where sendto itself fails
    # (EACCES without SO_BROADCAST): the hook's error stays its own.
    for send in (send_value(f"udp://127.0.0.1:{port}"), "to=syslog sample=1 users=hashed salt=00",
                 send_value("udp://255.255.255.255:9")):
        on = run_as(ALICE, [py(usage_site), str(script)], user_env("alice", send))
        assert (on.returncode, on.stdout, on.stderr) == (off.returncode, off.stdout, off.stderr), send


def test_sample_zero_sends_nothing(usage_site: Path, collector: Collector) -> None:
    for _ in range(3):
        r = run_as(ALICE, [py(usage_site), "-c", "import pip"], user_env("alice", send_value(collector.url,
                                                                                             sample="0")))
        assert r.returncode == 0, r
    r = run_as(ALICE, [py(usage_site), "-c", "pass"], user_env("alice", send_value(collector.url)))
    assert r.returncode == 0
    assert [rec["script"] for rec in collector.records()] == ["-c"]


def test_hashed_user_names(usage_site: Path, collector: Collector) -> None:
    send = send_value(collector.url, users="hashed", salt="0123456789abcdef")
    for who, name in ((ALICE, "alice"), (BOB, "bob"), (ALICE, "alice")):
        assert run_as(who, [py(usage_site), "-c", "pass"], user_env(name, send)).returncode == 0
    recs = collector.records()
    assert len(recs) == 3
    assert all(re.fullmatch(r"h:[0-9a-f]{16}", r["user"]) and "uid" not in r for r in recs)
    assert recs[0]["user"] == recs[2]["user"] != recs[1]["user"]
    assert "alice" not in collector.log.read_text() and "65534" not in collector.log.read_text()


def test_pythonpath_sitecustomize_still_runs(usage_site: Path, tmp_path: Path) -> None:
    """A user's own sitecustomize on PYTHONPATH comes before the stdlib dir: it is the one Python imports (so the
    hook does not run there: that user has replaced it), and it works exactly as without cpkgs."""
    d = scratch(tmp_path / "pp")
    (d / "sitecustomize.py").write_text("import builtins\nbuiltins.MINE = 'mine'\n")
    r = run_as(ALICE, [py(usage_site), "-c", "import sitecustomize; print(MINE, sitecustomize.__file__)"],
               user_env("alice", PYTHONPATH=str(d)))
    assert r.returncode == 0 and r.stdout == f"mine {d}/sitecustomize.py\n", r


def test_failing_chained_sitecustomize_reported_as_python_does(usage_site: Path, tmp_path: Path) -> None:
    """A layer's sitecustomize that raises: site.py's own one-line report, the program still runs, exit 0."""
    layer = tmp_path / "home" / "layer"
    layer.parent.mkdir(parents=True, exist_ok=True)
    os.chown(layer.parent, 65534, 65534)
    world_traversable(layer.parent)
    r = run_cpkgs("extend", ENV, str(layer), root=usage_site, user=True)
    assert r.returncode == 0, r
    sp = layer / "lib" / "python3.11" / "site-packages"
    (sp / "sitecustomize.py").write_text("raise RuntimeError('broken on purpose')\n")
    r = run_as(ALICE, [str(layer / "bin" / "python"), "-c", "print('still runs')"], user_env("alice"))
    assert r.returncode == 0 and r.stdout == "still runs\n", r
    assert r.stderr == ("Error in sitecustomize; set PYTHONVERBOSE for traceback:\n"
                        "RuntimeError: broken on purpose\n"), r.stderr


def _env_path_calls(python: str, prefix: Path) -> int:
    r = subprocess.run(["strace", "-f", "-qq", "-e", "trace=%file,%desc", "-o", "/dev/stderr",
                        "setpriv", *ALICE, python, "-c", "pass"],
                       capture_output=True, text=True, env=user_env("alice"), timeout=120)
    assert r.returncode == 0, r
    return sum(1 for ln in r.stderr.splitlines() if f"{prefix}/" in ln or f'"{prefix}"' in ln)


def test_file_accesses_per_start_do_not_grow(usage_site: Path, tmp_path: Path) -> None:
    """strace counts every system call naming a path in the env for `python -c pass`, with the hook (the env as
    built) and in an identical copy without it: the hook (a sitecustomize.pyc where Python looks first, chaining
    past the env's own sealed dirs) adds none."""
    with_hook = usage_site / ENVS / ENV
    without = tmp_path / "copy" / ENV
    without.parent.mkdir()
    subprocess.run(["cp", "-a", str(with_hook), str(without.parent)], check=True)
    stdlib = without / "lib" / "python3.11"
    os.chmod(stdlib, 0o755)
    (stdlib / "sitecustomize.pyc").unlink()
    os.chmod(stdlib, 0o555)
    world_traversable(without)
    a = _env_path_calls(str(with_hook / "bin" / "python"), with_hook)
    b = _env_path_calls(str(without / "bin" / "python"), without)
    assert a <= b, (a, b)
    assert b > 50  # the count is of something real: the interpreter's own start


# ----------------------------------------------------------------------------------------------------- report


def test_usage_without_logs_configured_is_one_line(tmp_path: Path) -> None:
    root = make_site(tmp_path / "site", None)
    r = run_cpkgs("usage", root=root)
    assert r.returncode == 1 and r.stderr == ("cpkgs: no usage logs configured: set usage.logs in cpkgs.yaml to the "
                                              "collector's output files\n"), r
    set_usage(root, logs=[str(tmp_path / "nothing-here.log")])
    r = run_cpkgs("usage", root=root)
    assert r.returncode == 1 and "no usage log file exists" in r.stderr and r.stderr.count("\n") == 1, r


def test_unreadable_log_is_one_line_for_an_ordinary_user(tmp_path: Path) -> None:
    root = make_site(tmp_path / "site", None)
    log = tmp_path / "admin-only.log"
    log.write_text("x\n")
    os.chmod(log, 0o600)
    set_usage(root, logs=[str(log)])
    world_traversable(tmp_path)
    r = run_cpkgs("usage", root=root, user=True)
    assert r.returncode == 1, r
    assert r.stderr == f"cpkgs: cannot read usage log {log}: permission denied (collector files are for admins)\n"
