"""`cpkgs usage` over crafted collector files (the formats rsyslog writes, foreign and broken lines), the module ->
package mapping, retirement candidates, and the catalog's SVG/HTML fragments. The records are the hook's exact
format; test_usage.py produces real ones with a real rsyslogd."""

from __future__ import annotations

import gzip
import json
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from conftest import ENVS, make_site, run_cpkgs
from cpkgs_admin.outputs.usage.chart import package_chart_svg, usage_panels
from cpkgs_admin.outputs.usage.report import usage_report
from cpkgs_admin.site.paths import open_site
from cpkgs_admin.site.records import EnvRecord, save_record
from cpkgs_admin.site.usage_config import UsageConfig, csh_line, send_value, sh_line

DAY = 86400.0
NOW = 1_800_000_000.0


def record(env: str, user: str, uid: int | None, start: float, modules: list[str], *, others: list[str] = (),
           layer: bool = False, platform: str = "linux-64") -> str:
    """A payload as the hook writes it: keys in its order."""
    r: dict = {"cpkgs_usage": 1, "env": env, "platform": platform, "user": user}
    if uid is not None:
        r["uid"] = uid
    r.update({"start": start, "layer": layer, "modules": modules, "user_modules": list(others), "host": "n1",
              "seconds": 0.5, "script": "x.py", "interactive": False, "python": "3.11", "sample": 1.0})
    return json.dumps(r, separators=(",", ":"))


def traditional(payload: str) -> str:
    return f"Dec  6 18:01:09 node7 cpkgs-usage[123] {payload}"


def file_format(payload: str) -> str:
    return f"2026-12-06T18:01:09.267123+00:00 node7 cpkgs-usage[99] {payload}"


def local_socket(payload: str) -> str:
    return f"Dec  6 18:01:09 node7 cpkgs-usage[4242]: {payload}"


@pytest.fixture
def site_root(tmp_path: Path) -> Path:
    return make_site(tmp_path / "site", None)


def configure(root: Path, logs: list[str]) -> None:
    cfg = root / "cpkgs.yaml"
    data = yaml.safe_load(cfg.read_text())
    data["usage"] = {"logs": logs}
    cfg.write_text(yaml.safe_dump(data))


def fake_env(root: Path, name: str, modules: dict[str, list[str]], created_days_ago: float | None = None) -> None:
    """An env dir holding only its module index (and, with CREATED_DAYS_AGO, a record of the site)."""
    prefix = root / ENVS / name
    (prefix / "conda-meta" / "cpkgs").mkdir(parents=True)
    (prefix / "conda-meta" / "cpkgs" / "modules.json").write_text(json.dumps({"schema": 1, "modules": modules}))
    if created_days_ago is not None:
        created = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(NOW - created_days_ago * DAY))
        rec = EnvRecord(name=name, family=name.rsplit("-", 1)[0], version=name.rsplit("-", 1)[1], platform="linux-64",
                        prefix=str(prefix), requested_specs=[], channels=[], packages=[], creator="root", host="h",
                        created=created, cpkgs_version="0", size=0, file_count=0)
        save_record(root / ".cpkgs" / "records" / "linux-64" / f"{name}.json", rec)


def test_formats_foreign_and_broken_lines(site_root: Path, tmp_path: Path) -> None:
    fake_env(site_root, "sci-1.0", {"numpy": ["numpy", "conda"], "google.protobuf": ["protobuf", "conda"],
                                    "requests": ["requests", "pypi"]}, created_days_ago=10)
    lines = [
        "Dec  6 18:00:00 node7 rsyslogd: [origin software=\"rsyslogd\"] start",
        traditional(record("sci-1.0", "alice", 1000, NOW - 1 * DAY, ["numpy", "google.protobuf"])),
        file_format(record("sci-1.0", "bob", 1001, NOW - 2 * DAY, ["numpy", "requests", "mystery"])),
        local_socket(record("sci-1.0", "alice", 1000, NOW - 3 * DAY, [], others=["mytool"], layer=True)),
        # Keys in another order (another hook version, a relay that rewrote it): the slow path still counts it.
        file_format(json.dumps({"platform": "linux-64", "cpkgs_usage": 1, "start": NOW - 4 * DAY, "env": "sci-1.0",
                                "user": "h:0123456789abcdef", "modules": ["numpy"]})),
        # Broken: cut short by a relay, wrong schema, a start that is no number, a list that is no list.
        traditional(record("sci-1.0", "carol", 1002, NOW, ["numpy"])[:70]),
        traditional(record("sci-1.0", "carol", 1002, NOW, ["numpy"]).replace('"cpkgs_usage":1', '"cpkgs_usage":2')),
        traditional(record("sci-1.0", "carol", 1002, NOW, ["numpy"]).replace(f'"start":{NOW - 0}', '"start":"x"')),
        traditional('{"cpkgs_usage":1,"env":"sci-1.0","platform":"linux-64","user":"x","start":1,"modules":"numpy"}'),
        "Dec  6 18:01:10 node7 sshd[77]: session opened for user alice",
        "",
    ]
    log = tmp_path / "usage.log"
    log.write_text("\n".join(lines) + "\n")
    configure(site_root, [str(log)])
    rep = usage_report(open_site(site_root), now=NOW)
    assert rep.records == 4
    assert rep.malformed_lines == 4
    assert rep.foreign_lines == 3  # rsyslog's own line, sshd's, the empty one
    env = rep.env("sci-1.0")
    assert env is not None
    assert (env.runs, env.users, env.layer_runs, env.status) == (4, 3, 1, "active")
    assert env.last_used == pytest.approx(NOW - DAY)
    assert sum(n for _w, n in env.weekly) == 4
    assert all(time.gmtime(w).tm_wday == 0 and w % 86400 == 0 for w, _n in env.weekly)  # weeks start on Mondays
    pkgs = {(p.name, p.kind): (p.users, p.envs) for p in rep.packages}
    assert pkgs == {("numpy", "conda"): (3, 1), ("protobuf", "conda"): (1, 1), ("requests", "pypi"): (1, 1),
                    ("mystery", "module"): (1, 1), ("mytool", "user"): (1, 1)}
    assert rep.packages[0].name == "numpy"
    # The same through the CLI, as JSON.
    r = run_cpkgs("usage", "--json", root=site_root)
    assert r.returncode == 0, r
    data = r.json()
    assert data["skipped_lines"] == 7 and data["records"] == 4
    assert {"name", "runs", "users", "last_used"} <= set(data["envs"][0])
    assert {"name", "kind", "users"} <= set(data["packages"][0])


def test_since_env_filters_and_gzip(site_root: Path, tmp_path: Path) -> None:
    old = tmp_path / "usage.log.1.gz"
    with gzip.open(old, "wt") as fh:
        fh.write(traditional(record("a-1.0", "alice", 1000, time.time() - 40 * DAY, ["numpy"])) + "\n")
        fh.write(traditional(record("b-1.0", "bob", 1001, time.time() - 35 * DAY, ["scipy"])) + "\n")
    new = tmp_path / "usage.log"
    new.write_text(traditional(record("a-1.0", "bob", 1001, time.time() - 2 * DAY, ["pandas"])) + "\n")
    configure(site_root, [str(tmp_path / "usage.log*")])
    r = run_cpkgs("usage", "--json", root=site_root)
    assert r.returncode == 0, r
    assert r.json()["records"] == 3 and len(r.json()["logs"]) == 2
    r = run_cpkgs("usage", "--json", "--since", "30d", root=site_root)
    data = r.json()
    assert data["records"] == 1 and [p["name"] for p in data["packages"]] == ["pandas"]
    since = time.strftime("%Y-%m-%d", time.localtime(time.time() - 37 * DAY))
    data = run_cpkgs("usage", "--json", "--since", since, root=site_root).json()
    assert data["records"] == 2
    data = run_cpkgs("usage", "--json", "--env", "a-1.0", root=site_root).json()
    assert [(e["name"], e["runs"], e["users"]) for e in data["envs"]] == [("a-1.0", 2, 2)]
    r = run_cpkgs("usage", "--since", "last tuesday", root=site_root)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--since 'last tuesday'" in r.stderr, r
    # The human table.
    r = run_cpkgs("usage", root=site_root)
    assert r.returncode == 0 and "a-1.0" in r.stdout and "3 records in 2 file(s)" in r.stdout, r


def test_retirement_candidates_need_logs_that_reach_back(site_root: Path, tmp_path: Path) -> None:
    fake_env(site_root, "old-1.0", {}, created_days_ago=400)
    fake_env(site_root, "busy-1.0", {}, created_days_ago=400)
    fake_env(site_root, "fresh-1.0", {}, created_days_ago=5)
    fake_env(site_root, "never-1.0", {}, created_days_ago=200)
    log = tmp_path / "usage.log"
    log.write_text("\n".join(traditional(r) for r in (
        record("old-1.0", "alice", 1000, NOW - 120 * DAY, []),
        record("busy-1.0", "bob", 1001, NOW - 1 * DAY, []),
    )) + "\n")
    configure(site_root, [str(log)])
    site = open_site(site_root)
    rep = usage_report(site, unused="90d", now=NOW)
    assert rep.covered
    assert [(c.name, c.idle_days) for c in rep.candidates] == [("never-1.0", 200), ("old-1.0", 120)]
    # Logs that begin 120 days ago cannot vouch for 200 days of disuse.
    rep = usage_report(site, unused="150d", now=NOW)
    assert not rep.covered and rep.candidates == ()
    # retire on an env the logs know, and on one they never saw.
    r = run_cpkgs("retire", "old-1.0", root=site_root)
    assert r.returncode == 0 and "old-1.0: last used " in r.stdout and "by 1 user(s); 1 run(s)" in r.stdout, r
    r = run_cpkgs("retire", "never-1.0", root=site_root)
    assert r.returncode == 0 and "never-1.0: no use recorded in the usage logs (they begin " in r.stdout, r


def test_retire_says_nothing_without_usage_logs(site_root: Path) -> None:
    fake_env(site_root, "x-1.0", {}, created_days_ago=1)
    r = run_cpkgs("retire", "x-1.0", root=site_root)
    assert r.returncode == 0 and r.stdout == "retired x-1.0 (linux-64)\n", r


def test_profile_lines_quote_the_value() -> None:
    on = UsageConfig(enabled=True, collector="udp://[::1]:514", sample=0.25, user_names="hashed")
    value = send_value(on, "/nfs/cpkgs")
    assert value is not None and value.startswith("to=udp://[::1]:514 sample=0.25 users=hashed salt=")
    assert sh_line(on, "/nfs/cpkgs") == f"CPKGS_USAGE_SEND='{value}'; export CPKGS_USAGE_SEND"
    assert csh_line(on, "/nfs/cpkgs") == f"setenv CPKGS_USAGE_SEND '{value}'"
    assert sh_line(UsageConfig(), "/x") == "unset CPKGS_USAGE_SEND"
    assert send_value(UsageConfig(enabled=True, collector="syslog"), "/x") == "to=syslog sample=1 users=plain"


# ----------------------------------------------------------------------------------------------------- pictures


def test_panels_escape_and_are_well_formed(site_root: Path, tmp_path: Path) -> None:
    evil = '<script>alert("x")</script>&'
    fake_env(site_root, "web-1.0", {"numpy": ["numpy", "conda"]}, created_days_ago=3)
    log = tmp_path / "usage.log"
    log.write_text("\n".join(traditional(r) for r in (
        record("web-1.0", "alice", 1000, time.time() - DAY, ["numpy", evil]),
        record("web-1.0", "bob", 1001, time.time() - 2 * DAY, ["numpy"], others=[evil]),
        record("gone-1.0", "bob", 1001, time.time() - 2 * DAY, ["x"]),
    )) + "\n")
    configure(site_root, [str(log)])
    index, envs = usage_panels(open_site(site_root), "linux-64")
    assert set(envs) == {"web-1.0", "gone-1.0"}
    for fragment in (index, *envs.values()):
        assert "<script>" not in fragment
        ET.fromstring(fragment)  # well-formed: every text and attribute escaped, every tag closed
    assert "&lt;script&gt;" in index and "numpy" in index
    assert "<svg" in envs["web-1.0"] and "distinct users" in envs["web-1.0"]
    svg = ET.fromstring(package_chart_svg(usage_report(open_site(site_root)).packages))
    bars = [e for e in svg.iter("{http://www.w3.org/2000/svg}rect") if e.get("height") == "13"]
    assert len(bars) == 4  # numpy, the odd name as an env module and as a user module, gone-1.0's x
    assert float(bars[0].get("width")) > float(bars[1].get("width"))  # numpy: 2 users, first and longest


def test_panels_without_logs_and_with_unreadable_logs(site_root: Path, tmp_path: Path) -> None:
    assert usage_panels(open_site(site_root)) == ("", {})
    configure(site_root, [str(tmp_path / "missing.log")])
    index, envs = usage_panels(open_site(site_root))
    assert envs == {} and "usage data unavailable: no usage log file exists" in index
    ET.fromstring(index)


# ----------------------------------------------------------------------------------------------------- the build side


def _staged(tmp_path: Path, xy: str = "3.11") -> Path:
    prefix = tmp_path / "staging"
    stdlib = prefix / "lib" / f"python{xy}"
    (stdlib / "site-packages").mkdir(parents=True)
    (stdlib / "lib-dynload").mkdir()
    (stdlib / "os.py").write_text("")
    return prefix


def test_module_index_conda_namespace_and_pypi(tmp_path: Path) -> None:
    from cpkgs_admin.outputs.usage.hook import module_index

    prefix = _staged(tmp_path)
    sp = "lib/python3.11/site-packages"
    meta = [
        (Path("numpy.json"), b"", {"name": "numpy", "files": [f"{sp}/numpy/__init__.py", f"{sp}/numpy/core/x.so",
                                                                 f"{sp}/numpy-2.0.dist-info/RECORD", "bin/f2py"]}),
        (Path("six.json"), b"", {"name": "six", "files": [f"{sp}/six.py", f"{sp}/__pycache__/six.cpython-311.pyc"]}),
        (Path("cffi.json"), b"", {"name": "cffi", "files": [f"{sp}/_cffi_backend.cpython-311-x86_64-linux-gnu.so",
                                                            f"{sp}/cffi/__init__.py"]}),
        (Path("protobuf.json"), b"", {"name": "protobuf", "paths_data": {"paths": [
            {"_path": f"{sp}/google/protobuf/__init__.py"}, {"_path": f"{sp}/google/protobuf/message.py"}]}}),
        (Path("google-auth.json"), b"", {"name": "google-auth", "files": [f"{sp}/google/auth/__init__.py"]}),
        (Path("setuptools.json"), b"", {"name": "setuptools", "files": [f"{sp}/distutils-precedence.pth",
                                                                        f"{sp}/_distutils_hack/__init__.py"]}),
    ]
    # A wheel of the env's pip part: no conda-meta, a RECORD.
    dist = prefix / sp / "Foo_Bar-1.0.dist-info"
    dist.mkdir()
    (dist / "RECORD").write_text("foobar/__init__.py,sha256=x,1\nfoobar/util.py,,\n../../../bin/foo,,\n"
                                 "Foo_Bar-1.0.dist-info/RECORD,,\n")
    index = module_index(prefix, meta)["modules"]
    assert index == {
        "_cffi_backend": ["cffi", "conda"], "cffi": ["cffi", "conda"], "numpy": ["numpy", "conda"],
        "six": ["six", "conda"], "_distutils_hack": ["setuptools", "conda"],
        "google": ["google-auth", "conda"], "google.auth": ["google-auth", "conda"],
        "google.protobuf": ["protobuf", "conda"], "foobar": ["foo-bar", "pypi"],
    }


def test_hook_files_byte_code_fallbacks_and_conflicts(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from cpkgs_admin.outputs.usage.hook import HOOK_SOURCE, hook_files

    rec = SimpleNamespace(name="a-1.0", platform="osx-arm64", python_version="3.11.9")
    prefix = _staged(tmp_path)
    files = hook_files(prefix, Path("/nfs/cpkgs/x/envs/a-1.0"), rec, native=False)
    # This interpreter is 3.11 too: byte code of the same format, made here.
    assert set(files) == {HOOK_SOURCE, "lib/python3.11/sitecustomize.pyc"}
    import importlib.util

    assert files["lib/python3.11/sitecustomize.pyc"][:4] == importlib.util.MAGIC_NUMBER
    assert b"_CHAIN_OWN = False" in files[HOOK_SOURCE] and b"_ENV = 'a-1.0'" in files[HOOK_SOURCE]
    # Another version on another platform: the source only (that python compiles it in memory).
    other = _staged(tmp_path / "o", "3.12")
    files = hook_files(other, Path("/x"), SimpleNamespace(name="b-1.0", platform="osx-arm64",
                                                         python_version="3.12.1"), native=False)
    assert set(files) == {HOOK_SOURCE, "lib/python3.12/sitecustomize.py"}
    # A release candidate of this X.Y may have another magic number: not compiled here.
    rc = SimpleNamespace(name="a-1.0", platform="osx-arm64", python_version="3.11.0rc1")
    assert set(hook_files(prefix, Path("/x"), rc, native=False)) == {HOOK_SOURCE, "lib/python3.11/sitecustomize.py"}
    # A package's sitecustomize in site-packages: the hook looks there too.
    (prefix / "lib/python3.11/site-packages/sitecustomize.py").write_text("")
    assert b"_CHAIN_OWN = True" in hook_files(prefix, Path("/x"), rec, native=False)[HOOK_SOURCE]
    # One in the stdlib dir itself is Python's: no hook. Too old a python: no hook.
    (prefix / "lib/python3.11/sitecustomize.py").write_text("")
    assert hook_files(prefix, Path("/x"), rec, native=False) == {}
    old = _staged(tmp_path / "old", "3.6")
    assert hook_files(old, Path("/x"), SimpleNamespace(name="c-1.0", platform="linux-64", python_version="3.6.15"),
                      native=True) == {}
