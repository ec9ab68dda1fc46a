"""Channel mirrors (issue #15 §3): cpkgs.yaml's channel_map / channel_alias applied to the site's channels, spec
channels, `channel::pkg`, `-c` and lock files, so a user's environment.yml builds unedited on a site without
internet. Real parts: a real HTTP server on 127.0.0.1 serving a channel directory, file:// mirrors, and every
network access outside 127.0.0.1 sent to a closed port (an air-gapped host: a request to the internet fails)."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import make_channel, make_site, run_cpkgs, tree_hash

# A proxy nobody listens on: anything that tries to reach beyond 127.0.0.1 fails at once.
OFFLINE = {
    "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "ALL_PROXY": "http://127.0.0.1:9",
    "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "all_proxy": "http://127.0.0.1:9",
    "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
}


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        pass


@pytest.fixture
def http_mirror(tmp_path: Path, channel_dir: Path) -> Iterator[tuple[str, Path, http.server.ThreadingHTTPServer]]:
    """(base URL, served directory, server): conda-forge/ and nvidia/label/cuda-11.8.0/ copies of the test channel."""
    served = tmp_path / "served"
    make_channel(channel_dir, served / "conda-forge")
    (served / "nvidia" / "label").mkdir(parents=True)
    make_channel(channel_dir, served / "nvidia" / "label" / "cuda-11.8.0", drop=("python", "pip"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", served, server
    finally:
        server.shutdown()
        server.server_close()


def packages(root: Path, name: str) -> list[tuple[str, str, str, str]]:
    r = run_cpkgs("info", name, "--json", root=root)
    assert r.returncode == 0, r
    return sorted((p["name"], p["version"], p["build"], p["sha256"]) for p in r.json()["packages"])


USER_FILE = """\
name: analysis
channels:
  - conda-forge
  - nvidia/label/cuda-11.8.0
  - nodefaults
dependencies:
  - python 3.11.*
  - cpkgs-test-app
  - nvidia/label/cuda-11.8.0::cpkgs-test-textprefix
"""


def test_user_file_builds_unedited_from_mirrors_and_its_lock_rebuilds_elsewhere(
    tmp_path: Path, http_mirror: tuple[str, Path, http.server.ThreadingHTTPServer]
) -> None:
    base, _served, server = http_mirror
    site_a = make_site(tmp_path / "A", None, "-c", "conda-forge", "--channel-map", f"conda-forge={base}/conda-forge",
                       "--channel-map", f"nvidia={base}/nvidia", "--channel-alias", "none")
    f = tmp_path / "environment.yml"
    f.write_text(USER_FILE)
    r = run_cpkgs("new-env", "an-1.0", "-f", str(f), root=site_a, env=OFFLINE)
    assert r.returncode == 0 and r.stderr == "", r

    # The record keeps the names the file used and the URLs read.
    rec = run_cpkgs("info", "an-1.0", "--json", root=site_a).json()
    assert rec["channels"] == ["conda-forge", "nvidia/label/cuda-11.8.0"]
    assert rec["channel_urls"] == {"conda-forge": [f"{base}/conda-forge"],
                                   "nvidia/label/cuda-11.8.0": [f"{base}/nvidia/label/cuda-11.8.0"]}
    by_name = {p["name"]: p for p in rec["packages"]}
    assert by_name["python"]["channel"] == "conda-forge"
    assert by_name["python"]["url"].startswith(f"{base}/conda-forge/linux-64/python-3.11")
    assert by_name["cpkgs-test-textprefix"]["channel"] == "nvidia/label/cuda-11.8.0"
    assert by_name["cpkgs-test-textprefix"]["url"].startswith(f"{base}/nvidia/label/cuda-11.8.0/noarch/")
    info = run_cpkgs("info", "an-1.0", root=site_a).stdout
    assert f"channels   conda-forge={base}/conda-forge nvidia/label/cuda-11.8.0={base}/nvidia" in info
    yml = run_cpkgs("export", "an-1.0", "--format", "yaml", root=site_a).stdout
    assert "channels:\n- conda-forge\n- nvidia/label/cuda-11.8.0\n" in yml
    lock_text = run_cpkgs("export", "an-1.0", "--format", "explicit", root=site_a).stdout
    assert f"# channel: conda-forge {base}/conda-forge\n" in lock_text
    assert f"# channel: nvidia/label/cuda-11.8.0 {base}/nvidia/label/cuda-11.8.0\n" in lock_text
    lock = tmp_path / "an.lock"
    lock.write_text(lock_text)
    mirror = tmp_path / "mirror"
    assert run_cpkgs("mirror", "an-1.0", str(mirror), root=site_a).returncode == 0
    want = packages(site_a, "an-1.0")
    server.shutdown()  # the HTTP mirror is gone: site B has only its own copy

    # Site B: no channels at all, both names mapped to its mirror; the lock's URLs point at A's dead server.
    site_b = make_site(tmp_path / "B", None, "--channel-map", f"conda-forge={mirror}",
                       "--channel-map", f"nvidia/label/cuda-11.8.0={mirror}", "--channel-alias", "none")
    r = run_cpkgs("new-env", "an-1.0", "--lock", str(lock), root=site_b, env=OFFLINE)
    assert r.returncode == 0, r
    assert packages(site_b, "an-1.0") == want
    rec_b = run_cpkgs("info", "an-1.0", "--json", root=site_b).json()
    textprefix = next(p for p in rec_b["packages"] if p["name"] == "cpkgs-test-textprefix")
    assert textprefix["channel"] == "nvidia/label/cuda-11.8.0"
    assert textprefix["url"].startswith(mirror.as_uri() + "/noarch/")
    assert run_cpkgs("verify", "an-1.0", root=site_b).returncode == 0

    # A lock as conda writes it (no channel comments, anaconda.org URLs): the map applies to the URLs' channels.
    conda_lock = tmp_path / "conda.lock"
    conda_lock.write_text("".join(
        line.replace(f"{base}/", "https://conda.anaconda.org/") + "\n"
        for line in lock_text.splitlines() if not line.startswith("# channel:")))
    assert "https://conda.anaconda.org/nvidia/label/cuda-11.8.0/noarch/" in conda_lock.read_text()
    r = run_cpkgs("new-env", "an-2.0", "--lock", str(conda_lock), root=site_b, env=OFFLINE)
    assert r.returncode == 0, r
    assert packages(site_b, "an-2.0") == want
    # Without a mapping for one of its channels, B says which file it cannot find, where it looked.
    partial = make_channel(mirror, tmp_path / "partial", drop=("cpkgs-test-textprefix",))
    r = run_cpkgs("init", "--channel-map", "nvidia/label/cuda-11.8.0=", "--channel-map", f"conda-forge={partial}",
                  root=site_b)
    assert r.returncode == 0, r
    before = tree_hash(site_b)
    r = run_cpkgs("new-env", "an-3.0", "--lock", str(conda_lock), root=site_b, env=OFFLINE)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r
    assert "cpkgs-test-textprefix-1.0" in r.stderr and "is in none of the channels" in r.stderr
    assert tree_hash(site_b) == before


def test_channel_names_in_site_config_cli_and_url_channels(tmp_path: Path, channel_dir: Path) -> None:
    """The site's own `channels:` by name, `-c NAME`, and URL channels of users' files (a URL under anaconda.org
    reads as the name it spells; another URL by a URL entry) all go through the map."""
    mirrors = tmp_path / "mirrors"
    make_channel(channel_dir, mirrors / "conda-forge")
    make_channel(channel_dir, mirrors / "menpo")
    make_channel(channel_dir, mirrors / "qiime2")
    site = make_site(tmp_path / "site", None, "-c", "conda-forge", "--channel-alias", str(mirrors),
                     "--channel-map", f"https://packages.qiime2.org/qiime2={mirrors / 'qiime2'}")
    f = tmp_path / "environment.yml"
    for channel, where in (("https://conda.anaconda.org/menpo", "menpo"),
                           ("https://packages.qiime2.org/qiime2", "qiime2")):
        f.write_text(f"channels: ['{channel}', nodefaults]\ndependencies: [cpkgs-test-app]\n")
        r = run_cpkgs("new-env", "u-1.0", "-f", str(f), "--dry-run", "--json", root=site, env=OFFLINE)
        assert r.returncode == 0, r
        app = next(p for p in r.json()["packages"] if p["name"] == "cpkgs-test-app")
        assert app["url"].startswith((mirrors / where).as_uri() + "/noarch/"), app
        assert app["channel"] == ("menpo" if where == "menpo" else channel)
    r = run_cpkgs("new-env", "u-1.0", "cpkgs-test-app", "-c", "menpo", "--dry-run", "--json", root=site, env=OFFLINE)
    assert r.returncode == 0 and {p["channel"] for p in r.json()["packages"]} == {"menpo"}, r
    before = tree_hash(site)
    r = run_cpkgs("new-env", "u-1.0", "cpkgs-test-app", "-c", "nodefaults", root=site)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r
    assert "-c: 'nodefaults' is not a channel" in r.stderr
    assert tree_hash(site) == before


def test_init_sets_the_channel_map(tmp_path: Path) -> None:
    root = tmp_path / "site"
    cfg = root / "cpkgs.yaml"
    assert run_cpkgs("init", root=root).returncode == 0
    cfg.write_text("# our mirrors live on /srv\n" + cfg.read_text())
    r = run_cpkgs("init", "--channel-map", "conda-forge=/srv/conda-forge", "--channel-map", "defaults=/srv/main",
                  "--channel-map", "defaults=https://repo.internal/pkgs/r", "--channel-alias", "https://repo.internal",
                  "-c", "conda-forge", "-c", "defaults", "-c", "nvidia/label/cuda-11.8.0", root=root)
    assert r.returncode == 0, r
    text = cfg.read_text()
    assert text.startswith("# our mirrors live on /srv\n")
    assert ("channel_map:\n  conda-forge: file:///srv/conda-forge\n  defaults:\n  - file:///srv/main\n"
            "  - https://repo.internal/pkgs/r\nchannel_alias: https://repo.internal\n") in text
    assert "channels:\n- conda-forge\n- defaults\n- nvidia/label/cuda-11.8.0\n" in text
    r = run_cpkgs("init", root=root)
    assert r.returncode == 0 and "nothing changed" in r.stdout
    # NAME= drops an entry; a channel that then means nothing is refused before anything is written.
    before = tree_hash(root)
    r = run_cpkgs("init", "--channel-map", "defaults=", root=root)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r
    assert "key 'channels[1]' channel 'defaults': this site maps no URL to it" in r.stderr
    for args, message in ((("--channel-map", "conda-forge"), "--channel-map 'conda-forge': expected NAME=URL"),
                          (("--channel-map", "x=ftp://h/x"), "key 'channel_map.x' 'ftp://h/x' has unsupported scheme"),
                          (("--channel-alias", "conda-forge"), "key 'channel_alias' 'conda-forge' must be a URL")):
        r = run_cpkgs("init", *args, root=root)
        assert r.returncode in (1, 2) and r.stderr.count("\n") == 1 and message in r.stderr, (args, r)
    assert tree_hash(root) == before
    r = run_cpkgs("init", "--channel-map", "defaults=", "-c", "conda-forge", "--channel-alias", "none", root=root)
    assert r.returncode == 0, r
    assert "channel_map:\n  conda-forge: file:///srv/conda-forge\nchannel_alias: null\n" in cfg.read_text()


BAD_MAPS = [
    ("channel_map: [a]\n", "key 'channel_map' must be dict"),
    ("channel_map: {conda-forge: conda-forge}\n", "key 'channel_map.conda-forge' 'conda-forge' must be a URL"),
    ("channel_map: {conda-forge: []}\n", "key 'channel_map.conda-forge' must name a URL or a list of URLs"),
    ("channel_map: {conda-forge: [file:///a, 5]}\n", "key 'channel_map.conda-forge' 5 must be a non-empty string"),
    ("channel_map: {'has space': file:///a}\n", "key 'channel_map.has space' 'has space' is neither a URL nor"),
    ("channel_map: {nodefaults: file:///a}\n", "key 'channel_map.nodefaults' 'nodefaults' is not a channel"),
    ("channel_map: {x: 'file://relative'}\n", "key 'channel_map.x' 'file://relative' is a file:// URL without"),
    ("channel_map: {'https://a.org/x': [file:///a, file:///b]}\n", "key 'channel_map.https://a.org/x' maps a URL to "
                                                                 "one URL only"),
    ("channel_alias: 5\n", "key 'channel_alias' must be str or null"),
    ("channel_alias: ftp://x\n", "key 'channel_alias' 'ftp://x' has unsupported scheme"),
    ("channels: [defaults]\n", "key 'channels[0]' channel 'defaults': this site maps no URL to it"),
    ("channels: [nodefaults]\n", "key 'channels[0]' 'nodefaults' is not a channel"),
    ("channel_alias: null\nchannels: [bioconda]\n", "key 'channels[0]' channel 'bioconda' is not in cpkgs.yaml's "
                                                    "channel_map and the site has no channel_alias"),
]


@pytest.mark.parametrize("text,message", BAD_MAPS)
def test_bad_channel_map_is_one_line_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    root = tmp_path / "x"
    assert run_cpkgs("init", root=root).returncode == 0
    (root / "cpkgs.yaml").write_text(text)
    before = tree_hash(root)
    for args in (("list",), ("init",), ("new-env", "x-1.0", "python", "--dry-run")):
        r = run_cpkgs(*args, root=root)
        assert r.returncode == 1 and r.stderr.count("\n") == 1, (args, r)
        assert "cpkgs.yaml" in r.stderr and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert tree_hash(root) == before
