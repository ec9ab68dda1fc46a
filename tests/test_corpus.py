"""The corpus of 55 real environment.yml files (tests/data/envfiles, issue #15) through the real `cpkgs new-env
-f FILE --dry-run`, on a site whose cpkgs.yaml maps every channel the corpus names (and `defaults`) to the local test
channel, and whose `pypi:` section is an air-gapped site's: no index, the test wheelhouse as its only find-links
location, no indexes of the spec files' own (`spec_indexes: false`) and no builds from source (`build_from_source:
false`: it has no git or sdist mirror). What an admin of such a site sees for each file, unedited.

Each file has its expected outcomes in EXPECTED, so a change in either direction fails: the whole file; for a file
with a `pip:` section also its conda part alone (the file without its `pip:` entries) and its pip part alone (the
same `pip:` section on `python` from the test channel, in a copy of the file's directory for its `-r` files):
- "solved": the dry run succeeds (none yet: every file asks for packages the test channel and wheelhouse lack);
- "missing", N: the conda solver is reached and fails on one line naming the N requested packages the channels
  lack (the first 20 of them, then "and K more"), as written in the file;
- "pip-missing", N: the pip resolver is reached and fails on one line naming the N pip requirements no location
  has (the first 20, then "and K more"), as written in the file or its -r file;
- "refused", WHY: one line before any solve, justified (REFUSALS says why, with conda's or pip's own behaviour).
The pipeline's order decides a whole file's class: the spec's own refusals, then its pip lines (read and checked
against the site's pypi rules before any solve), then the channels, the conda solve, the pip resolution.

Shares, printed by test_shares (pytest -s), for 55 files:
  whole files: missing 35 (63.6 %), refused 20 (36.4 %: pip lines 15 — a build from source 6, editable 5, the
               spec's own indexes 3, a path that is not there 1 —, `default` 2, LD_LIBRARY_PATH 2, a channel as a
               dependency 1), solved 0
  conda part of the 35 pip files: missing 31, refused 4 (LD_LIBRARY_PATH 2, `default` 1, a channel as a dependency 1)
  pip part of the 35 pip files: pip-missing 19 (the resolver is reached), refused 16 (a build from source 7,
               editable 5, the spec's own indexes 3, a path that is not there 1)
"""

from __future__ import annotations

import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
import yaml
from pypi_helpers import *  # noqa: F403 (the wheelhouse fixture)
from rattler import MatchSpec

from conftest import REPO, make_site, run_cpkgs

CORPUS = REPO / "tests" / "data" / "envfiles"
FILES = sorted(p.name for p in CORPUS.iterdir() if (p / "environment.yml").is_file())

# Every channel name and URL the corpus's files name (channels: and channel::pkg), each mapped to the test channel.
# `default` (03, 52: a typo for `defaults`) is left to the channel alias, an empty mirror root, as conda leaves it
# to anaconda.org, which has no such channel.
MAPPED = (
    "anaconda", "bioconda", "bodo.ai", "conda-forge", "conda-forge/label/broken", "conda-forge/label/gcc7",
    "defaults", "dglteam", "huggingface", "menpo", "nvidia", "nvidia/label/cuda-11.7.1", "pyg", "pytorch", "rapidsai",
    "sleap", "sleap/label/dev", "usgs-astrogeology", "xformers",
    "https://packages.qiime2.org/qiime2/2024.5/amplicon/released",
)

# Refusals and why each is justified.
REFUSALS = {
    # `-e PATH`/`--editable`, also of a git URL: pip installs a link to a source tree that stays where it is
    # (PEP 660); a sealed env on a shared drive cannot hold it, nor rebuild it from a lock.
    "pip-editable": "an editable install points into a source tree outside the env",
    # git URLs need a build from source, which this air-gapped site does not allow (pypi.build_from_source: false):
    # no git server is reachable, and nothing would pin what it built.
    "pip-build": "needs a build from source, which this site does not allow (cpkgs.yaml pypi.build_from_source: false)",
    # --extra-index-url/--find-links of the spec's own: the site decides where packages come from
    # (pypi.spec_indexes: false), as its channel_map decides for conda.
    "pip-indexes": "this site does not let spec files choose package indexes (cpkgs.yaml pypi.spec_indexes: false)",
    # `submodules/diff-gaussian-rasterization`: pip reads it as a path ("It looks like a path. File ... does not
    # exist") and fails the same way when it is not there.
    "pip-path": "looks like a path, but",
    # conda reads `default` as a channel name under its channel_alias (conda/models/channel.py
    # `_get_channel_for_name`): https://conda.anaconda.org/default, no such channel; conda fails on it too.
    "default": "channel default ({alias}/default) does not exist (no directory {alias_path}/default) (did you mean "
               "'defaults'?)",
    # `- nvidia/label/cuda-11.7.1` as a dependency: conda's MatchSpec refuses the name ("package name contains
    # invalid characters (/)"), and so does conda env create (conda/env/env.py `Dependencies.parse`).
    "channel-as-dep": "invalid match spec 'nvidia/label/cuda-11.7.1': invalid package name",
    # `variables: LD_LIBRARY_PATH: :/depot/...` (16, 17: two shared envs of one analysis facility): set in users'
    # shells it makes every program they run, system ones included, load libraries from there first; 16's leading
    # ':' even means the current directory. conda would set it; cpkgs refuses it (issue #13, item 7).
    "loader-variable": "variables: LD_LIBRARY_PATH makes the dynamic loader load code into every program",
}

# file: (the whole file, its conda part alone, its pip part alone on python) — the last two for pip files only.
Outcome = tuple[str, int | str]
EXPECTED: dict[str, tuple[Outcome, Outcome | None, Outcome | None]] = {
    "01-usgs-isis3": (("missing", 72), None, None),
    "02-usgs-isis3-2020": (("missing", 56), None, None),
    "03-usgs-ale-docs": (("refused", "default"), None, None),
    "04-mintpy-insar-2021": (("refused", "pip-build"), ("missing", 24), ("refused", "pip-build")),
    "05-geopandas-docs": (("missing", 24), ("missing", 24), ("pip-missing", 11)),
    "06-openscapes-corn-hub": (("missing", 99), ("missing", 99), ("pip-missing", 7)),
    "07-so-fronts-ocean": (("refused", "pip-editable"), ("missing", 4), ("refused", "pip-editable")),
    "08-pangeo-notebook": (("missing", 134), None, None),
    "09-pangeo-ml-notebook": (("missing", 7), None, None),
    "10-esmvaltool": (("missing", 103), None, None),
    "11-xarray-ci": (("missing", 56), ("missing", 56), ("pip-missing", 3)),
    "12-xclim": (("missing", 69), None, None),
    "13-mdtf-python3-base": (("refused", "pip-build"), ("missing", 32), ("refused", "pip-build")),
    "14-ncar-cupid-analysis": (("refused", "pip-editable"), ("missing", 56), ("refused", "pip-editable")),
    "15-unidata-python-training": (("missing", 15), None, None),
    "16-purdue-af-python3": (("refused", "loader-variable"), ("refused", "loader-variable"), ("refused", "pip-build")),
    "17-purdue-af-coffea-latest": (("refused", "loader-variable"), ("refused", "loader-variable"), ("pip-missing", 6)),
    "18-cmseft-coffea-export": (("missing", 165), None, None),
    "19-hsf-scikit-hep-tutorial": (("missing", 21), None, None),
    "20-lhcb-analysis-essentials": (("refused", "pip-build"), ("missing", 26), ("refused", "pip-build")),
    "21-root-training": (("missing", 1), None, None),
    "22-hsf-dl-intro-for-hep": (("missing", 13), ("missing", 13), ("pip-missing", 1)),
    "23-nfcore-fastqc": (("missing", 1), None, None),
    "24-nfcore-checkqc": (("missing", 7), ("missing", 7), ("pip-missing", 4)),
    "25-snakemake-siglasso-r": (("missing", 7), None, None),
    "26-qiime2-amplicon-2024.5": (("missing", 726), None, None),
    "27-nextstrain-ncov": (("missing", 4), None, None),
    "28-esmfold": (("refused", "pip-build"), ("missing", 15), ("refused", "pip-build")),
    "29-openfold": (("refused", "pip-build"), ("missing", 27), ("refused", "pip-build")),
    "30-rfdiffusion-se3nv": (("missing", 6), ("missing", 6), ("pip-missing", 2)),
    "31-theislab-sc-tutorial": (("refused", "pip-build"), ("missing", 28), ("refused", "pip-build")),
    "32-deeplabcut": (("missing", 5), ("missing", 5), ("pip-missing", 3)),
    "33-airgapped-torch-gpu-cv": (("missing", 17), ("missing", 17), ("pip-missing", 5)),
    "34-latent-diffusion": (("refused", "pip-editable"), ("missing", 6), ("refused", "pip-editable")),
    "35-instruct-pix2pix": (("refused", "pip-editable"), ("missing", 6), ("refused", "pip-editable")),
    "36-dinov2": (("refused", "pip-indexes"), ("missing", 9), ("refused", "pip-indexes")),
    "37-gaussian-splatting": (("refused", "pip-path"), ("missing", 9), ("refused", "pip-path")),
    "38-sleap-gpu": (("refused", "pip-editable"), ("missing", 32), ("refused", "pip-editable")),
    "39-psp-export-prefix": (("missing", 20), ("missing", 20), ("pip-missing", 8)),
    "40-minigpt4": (("missing", 2), ("missing", 2), ("pip-missing", 22)),
    "41-diffusion-in-the-dark-export": (("missing", 186), None, None),
    "42-difusco-pip-indexes": (("refused", "pip-indexes"), ("missing", 44), ("refused", "pip-indexes")),
    "43-rlhf-poisoning": (("refused", "channel-as-dep"), ("refused", "channel-as-dep"), ("pip-missing", 2)),
    "44-hyperbox-pip-r": (("missing", 4), ("missing", 4), ("pip-missing", 23)),
    "45-yolo-windows-export": (("missing", 9), ("missing", 9), ("pip-missing", 38)),
    "46-bodo-rapids-export": (("missing", 440), None, None),
    "47-bodo-conda-lock-main": (("missing", 36), None, None),
    "48-fairchem-gpu": (("refused", "pip-indexes"), ("missing", 14), ("refused", "pip-indexes")),
    "49-handson-ml2": (("missing", 31), ("missing", 31), ("pip-missing", 13)),
    "50-handson-ml3": (("missing", 26), ("missing", 26), ("pip-missing", 13)),
    "51-nlp-with-transformers": (("missing", 7), ("missing", 7), ("pip-missing", 14)),
    "52-quantecon-lectures": (("refused", "default"), ("refused", "default"), ("pip-missing", 9)),
    "53-dask-tutorial": (("missing", 18), None, None),
    "54-udacity-carnd-term1": (("missing", 17), ("missing", 17), ("pip-missing", 4)),
    "55-repo2docker-frozen": (("missing", 106), None, None),
}

_MISSING = re.compile(r"cpkgs: cannot solve for linux-64: no channel has (?P<named>.*?)(?: and (?P<more>\d+) more)? "
                      r"\(channels: (?P<channels>[^()]*)\)\n\Z")
_PIP_MISSING = re.compile(r"cpkgs: pip: no index has (?P<named>.*?)(?: and (?P<more>\d+) more)? "
                          r"\(indexes: none; find-links: (?P<where>[^()]*)\)\n\Z")


@pytest.fixture(scope="module")
def channel_names(channel_dir: Path) -> set[str]:
    """The package names the test channel holds."""
    import json

    return {r["name"] for rd in channel_dir.glob("*/repodata.json") for key in ("packages", "packages.conda")
            for r in json.loads(rd.read_text()).get(key, {}).values()}


@pytest.fixture(scope="module")
def corpus_site(tmp_path_factory: pytest.TempPathFactory, channel_url: str, wheelhouse: Path) -> tuple[Path, Path]:
    """(site root, the empty mirror root that is its channel alias)."""
    base = tmp_path_factory.mktemp("corpus")
    alias = base / "mirror-root"
    alias.mkdir()
    maps = [a for name in MAPPED for a in ("--channel-map", f"{name}={channel_url}")]
    pypi = ["--pypi-index-url", "none", "--pypi-find-links", str(wheelhouse / "wheels"), "--no-pypi-spec-indexes",
            "--no-pypi-build-from-source"]
    site = make_site(base / "site", None, "-c", "conda-forge", "--channel-alias", str(alias), *maps, *pypi)
    return site, alias


def channels_named(data: dict) -> set[str]:  # type: ignore[type-arg]
    out = {c for c in data.get("channels") or [] if c != "nodefaults"}
    for dep in data.get("dependencies") or []:
        if isinstance(dep, str) and "::" in dep.partition("[")[0]:
            channel = dep.partition("[")[0].rpartition("::")[0].strip()
            out.add(re.sub(r"/(linux-64|noarch)$", "", channel))
    return {re.sub(r"^https://conda\.anaconda\.org/", "", c) for c in out}


def test_table_covers_the_corpus_and_the_map_covers_its_channels() -> None:
    assert sorted(EXPECTED) == FILES and len(FILES) >= 30
    named: set[str] = set()
    for name in FILES:
        named |= channels_named(yaml.safe_load((CORPUS / name / "environment.yml").read_text(encoding="utf-8")))
    assert named - set(MAPPED) == {"default"}


def _named(text: str) -> list[str]:
    return [q.strip("'\"") for q in re.findall(r"'[^']*'|\"[^\"]*\"|[^,\s][^,]*", text)]


def check_outcome(  # type: ignore[no-untyped-def]
    r, expected: Outcome, text: str, alias: Path, held: set[str]
) -> None:
    """R is EXPECTED's outcome; a missing package named is one the test channel (holding HELD) cannot give; a
    missing pip requirement is named as the file (TEXT: it and its -r files) writes it."""
    kind, detail = expected
    if kind == "solved":
        assert r.returncode == 0, r
        return
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r
    if kind == "refused":
        want = REFUSALS[str(detail)].format(alias=alias.as_uri(), alias_path=alias)
        assert want in r.stderr, r.stderr
        return
    m = (_PIP_MISSING if kind == "pip-missing" else _MISSING).match(r.stderr)
    assert m, r.stderr
    named = _named(m.group("named"))
    assert len(named) == min(int(detail), 20) and len(named) + int(m.group("more") or 0) == detail, r.stderr
    assert len(r.stderr) < 3000  # the missing packages only, never the whole request
    for spec in named:  # as the file writes them (modulo conda's [extras] dropped)
        if kind == "pip-missing":
            assert spec in text, spec
            continue
        assert spec.split("[")[0] in text, spec
        ms = MatchSpec(spec.split("[")[0])
        assert ms.name.normalized not in held or ms.version is not None or ms.build is not None, spec


@pytest.mark.parametrize("name", FILES)
def test_corpus_file(corpus_site: tuple[Path, Path], channel_names: set[str], tmp_path: Path, name: str) -> None:
    site, alias = corpus_site
    path = CORPUS / name / "environment.yml"
    text = path.read_text(encoding="utf-8")
    whole, conda_part, pip_part = EXPECTED[name]
    r = run_cpkgs("new-env", "corpus-1.0", "-f", str(path), "--dry-run", root=site)
    check_outcome(r, whole, text, alias, channel_names)
    data = yaml.safe_load(text)
    if conda_part is None:
        assert not any(isinstance(d, dict) for d in data.get("dependencies") or [])
        return
    assert conda_part is not None and pip_part is not None
    conda_only = dict(data, dependencies=[d for d in data["dependencies"] if not isinstance(d, dict)])
    stripped = tmp_path / "conda-part" / "environment.yml"
    stripped.parent.mkdir()
    stripped.write_text(yaml.safe_dump(conda_only, sort_keys=False))
    r = run_cpkgs("new-env", "corpus-1.0", "-f", str(stripped), "--dry-run", root=site)
    check_outcome(r, conda_part, text, alias, channel_names)
    # The pip part alone, on the test channel's python, next to the file's own -r files.
    copy = tmp_path / "pip-part"
    shutil.copytree(CORPUS / name, copy)
    pip_only = {"dependencies": ["python", *[d for d in data["dependencies"] if isinstance(d, dict)]]}
    (copy / "environment.yml").write_text(yaml.safe_dump(pip_only, sort_keys=False))
    texts = text + "".join(f.read_text(encoding="utf-8", errors="replace") for f in copy.glob("*.txt"))
    r = run_cpkgs("new-env", "corpus-1.0", "-f", str(copy / "environment.yml"), "--dry-run", root=site)
    check_outcome(r, pip_part, texts, alias, channel_names)


def test_shares() -> None:
    """The share of each class (pytest -s prints them); pinned so that a change shows here too."""
    def counts(outcomes: list[Outcome]) -> Counter[str]:
        return Counter(k if k != "refused" else f"refused: {d}" for k, d in outcomes)

    whole = counts([w for w, _c, _p in EXPECTED.values()])
    part = counts([c for _w, c, _p in EXPECTED.values() if c])
    pip = counts([p for _w, _c, p in EXPECTED.values() if p])
    n = len(EXPECTED)
    for title, got, total in (("whole files", whole, n), ("conda part of the pip files", part, sum(part.values())),
                              ("pip part of the pip files", pip, sum(pip.values()))):
        print(f"{title}: " + ", ".join(f"{k} {v} ({100 * v / total:.1f} %)" for k, v in sorted(got.items())))
    assert whole == {"missing": 35, "refused: pip-build": 6, "refused: pip-editable": 5, "refused: pip-indexes": 3,
                     "refused: default": 2, "refused: loader-variable": 2, "refused: pip-path": 1,
                     "refused: channel-as-dep": 1}
    assert part == {"missing": 31, "refused: default": 1, "refused: channel-as-dep": 1, "refused: loader-variable": 2}
    assert pip == {"pip-missing": 19, "refused: pip-build": 7, "refused: pip-editable": 5, "refused: pip-indexes": 3,
                   "refused: pip-path": 1}
