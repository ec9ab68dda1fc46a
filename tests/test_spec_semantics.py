"""environment.yml read as `conda env create` (conda 26.7.1) reads it (issue #15 §2), on a site that maps channel
names to local mirrors (§3). Every build runs the real CLI against real local channels."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import ENVS, make_channel, make_site, run_cpkgs, tree_hash
from cpkgs_admin.site.specs import from_environment_file


@pytest.fixture(scope="module")
def mirrors(tmp_path_factory: pytest.TempPathFactory, channel_dir: Path) -> Path:
    """A mirror root as an air-gapped site keeps one: conda-forge (the whole test channel), partial (no
    cpkgs-test-activate), nvidia/label/cuda-11.8.0 and bioconda (whole copies)."""
    root = tmp_path_factory.mktemp("mirrors")
    make_channel(channel_dir, root / "conda-forge")
    make_channel(channel_dir, root / "partial", drop=("cpkgs-test-activate",))
    (root / "nvidia" / "label").mkdir(parents=True)
    make_channel(channel_dir, root / "nvidia" / "label" / "cuda-11.8.0")
    make_channel(channel_dir, root / "bioconda")
    return root


def mapped_site(root: Path, mirrors: Path, *extra: str) -> Path:
    """A site whose channels are named, each mapped to a mirror: users' files build unedited."""
    return make_site(root, None, "-c", "conda-forge", "--channel-map", f"conda-forge={mirrors / 'conda-forge'}",
                     "--channel-map", f"partial={mirrors / 'partial'}", "--channel-map", f"nvidia={mirrors / 'nvidia'}",
                     *extra)


def dry_run(site: Path, tmp_path: Path, text: str, *extra: str):  # type: ignore[no-untyped-def]
    f = tmp_path / "environment.yml"
    f.write_bytes(text.encode())
    return run_cpkgs("new-env", "x-1.0", "-f", str(f), "--dry-run", "--json", *extra, root=site)


def packages(r) -> dict[str, dict[str, str]]:  # type: ignore[no-untyped-def]
    assert r.returncode == 0, r
    return {p["name"]: p for p in r.json()["packages"]}


def test_unknown_keys_and_path_are_warned_about_and_ignored(tmp_path: Path, mirrors: Path) -> None:
    """conda-lock's `category`/`platforms` and `variables: PATH`: warnings, as conda env create gives them; the
    env is built with its other variables. (Before: both refused.)"""
    site = mapped_site(tmp_path / "site", mirrors)
    f = tmp_path / "environment.yml"
    f.write_text("category: main\nplatforms: [linux-64]\nchannels: [conda-forge]\ndependencies: [cpkgs-test-app]\n"
                 "variables:\n  PATH: /depot/bin:/usr/bin\n  LHAPDF: /depot/lhapdf\n")
    r = run_cpkgs("new-env", "k-1.0", "-f", str(f), root=site)
    assert r.returncode == 0, r
    warnings = r.stderr.splitlines()
    assert len(warnings) == 3, r.stderr
    assert f"cpkgs: warning: spec file {f}: key 'category' is not an environment.yml key; ignored" in warnings[0]
    assert "key 'platforms'" in warnings[1] and "variables" in warnings[1]  # the keys it knows, variables too
    assert warnings[2] == f"cpkgs: warning: spec file {f}: variables: PATH is reserved; ignored, as conda does"
    rec = run_cpkgs("info", "k-1.0", "--json", root=site).json()
    assert rec["variables"] == {"LHAPDF": "/depot/lhapdf"}
    script = site / ENVS / "k-1.0/etc/conda/activate.d/00-cpkgs-variables.sh"
    assert "PATH" not in script.read_text() and "LHAPDF" in script.read_text()


def test_nodefaults_drops_the_sites_channels(tmp_path: Path, mirrors: Path) -> None:
    """`nodefaults` is an instruction, never a channel: the site's channels (conda's configured channels) are left
    out. Without it they follow the file's channels, as in conda. (Before: a channel named nodefaults was read.)"""
    site = mapped_site(tmp_path / "site", mirrors)
    both = dry_run(site, tmp_path, "channels: [partial]\ndependencies: [cpkgs-test-activate, cpkgs-test-app]\n")
    got = packages(both)
    assert got["cpkgs-test-app"]["channel"] == "partial" and got["cpkgs-test-activate"]["channel"] == "conda-forge"
    assert got["cpkgs-test-app"]["url"].startswith((mirrors / "partial").as_uri() + "/")
    before = tree_hash(site)
    r = dry_run(site, tmp_path, "channels: [partial, nodefaults]\ndependencies: [cpkgs-test-activate, cpkgs-test-app]\n")
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r
    assert r.stderr == "cpkgs: cannot solve for linux-64: no channel has cpkgs-test-activate (channels: partial)\n"
    assert tree_hash(site) == before


def test_defaults_is_the_sites_mapping_or_one_line(tmp_path: Path, mirrors: Path) -> None:
    """`defaults` means what cpkgs.yaml maps it to; a site without a mapping says so in one line."""
    site = mapped_site(tmp_path / "site", mirrors)
    text = "channels: [defaults, nodefaults]\ndependencies: [cpkgs-test-app]\n"
    before = tree_hash(site)
    r = dry_run(site, tmp_path, text)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r
    assert f"spec file {tmp_path / 'environment.yml'}: channel 'defaults': this site maps no URL to it" in r.stderr
    assert "channel_map.defaults" in r.stderr
    assert tree_hash(site) == before
    # A multichannel, as conda's defaults (pkgs/main + pkgs/r): both mirrors are read.
    assert run_cpkgs("init", "--channel-map", f"defaults={mirrors / 'partial'}", "--channel-map",
                     f"defaults={mirrors / 'bioconda'}", root=site).returncode == 0
    got = packages(dry_run(site, tmp_path, "channels: [defaults, nodefaults]\n"
                                           "dependencies: [cpkgs-test-app, cpkgs-test-activate]\n"))
    assert {p["channel"] for p in got.values()} == {"defaults"}
    assert got["cpkgs-test-app"]["url"].startswith((mirrors / "partial").as_uri())
    assert got["cpkgs-test-activate"]["url"].startswith((mirrors / "bioconda").as_uri())


def test_default_typo_is_a_channel_that_does_not_exist(tmp_path: Path, mirrors: Path) -> None:
    """conda reads `default` as a channel name under the channel alias, which has no such channel."""
    site = mapped_site(tmp_path / "site", mirrors, "--channel-alias", str(mirrors))
    r = dry_run(site, tmp_path, "channels: [conda-forge, default]\ndependencies: [cpkgs-test-app]\n")
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r
    assert f"channel default ({(mirrors / 'default').as_uri()}) does not exist" in r.stderr
    assert "(did you mean 'defaults'?)" in r.stderr


def test_channel_pkg_adds_its_mapped_channel(tmp_path: Path, mirrors: Path) -> None:
    """`channel::pkg` puts that channel into the solve (after the others, as conda's solver does) and takes the
    package from it only; the channel name is mapped like any other (here: through the channel alias)."""
    site = mapped_site(tmp_path / "site", mirrors, "--channel-alias", str(mirrors))
    got = packages(dry_run(site, tmp_path, "channels: [partial, nodefaults]\n"
                                           "dependencies: [bioconda::cpkgs-test-app, cpkgs-test-lib]\n"))
    assert got["cpkgs-test-app"]["channel"] == "bioconda"
    assert got["cpkgs-test-app"]["url"].startswith((mirrors / "bioconda").as_uri() + "/noarch/")
    assert got["cpkgs-test-lib"]["channel"] == "partial"  # the file's channel comes first
    # A subdir in the channel part (bodo.ai/linux-64::pyarrow) and a label channel (sleap/label/dev::tensorflow).
    got = packages(dry_run(site, tmp_path, "channels: [partial, nodefaults]\ndependencies:\n"
                                           "  - bioconda/linux-64::python\n"
                                           "  - nvidia/label/cuda-11.8.0::cpkgs-test-activate\n"))
    assert got["python"]["url"].startswith((mirrors / "bioconda/linux-64").as_uri())
    assert got["cpkgs-test-activate"]["channel"] == "nvidia/label/cuda-11.8.0"
    assert got["cpkgs-test-activate"]["url"].startswith((mirrors / "nvidia/label/cuda-11.8.0").as_uri())


def test_label_channel_is_a_channel_name_under_its_owner(tmp_path: Path, mirrors: Path) -> None:
    """`nvidia/label/cuda-11.8.0` lives under the mapping of `nvidia` (conda's custom_channels), without an entry
    of its own."""
    site = mapped_site(tmp_path / "site", mirrors)
    got = packages(dry_run(site, tmp_path, "channels:\n  - nvidia/label/cuda-11.8.0\n  - nodefaults\n"
                                           "dependencies: [cpkgs-test-app]\n"))
    assert got["cpkgs-test-app"]["channel"] == "nvidia/label/cuda-11.8.0"
    assert got["cpkgs-test-app"]["url"].startswith((mirrors / "nvidia/label/cuda-11.8.0/noarch").as_uri())


@pytest.mark.parametrize("spec,name,version", [
    ("cpkgs-test-lib[complete]", "cpkgs-test-lib", "2.0"),  # conda drops a bracket without key=value
    ("python = 3.11", "python", "3.11.7"),  # spaces around =
    ("python>=3.8*", "python", "3.11.7"),  # a range and a glob: conda takes it
    ("python ~=3.11.0", "python", "3.11.7"),  # compatible release
    ("cpkgs-test-lib >=1.0, <2", "cpkgs-test-lib", "1.1"),  # comma and space
    ("cpkgs-test-lib <2.0=h*", "cpkgs-test-lib", "1.1"),  # version then a build glob (mpich <4.2=h*)
    ("cpkgs-test-lib >=1.0,<1.1.0a0=h0*", "cpkgs-test-lib", "1.0"),  # hdf5 >=1.14.3,<1.14.4.0a0=mpi_mpich_*
    ("cpkgs-test-lib =*=*3cc86e5*", "cpkgs-test-lib", "1.1"),  # pytorch-mutex =*=*cuda*
    ("cpkgs-test-lib[version='>=1.1,<2']", "cpkgs-test-lib", "1.1"),  # key=value brackets stay
])
def test_specs_conda_takes(tmp_path: Path, mirrors: Path, spec: str, name: str, version: str) -> None:
    site = mapped_site(tmp_path / "site", mirrors)
    r = dry_run(site, tmp_path, f"channels: [conda-forge]\ndependencies:\n  - {spec}\n")
    assert packages(r)[name]["version"] == version
    if "[complete]" in spec:
        assert "conda ignores [complete] (no key=value in it); requested as cpkgs-test-lib" in r.stderr, r
    else:
        assert r.stderr == "", r


@pytest.mark.parametrize("spec,message", [
    # conda: "Invalid version '2.0<=3.0': invalid character(s)"; rattler alone read `<=2.0` as a build string.
    ("cpkgs-test-lib>=1.0<=2.0", "'<=2.0' is neither a version nor a build string (conda refuses it; join version "
                                 "constraints with ','"),
    ("nvidia/label/cuda-11.7.1", "is not a valid package name. Package names can only contain 0-9, a-z, A-Z, -, _, "
                                 "or . (a channel? list it under 'channels:')"),
    ("cpkgs-test-lib[channel=conda-forge]", "give its channel as CHANNEL::cpkgs-test-lib"),
])
def test_specs_conda_refuses_are_one_line(tmp_path: Path, mirrors: Path, spec: str, message: str) -> None:
    site = mapped_site(tmp_path / "site", mirrors)
    before = tree_hash(site)
    r = dry_run(site, tmp_path, f"channels: [conda-forge]\ndependencies:\n  - python\n  - {spec}\n")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r
    assert "environment.yml: dependencies[1]: " in r.stderr and message in r.stderr, r
    assert tree_hash(site) == before


def test_unsatisfiable_names_every_missing_package(tmp_path: Path, mirrors: Path) -> None:
    """One line naming the requested packages no channel has (the first 20, then how many more), not the whole
    request. (Before: all specs repeated, and only the first missing one named.)"""
    site = mapped_site(tmp_path / "site", mirrors)
    missing = [f"pkg{i:02d} >=1.{i}" for i in range(25)]
    deps = ["python 3.11.*", "cpkgs-test-app", *missing[:10], "vc=14.40=haa95532_2", *missing[10:], "python <3"]
    before = tree_hash(site)
    r = dry_run(site, tmp_path, "channels: [conda-forge]\ndependencies:\n" + "".join(f"  - {d}\n" for d in deps))
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r
    named = [f"'{m}'" for m in missing[:10]] + ["vc=14.40=haa95532_2"] + [f"'{m}'" for m in missing[10:19]]
    assert r.stderr == (f"cpkgs: cannot solve for linux-64: no channel has {', '.join(named)} and 7 more "
                        "(channels: conda-forge)\n")
    assert tree_hash(site) == before
    # All there, but not together: the solver's reason, without the request repeated.
    r = dry_run(site, tmp_path, "dependencies: [cpkgs-test-app, 'cpkgs-test-lib 1.0.*']\n")
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r
    assert r.stderr.startswith("cpkgs: cannot solve the 2 requested packages for linux-64: ") and "mid" in r.stderr


def test_text_forms_of_real_files(tmp_path: Path, mirrors: Path) -> None:
    """CRLF line endings, no final newline, a leading `---`, non-ASCII comments, `name:` last, the same package
    twice (conda merges the specs: both constraints hold), conda packages after the `pip:` block (parsed)."""
    site = mapped_site(tmp_path / "site", mirrors)
    text = ("---\r\n# © the authors\r\nchannels:\r\n  - conda-forge\r\ndependencies:\r\n  - cpkgs-test-lib >=1.0\r\n"
            "  - python\r\n  - cpkgs-test-lib <2\r\nprefix: /opt/conda/envs/x\r\nname: x")
    got = packages(dry_run(site, tmp_path, text))
    assert got["cpkgs-test-lib"]["version"] == "1.1"


def test_pip_section_reaches_the_spec_and_is_checked_before_the_solve(tmp_path: Path, mirrors: Path) -> None:
    """The `pip:` list reaches the Spec (lines as written, and the file's directory for `-r FILE`) for the pip step,
    which reads it before any solve: a `-r` file that is not there is one line, nothing changed."""
    site = mapped_site(tmp_path / "site", mirrors)
    f = tmp_path / "sub" / "environment.yml"
    f.parent.mkdir()
    f.write_text("dependencies:\n  - python\n  - pip:\n      - requests==2.32.3\n      - -r requirements.txt\n"
                 "      - --extra-index-url https://example.invalid/simple\n  - cpkgs-test-app\n  - pip: null\n")
    spec = from_environment_file(f)
    assert spec.specs == ("python", "cpkgs-test-app")
    assert spec.pip == ("requests==2.32.3", "-r requirements.txt", "--extra-index-url https://example.invalid/simple")
    assert spec.pip_dir == str(f.parent.resolve())
    before = tree_hash(site)
    r = run_cpkgs("new-env", "p-1.0", "-f", str(f), root=site)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r
    assert r.stderr.startswith("cpkgs: pip: ") and str(f.parent / "requirements.txt") in r.stderr, r
    assert tree_hash(site) == before
    f.write_text("dependencies:\n  - python\n  - pip: [1, 2]\n")
    r = run_cpkgs("new-env", "p-1.0", "-f", str(f), root=site)
    assert r.returncode == 1 and "dependencies[1]: 'pip' must be a list of requirement lines" in r.stderr, r


def test_family_spec_carries_pip_lines_through_extends(tmp_path: Path) -> None:
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "base.yml").write_text("dependencies: [python, {pip: [numpy]}]\n")
    (specs / "ml.yml").write_text("extends: base\ndependencies: [cpkgs-test-app, {pip: [-r reqs.txt]}]\n")
    from cpkgs_admin.site.specs import from_family

    spec = from_family(specs, "ml")
    assert spec.pip == ("numpy", "-r reqs.txt") and spec.pip_dir == str(specs.resolve())
    assert spec.specs == ("python", "cpkgs-test-app")


def test_selectors_are_comments_with_a_warning(tmp_path: Path, mirrors: Path) -> None:
    """conda-lock's `# [linux64]` selectors are YAML comments to conda env create: every line is requested."""
    site = mapped_site(tmp_path / "site", mirrors)
    r = dry_run(site, tmp_path, "channels: [conda-forge]\ndependencies:\n  - cpkgs-test-app  #[osx]\n")
    assert "cpkgs-test-app" in packages(r)
    assert "line 3: '#[osx]' is a conda-lock platform selector" in r.stderr, r
