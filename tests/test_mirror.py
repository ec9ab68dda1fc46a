"""`cpkgs mirror NAME DIR` + `new-env --lock`: an exact rebuild on a second site that knows no channel at all."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import ENVS, make_site, run_cpkgs

SPECS = ("python", "cpkgs-test-app", "cpkgs-test-textprefix", "cpkgs-test-binprefix")


def package_set(root: Path, name: str) -> list[tuple[str, str, str, str]]:
    r = run_cpkgs("info", name, "--json", root=root)
    assert r.returncode == 0, r
    return sorted((p["name"], p["version"], p["build"], p["sha256"]) for p in r.json()["packages"])


def test_mirror_and_lock_rebuild_on_a_site_without_channels(tmp_path: Path, channel_dir: Path) -> None:
    # Site A builds from a copy of the channel that disappears before site B is built.
    upstream = tmp_path / "upstream"
    shutil.copytree(channel_dir, upstream)
    site_a = make_site(tmp_path / "A", upstream.as_uri())
    assert run_cpkgs("new-env", "demo-1.0", *SPECS, root=site_a).returncode == 0
    want = package_set(site_a, "demo-1.0")

    lock = tmp_path / "lock.txt"
    r = run_cpkgs("export", "demo-1.0", "--format", "explicit", root=site_a)
    assert r.returncode == 0, r
    lock.write_text(r.stdout)
    mirror = tmp_path / "mirror"
    r = run_cpkgs("mirror", "demo-1.0", str(mirror), root=site_a)
    assert r.returncode == 0, r
    assert f"mirrored {len(want)} packages" in r.stdout and mirror.as_uri() in r.stdout

    # Exactly the env's packages, in the subdirs they were recorded in, indexed.
    files = sorted(p.relative_to(mirror).as_posix() for p in mirror.rglob("*.conda"))
    recorded = json.loads(run_cpkgs("info", "demo-1.0", "--json", root=site_a).stdout)["packages"]
    assert files == sorted(f"{p['subdir']}/{p['filename']}" for p in recorded)
    indexed = {}
    for sub in ("linux-64", "noarch"):
        rd = json.loads((mirror / sub / "repodata.json").read_text())
        indexed.update({k: v["sha256"] for k, v in rd.get("packages.conda", {}).items()})
    assert indexed == {p["filename"]: p["sha256"] for p in recorded}
    assert not [p for p in mirror.iterdir() if p.name.startswith(".")]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".mirror")]

    shutil.rmtree(upstream)  # the original channel is gone: only the mirror can serve B
    site_b = make_site(tmp_path / "B", None)
    assert "channels: []" in (site_b / "cpkgs.yaml").read_text()
    r = run_cpkgs("new-env", "demo-1.0", "--lock", str(lock), "-c", mirror.as_uri(), root=site_b)
    assert r.returncode == 0, r
    assert package_set(site_b, "demo-1.0") == want
    prefix_b = site_b / ENVS / "demo-1.0"
    import subprocess

    out = subprocess.run([str(prefix_b / "bin" / "cpkgs-test-textprefix")], capture_output=True, text=True)
    assert out.stdout.strip() == str(prefix_b)
    assert run_cpkgs("verify", "demo-1.0", root=site_b).returncode == 0


def test_mirror_takes_archives_from_the_package_cache_and_checks_them(built_site: Path, tmp_path: Path) -> None:
    """An archive found in the site's package cache is used only if its sha256 matches the record."""
    site = make_site(tmp_path / "site", None)
    # A private site whose record points at the shared built_site channel; borrow built_site's record.
    rec = json.loads(run_cpkgs("info", "tools-1.0", "--json", root=built_site).stdout)
    app = next(p for p in rec["packages"] if p["name"] == "cpkgs-test-app")
    cache = site / ".cpkgs" / "pkgs"
    cache.mkdir(parents=True, exist_ok=True)
    (site / ".cpkgs/records/linux-64").mkdir(parents=True, exist_ok=True)
    (site / ".cpkgs/records/linux-64/tools-1.0.json").write_text(json.dumps(rec))

    src = Path(app["url"].removeprefix("file://"))
    shutil.copyfile(src, cache / app["filename"])
    r = run_cpkgs("mirror", "tools-1.0", str(tmp_path / "m1"), root=site)
    assert r.returncode == 0, r
    assert "1 from the package cache" in r.stdout

    (cache / app["filename"]).write_bytes(b"not the package")
    r = run_cpkgs("mirror", "tools-1.0", str(tmp_path / "m2"), root=site)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "sha256" in r.stderr and app["filename"] in r.stderr, r
    assert not (tmp_path / "m2").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".m2")]


def test_mirror_bad_input_is_one_line(built_site: Path, tmp_path: Path) -> None:
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    r = run_cpkgs("mirror", "demo-1.0", str(full), root=built_site)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not empty" in r.stderr, r
    r = run_cpkgs("mirror", "nope-1.0", str(tmp_path / "m"), root=built_site)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "nope-1.0" in r.stderr, r
    assert not (tmp_path / "m").exists()
