"""The catalog (`cpkgs catalog`, and its update on publish, retire, remove and refresh): static pages under
<outputs root>/share/cpkgs-catalog. Renderer tests write records directly (the shape records.py reads); the
integration tests build real envs from the local channel; test_catalog_browser.py opens the pages in Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from markupsafe import Markup

from conftest import ENVS, REPO, cpkgs_env, make_site, run_cpkgs, tree_hash

PLAT = "linux-64"
CATALOG = "share/cpkgs-catalog"
XSS = "<script>alert(1)</script>"
NASTY = "a\"'<>&b"
# What no generated page may hold raw: C0 controls but tab/LF/CR, DEL, C1, bidi overrides and isolates.
RAW_CONTROLS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


# ----------------------------------------------------------------------------------------------------- helpers


def pkg(name: str, version: str, build: str = "h0_0", **extra: Any) -> dict[str, Any]:
    channel = "https://conda.example.org/main"
    return {"name": name, "version": version, "build": build, "channel": channel, "sha256": f"{hash((name, version, build)) & (2**64 - 1):064x}",
            "url": f"{channel}/{PLAT}/{name}-{version}-{build}.conda", "md5": "", "subdir": PLAT,
            "filename": f"{name}-{version}-{build}.conda", "depends": [], **extra}


def record(root: Path, name: str, packages: list[dict[str, Any]], *, status: str = "active",
           created: str = "2024-05-01T12:00:00+0000", **fields: Any) -> dict[str, Any]:
    family, _, version = name.rpartition("-")
    rec = {"schema": 2, "name": name, "family": family, "version": version, "platform": PLAT,
           "prefix": str(root / ENVS / name), "requested_specs": [p["name"] for p in packages],
           "channels": ["https://conda.example.org/main"], "packages": packages, "creator": "admin", "host": "build1",
           "created": created, "cpkgs_version": "0.1.0", "size": 123456789, "file_count": 42, "status": status,
           **fields}
    path = root / ".cpkgs" / "records" / PLAT / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{name}.tmp")
    tmp.write_text(json.dumps(rec, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)  # as records are written: a new inode
    return rec


def site_of(root: Path) -> Any:
    from cpkgs_admin.site.paths import open_site

    return open_site(root)


def files_of(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): p.read_text() for p in sorted(d.rglob("*")) if p.is_file() and p.name != ".state.json"}


class Texts(HTMLParser):
    """textContent of elements by tag name, #id or .class, as a browser gives it (entities decoded)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.open: list[tuple[str, list[str]]] = []
        self.found: dict[str, list[str]] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        keys = [tag] + [f"#{v}" for k, v in attrs if k == "id" and v] + [f".{c}" for k, v in attrs if k == "class" and v
                                                                for c in v.split()]
        if tag not in ("meta", "link", "input", "br"):
            self.open.append((tag, keys))
            for k in keys:
                self.found.setdefault(k, []).append("")

    def handle_endtag(self, tag: str) -> None:
        while self.open:
            t, _ = self.open.pop()
            if t == tag:
                break

    def handle_data(self, data: str) -> None:
        for _t, keys in self.open:
            for k in keys:
                self.found[k][-1] += data


def texts(html: str, key: str) -> list[str]:
    p = Texts()
    p.feed(html)
    return p.found.get(key, [])


@pytest.fixture
def bare(tmp_path: Path) -> Path:
    """A site (linux-64 only) without envs: tests write its records."""
    return make_site(tmp_path / "site", None, "--platform", PLAT)


# ----------------------------------------------------------------------------------------------------- escaping


def test_admin_text_and_channel_metadata_are_shown_as_text(bare: Path) -> None:
    """A retire message holding a script, package metadata with quotes and angle brackets, control characters and
    a bidi override: every page shows them as text (what a browser's textContent gives back), none holds them raw."""
    from cpkgs_admin.outputs.catalog import render_catalog

    message = f"{XSS} \x1b[31mred\x07 \u202eevil"
    record(bare, "app-1.0", [pkg("python", "3.11.7"), pkg("lib", "1.0")], status="retired",
           retired={"successor": "app-2.0", "message": message, "at": "2024-06-01T00:00:00+0000", "by": "admin"})
    record(bare, "app-2.0", [pkg("python", "3.11.7"), pkg("lib", "2.0"),
                             pkg(NASTY, f"1.0{NASTY}", f"b{NASTY}", summary=f"sum {NASTY}</script>")],
           requested_specs=[f"lib {XSS}"], variables={"X": f"v{NASTY}\x1b"})
    render_catalog(site_of(bare))
    d = bare / CATALOG
    old = (d / "envs" / "app-1.0" / "index.html").read_text()
    new = (d / "envs" / "app-2.0" / "index.html").read_text()
    index = (d / "index.html").read_text()
    shown = r"<script>alert(1)</script> \x1b[31mred\x07 \u202eevil"
    assert texts(old, ".message") == [shown]
    assert texts(index, ".message") == [shown]
    assert texts(old, "#status")[0].startswith("retired")
    for html in (old, new, index):
        assert XSS not in html and "alert(1)</script>" not in html
        assert not RAW_CONTROLS.search(html)
    row = [t for t in texts(new, "#package-table") if NASTY in t]
    assert row and f"1.0{NASTY}" in row[0] and f"b{NASTY}" in row[0] and f"sum {NASTY}</script>" in row[0]
    assert f'data-name="{NASTY}"' not in new  # the attribute is quoted: its quote escaped
    assert texts(new, ".spec") == [f"lib {XSS}"]
    search = (d / "search.js").read_text()
    assert "<" not in search and "\u2028" not in search
    payload = json.loads(search.split(" = ", 1)[1].rstrip().rstrip(";"))
    assert [NASTY, f"1.0{NASTY}", "conda"] in [line.split("\t") for _n, lines in payload["envs"]
                                              for line in lines.splitlines()]


def test_spec_file_is_shown_only_while_it_is_what_built_the_env(bare: Path) -> None:
    """The family's spec file (admin text: its comments) is shown, escaped, while it hashes to the record's
    spec_sha256 (spec.from_family's digest); once edited the page says so instead of showing other text."""
    from cpkgs_admin.outputs.catalog import render_catalog
    from cpkgs_admin.site.specs import from_family

    spec = bare / "specs" / "app.yml"
    spec.write_text(f"# the app family {XSS} & co\ndependencies: [python]\n")
    sha = from_family(bare / "specs", "app").sha256
    record(bare, "app-1.0", [pkg("python", "3.11.7")], spec_source=str(spec), spec_sha256=sha)
    render_catalog(site_of(bare))
    page = bare / CATALOG / "envs" / "app-1.0" / "index.html"
    assert texts(page.read_text(), ".spec-text") == [spec.read_text()]
    assert XSS not in page.read_text()
    spec.write_text("dependencies: [python, numpy]\n")
    render_catalog(site_of(bare))
    assert texts(page.read_text(), ".spec-text") == []
    assert "changed since this version was built" in page.read_text()


def test_js_data_cannot_end_a_script_or_a_string() -> None:
    from cpkgs_admin.outputs.catalog.render import js_data

    value = {"k": "</script><!-- \u2028\u2029 & é"}
    text = js_data("X", value)
    assert "<" not in text and ">" not in text and "\u2028" not in text and "\u2029" not in text and "é" not in text
    assert json.loads(text.split(" = ", 1)[1].rstrip().rstrip(";")) == value


def test_visible_controls() -> None:
    from cpkgs_admin.outputs.catalog.render import text, visible_controls

    assert visible_controls("a\x1b[1mb\x00\x7f\x9b\u202e\tc\n") == "a\\x1b[1mb\\x00\\x7f\\x9b\\u202e\tc\n"
    assert text(f"{NASTY}\x1b") == "a&quot;&#x27;&lt;&gt;&amp;b\\x1b"


# ----------------------------------------------------------------------------------------------------- content


def test_pypi_entries_get_their_kind_and_index(bare: Path) -> None:
    """Entries with `kind: pypi` (the spec's pip: part, from the pip step) show as such, with their index; entries
    without a kind are conda packages."""
    from cpkgs_admin.outputs.catalog import render_catalog

    record(bare, "py-1.0", [pkg("python", "3.11.7"),
                            {**pkg("requests", "2.32.3", ""), "kind": "pypi", "channel": "",
                             "index": "https://pypi.example.org/simple"}])
    render_catalog(site_of(bare))
    d = bare / CATALOG
    page = (d / "envs" / "py-1.0" / "index.html").read_text()
    rows = texts(page, "#package-table")[0]
    assert "requests2.32.3pypihttps://pypi.example.org/simple" in rows.replace("\n", "")
    assert "python3.11.7h0_0condahttps://conda.example.org/main" in rows.replace("\n", "")
    assert "requests\\t2.32.3\\tpypi\\n" in (d / "search.js").read_text()


def test_versions_in_conda_order_and_removed_ones_skipped_for_diffs(bare: Path) -> None:
    """A family's previous version is by conda's version order (1.10 after 1.9), skipping removed versions; the diff
    page shows what changed against it; removed envs stay listed with their status."""
    from cpkgs_admin.outputs.catalog import render_catalog

    record(bare, "f-1.9", [pkg("lib", "1.9"), pkg("gone", "1.0")])
    record(bare, "f-1.10", [pkg("lib", "1.10")], status="removed",
           removed={"at": "2024-07-01T00:00:00+0000", "by": "admin", "trash": "/x"})
    record(bare, "f-2.0", [pkg("lib", "2.0"), pkg("new", "0.1")])
    render_catalog(site_of(bare))
    d = bare / CATALOG
    index = (d / "index.html").read_text()
    assert re.findall(r'<tr data-name="([^"]+)"', index) == ["f-2.0", "f-1.10", "f-1.9"]  # newest first
    assert texts(index, ".status-removed") and "removed" in texts(index, ".status-removed")[0]
    diff = (d / "envs" / "f-2.0" / "diff.html").read_text()
    assert texts(diff, "h1") == ["f-2.0 compared with f-1.9"]
    rows = {r.split("\t")[0]: r for r in _diff_rows(diff)}
    assert rows["lib"] == "lib\tconda\t1.9 h0_0\t2.0 h0_0" and rows["new"] == "new\tconda\t\t0.1 h0_0"
    assert rows["gone"] == "gone\tconda\t1.0 h0_0\t"
    removed_diff = (d / "envs" / "f-1.10" / "diff.html").read_text()
    assert "f-1.9" in removed_diff  # a removed version's page still compares with its predecessor
    assert not (d / "envs" / "f-1.9" / "diff.html").exists()
    page = (d / "envs" / "f-1.10" / "index.html").read_text()
    assert "it can no longer be used" in page and "conda activate" not in page


def _diff_rows(html: str) -> list[str]:
    body = html.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    out = []
    for tr in re.findall(r"<tr[^>]*>(.*?)</tr>", body):
        cells = re.findall(r"<td>(.*?)</td>", tr)
        out.append("\t".join(cells[1:]))
    return out


def test_extension_sections_are_rendered_escaped(bare: Path) -> None:
    """The extension point the usage panel will use: a provider's sections appear on every env page and the index,
    built with the catalog's own escaping."""
    from cpkgs_admin.outputs.catalog import render_catalog
    from cpkgs_admin.outputs.catalog.render import render_html
    from cpkgs_admin.outputs.catalog.sections import Section

    class Usage:
        def env_sections(self, site: Any, rec: Any) -> list[Section]:
            return [Section("usage-panel", f"Usage of {rec.name}", render_html("<p>{{ n }} runs {{ x }}</p>", n=3, x=XSS))]

        def index_sections(self, site: Any, platform: str, envs: Any) -> list[Section]:
            return [Section("usage-chart", "Usage", Markup('<svg width="10" height="10"></svg>'))]

    record(bare, "u-1.0", [pkg("python", "3.11.7")])
    render_catalog(site_of(bare), providers=[Usage()])
    d = bare / CATALOG
    page = (d / "envs" / "u-1.0" / "index.html").read_text()
    assert texts(page, "#usage-panel") == [f"\nUsage of u-1.0\n3 runs {XSS}\n"]
    assert XSS not in page
    assert '<section id="usage-chart" class="extension">' in (d / "index.html").read_text()
    assert "<svg" in (d / "index.html").read_text()


# ----------------------------------------------------------------------------------------------------- incremental


def _assert_same_as_full_render(root: Path) -> None:
    from cpkgs_admin.outputs.catalog import render_catalog

    d = root / CATALOG
    incremental = files_of(d)
    aside = root.parent / "full"
    shutil.rmtree(aside, ignore_errors=True)
    shutil.move(d, aside)
    render_catalog(site_of(root), [PLAT])
    assert files_of(d) == incremental
    shutil.rmtree(aside)


def test_update_rewrites_only_the_changed_pages_and_equals_a_full_render(bare: Path) -> None:
    """After each change an update writes exactly: the changed env's files, its family neighbours' pages (their
    prev/next links and diffs), the index and the search data; and the catalog is then what a full render makes."""
    from cpkgs_admin.outputs.catalog import render_catalog, update_catalog

    for fam in ("a", "b"):
        for v in ("1.0", "2.0", "3.0"):
            record(bare, f"{fam}-{v}", [pkg("lib", v), pkg("python", "3.11.7")])
    site = site_of(bare)
    render_catalog(site)
    d = bare / CATALOG

    def update(name: str) -> set[str]:
        rep = update_catalog(site_of(bare), PLAT, [name])
        assert not rep.damaged
        return {str(Path(p).relative_to(d)) for p in rep.written + rep.removed}

    common = {"index.html", "search.js"}
    # Publish a-4.0: its four files, a-3.0's page (its newer version), the index.
    record(bare, "a-4.0", [pkg("lib", "4.0"), pkg("python", "3.11.7")])
    assert update("a-4.0") == common | {"envs/a-4.0/index.html", "envs/a-4.0/diff.html", "envs/a-4.0/a-4.0.lock",
                                        "envs/a-4.0/a-4.0.yml", "envs/a-3.0/index.html"}
    _assert_same_as_full_render(bare)
    # Retire a-2.0: its page (status), its neighbours' pages (they show its status), the index; not its diff, its
    # exports nor the search data (the same packages).
    rec = json.loads((bare / ".cpkgs/records/linux-64/a-2.0.json").read_text())
    record(bare, "a-2.0", rec["packages"], status="retired",
           retired={"successor": "a-4.0", "message": "old", "at": "x", "by": "admin"})
    assert update("a-2.0") == {"index.html", "envs/a-2.0/index.html", "envs/a-1.0/index.html", "envs/a-3.0/index.html"}
    _assert_same_as_full_render(bare)
    # Remove a-1.0: a-2.0 is now the first usable version (its diff page goes), a-1.0's page says removed.
    rec = json.loads((bare / ".cpkgs/records/linux-64/a-1.0.json").read_text())
    record(bare, "a-1.0", rec["packages"], status="removed", removed={"at": "x", "by": "admin", "trash": "/t"})
    assert update("a-1.0") == {"index.html", "envs/a-1.0/index.html", "envs/a-2.0/index.html", "envs/a-2.0/diff.html"}
    assert not (d / "envs" / "a-2.0" / "diff.html").exists()
    _assert_same_as_full_render(bare)
    # Nothing changed: nothing written.
    assert update("b-2.0") == set()
    # A record changed without a hook (unseal writes its record only): the next update of anything picks it up.
    rec = json.loads((bare / ".cpkgs/records/linux-64/b-1.0.json").read_text())
    record(bare, "b-1.0", rec["packages"], status="unsealed",
           unsealed={"at": "x", "by": "admin", "reason": "fix a file"})
    assert "envs/b-1.0/index.html" in update("a-4.0")
    _assert_same_as_full_render(bare)
    # A record deleted by hand: its pages go, its neighbour's diff now compares with b-1.0.
    (bare / ".cpkgs/records/linux-64/b-2.0.json").unlink()
    changed = update("b-3.0")
    assert {"envs/b-2.0/index.html", "envs/b-2.0/diff.html", "envs/b-3.0/diff.html"} <= changed
    assert not (d / "envs" / "b-2.0").exists()
    _assert_same_as_full_render(bare)


def test_update_without_state_renders_everything(bare: Path) -> None:
    """A catalog without its state (deleted, or written for another root or by other templates) is rendered whole
    by the next update, so it cannot be left half old."""
    from cpkgs_admin.outputs.catalog import render_catalog, update_catalog

    record(bare, "a-1.0", [pkg("lib", "1.0")])
    record(bare, "a-2.0", [pkg("lib", "2.0")])
    render_catalog(site_of(bare))
    d = bare / CATALOG
    page = d / "envs" / "a-1.0" / "index.html"
    page.write_text("stale")
    state = json.loads((d / ".state.json").read_text())
    state["fingerprint"] = "other templates"
    (d / ".state.json").write_text(json.dumps(state))
    update_catalog(site_of(bare), PLAT, ["a-2.0"])
    assert page.read_text() != "stale"
    _assert_same_as_full_render(bare)


def test_damaged_record_keeps_its_pages_and_is_reported(bare: Path) -> None:
    """A record that cannot be read stops only its own pages (and its neighbours' diffs): they stay as they were;
    `cpkgs catalog` reports it after rendering the rest, as `list` does (exit 1); a publish of another env does not
    mention it (list and verify do)."""
    from cpkgs_admin.outputs.catalog import after_change, update_catalog
    from cpkgs_admin.site.records import load_record_file

    record(bare, "a-1.0", [pkg("lib", "1.0")])
    record(bare, "a-2.0", [pkg("lib", "2.0")])
    assert run_cpkgs("catalog", root=bare).returncode == 0
    d = bare / CATALOG
    before = (d / "envs" / "a-1.0" / "index.html").read_text()
    path = bare / ".cpkgs/records/linux-64/a-1.0.json"
    path.write_text("{not json")
    rep = update_catalog(site_of(bare), PLAT, ["a-1.0"])
    assert len(rep.damaged) == 1 and rep.damaged[0][0] == path and "unreadable record" in rep.damaged[0][1]
    assert (d / "envs" / "a-1.0" / "index.html").read_text() == before
    warnings: list[str] = []
    record(bare, "a-3.0", [pkg("lib", "3.0")])
    after_change(site_of(bare), load_record_file(bare / ".cpkgs/records/linux-64/a-3.0.json"), warnings)
    assert warnings == [] and (d / "envs" / "a-3.0" / "index.html").exists()
    r = run_cpkgs("catalog", root=bare)
    assert r.returncode == 1 and r.stdout == f"{d}/index.html\n", r
    assert r.stderr.splitlines()[-1].startswith(f"cpkgs: {path}: unreadable record"), r
    assert (d / "envs" / "a-1.0" / "index.html").read_text() == before


def _writers(log: Path, under: Path) -> set[str]:
    """The pids of an `strace -f -e trace=openat` log that created files UNDER."""
    pids = set()
    for line in log.read_text().splitlines():
        pid, _, call = line.partition(" ")
        if "O_CREAT" in call and f'"{under}/' in call:
            pids.add(pid)
    return pids


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace not installed")
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="worker processes need two CPUs")
def test_full_render_by_worker_processes_is_the_one_process_render(bare: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`cpkgs catalog` on a site big enough renders env pages in worker processes (whole families each), and writes
    exactly what one process writes: also for a family the name-based shares split (a hand-made record whose family
    is not its name's: its pages are made again with every summary) and with a damaged record (reported the same)."""
    from cpkgs_admin.outputs.catalog import render_catalog, workers

    for f in range(12):
        for v in range(1, 7):
            record(bare, f"fam{f:02d}-{v}.0", [pkg("lib", f"{v}.0"), pkg(f"only{f}", "1.0"), pkg("python", "3.11.7")])
    record(bare, "zz-9.0", [pkg("lib", "9.0"), pkg("python", "3.11.7")], family="fam01", version="9.0")
    damaged = bare / ".cpkgs/records/linux-64/fam03-2.0.json"
    damaged.write_text("{not json")
    d = bare / CATALOG
    log = bare.parent / "strace.log"
    cmd = ["strace", "-f", "-qq", "-e", "trace=openat", "-o", str(log),
           sys.executable, "-m", "cpkgs_admin", "--root", str(bare), "catalog"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=cpkgs_env(None), cwd=str(REPO), timeout=300)
    assert r.returncode == 1 and r.stdout == f"{d}/index.html\n", r
    assert r.stderr.splitlines()[-1].startswith(f"cpkgs: {damaged}: unreadable record"), r
    assert len(_writers(log, d / "envs")) >= 2, "env pages were not written by worker processes"
    diff = texts((d / "envs" / "zz-9.0" / "diff.html").read_text(), "h1")
    assert diff and "fam01-6.0" in diff[0], diff
    forked = files_of(d)
    shutil.rmtree(d)
    monkeypatch.setattr(workers, "worker_count", lambda envs: 1)
    rep = render_catalog(site_of(bare), [PLAT])
    assert [p for p, _msg in rep.damaged] == [damaged]
    assert files_of(d) == forked


def test_a_killed_worker_leaves_the_work_to_the_caller() -> None:
    """A worker killed (kill -9, the OOM killer) is not a failure of the render: map_forked says so (None) and the
    caller renders in-process."""
    from cpkgs_admin.outputs.catalog import workers

    def die_on_one(x: int) -> int:
        if x == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return 2 * x

    assert workers.map_forked(die_on_one, [0, 1, 2]) is None
    assert workers.map_forked(lambda x: 2 * x, [0, 1, 2]) == [0, 2, 4]


# ----------------------------------------------------------------------------------------------------- real envs


def _build(root: Path, name: str, *specs: str) -> None:
    r = run_cpkgs("new-env", name, *specs, root=root)
    assert r.returncode == 0, r


@pytest.mark.slow
def test_publish_retire_remove_and_refresh_keep_the_catalog(tmp_path: Path, channel_url: str) -> None:
    root = make_site(tmp_path / "site", channel_url)
    _build(root, "demo-1.0", "python", "cpkgs-test-app", "cpkgs-test-lib 1.1.*", "ipykernel")
    _build(root, "demo-2.0", "python", "cpkgs-test-app", "cpkgs-test-lib 2.0.*")
    _build(root, "tools-1.0", "cpkgs-test-app")
    d = root / CATALOG
    index = (d / "index.html").read_text()
    assert re.findall(r'<tr data-name="([^"]+)"', index) == ["demo-2.0", "demo-1.0", "tools-1.0"]
    page = (d / "envs" / "demo-1.0" / "index.html").read_text()
    usage = "".join(texts(page, "#usage"))
    assert f"source {root}/etc/profile.d/conda.sh\nconda activate demo-1.0" in usage
    assert "module load demo/1.0" in usage and "cpkgs extend demo-1.0" in usage and "cpkgs pack demo-1.0" in usage
    assert "demo-1.0 (user site)" in usage  # ipykernel: the kernels' names
    # The downloads are `cpkgs export`'s two formats.
    for fmt, suffix in (("explicit", "lock"), ("yaml", "yml")):
        r = run_cpkgs("export", "demo-1.0", "--format", fmt, root=root)
        assert (d / "envs" / "demo-1.0" / f"demo-1.0.{suffix}").read_text() == r.stdout
    diff = (d / "envs" / "demo-2.0" / "diff.html").read_text()
    assert "cpkgs-test-lib\tconda\t1.1" in "\n".join(_diff_rows(diff))
    # Modes as for modulefiles: readable by all, written by the owner only (no admin group here).
    for p in [d, *d.rglob("*")]:
        assert p.stat().st_mode & 0o777 == (0o755 if p.is_dir() else 0o644), p

    r = run_cpkgs("retire", "demo-1.0", "--successor", "demo-2.0", "--message", XSS, root=root)
    assert r.returncode == 0 and r.stderr == "", r
    page = (d / "envs" / "demo-1.0" / "index.html").read_text()
    assert texts(page, ".message") == [XSS] and texts(page, ".successor") == ["demo-2.0"]
    r = run_cpkgs("remove", "tools-1.0", root=root)
    assert r.returncode == 0 and r.stderr == "", r
    assert "it can no longer be used" in (d / "envs" / "tools-1.0" / "index.html").read_text()

    r = run_cpkgs("refresh", root=root)  # the updates made what a full render makes
    assert r.returncode == 0 and r.stdout.strip() == "everything is up to date", r
    r = run_cpkgs("catalog", root=root)
    assert r.returncode == 0 and r.stdout == f"{d}/index.html\n", r
    assert "catalog of 3 environments" in r.stderr
    # Damaged pages: refresh rewrites them and says so.
    (d / "envs" / "demo-2.0" / "index.html").write_text("edited")
    (d / "catalog.js").unlink()
    r = run_cpkgs("refresh", root=root)
    assert r.returncode == 0, r
    assert {f"wrote {d}/envs/demo-2.0/index.html", f"wrote {d}/catalog.js"} <= set(r.stdout.splitlines())


@pytest.mark.slow
def test_catalog_failure_after_the_publish_point_is_a_warning(tmp_path: Path, channel_url: str) -> None:
    """The env is published (and retired, removed) whatever happens to its catalog page: a failure there is a
    warning naming the repair, exit 0, and the modulefiles are written."""
    root = make_site(tmp_path / "site", channel_url)
    blocker = root / CATALOG
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a directory")  # even root cannot make a directory here
    for cmd in (("new-env", "w-1.0", "cpkgs-test-app"), ("new-env", "w-2.0", "cpkgs-test-app"),
                ("retire", "w-1.0", "--successor", "w-2.0"), ("remove", "w-1.0")):
        r = run_cpkgs(*cmd, root=root)
        assert r.returncode == 0, (cmd, r)
        assert re.fullmatch(r"cpkgs: warning: w-[12]\.0: the catalog was not updated: .*; run 'cpkgs catalog'\n",
                            r.stderr), (cmd, r.stderr)
    assert (root / "modulefiles" / "w" / "2.0.lua").exists()
    assert run_cpkgs("info", "w-1.0", "--json", root=root).json()["status"] == "removed"
    blocker.unlink()
    r = run_cpkgs("catalog", root=root)
    assert r.returncode == 0, r
    assert re.findall(r'<tr data-name="([^"]+)"', (blocker / "index.html").read_text()) == ["w-2.0", "w-1.0"]


def test_catalog_path_for_users_and_refusal_to_write(bare: Path) -> None:
    """Any user finds the page with `cpkgs catalog --path` (nothing written); rendering needs the admin's rights:
    an ordinary user gets one line, and nothing changes."""
    record(bare, "a-1.0", [pkg("lib", "1.0")])
    r = run_cpkgs("catalog", root=bare)
    assert r.returncode == 0, r
    before = tree_hash(bare)
    r = run_cpkgs("catalog", "--path", root=bare, user=True)
    assert r.returncode == 0 and r.stdout == f"{bare / CATALOG}/index.html\n" and r.stderr == "", r
    r = run_cpkgs("catalog", root=bare, user=True)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r
    assert tree_hash(bare) == before
    r = run_cpkgs("catalog", "--json", root=bare)
    doc = r.json()
    assert doc["index"] == f"{bare / CATALOG}/index.html" and doc["envs"] == 1


def test_admin_group_catalog_is_group_writable(tmp_path: Path) -> None:
    import grp

    root = make_site(tmp_path / "site", None, "--platform", PLAT, "--admin-group", "staff")
    record(root, "a-1.0", [pkg("lib", "1.0")])
    old = os.umask(0o077)  # an admin's umask must not hide the catalog nor keep it from the other admins
    try:
        r = run_cpkgs("catalog", root=root)
    finally:
        os.umask(old)
    assert r.returncode == 0, r
    staff = grp.getgrnam("staff").gr_gid
    d = root / CATALOG
    for p in [d, *d.rglob("*")]:
        st = p.stat()
        assert st.st_gid == staff and st.st_mode & 0o7777 == (0o2775 if p.is_dir() else 0o664), p

