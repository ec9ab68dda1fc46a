"""The corpus of 55 real environment.yml files (tests/data/envfiles, issue #15) through the real `cpkgs new-env
-f FILE --dry-run`, on a site whose cpkgs.yaml maps every channel the corpus names (and `defaults`) to the local test
channel: what an admin of an air-gapped site sees for each file, unedited.

Each file has its expected outcome in EXPECTED, so a change in either direction fails:
- "solved": the dry run succeeds (none yet: the test channel holds a python, pip, ipykernel and cpkgs' own test
  packages, while every file asks for something else);
- "missing", N: the solver is reached and fails on one line naming the N requested packages the channels lack
  (the first 20 of them, then "and K more"), as written in the file;
- "refused", WHY: one line before any solve, justified (REFUSALS says why, with conda's own behaviour).

A file with a `pip:` section is refused for now (the PyPI step is not there yet); its conda part alone (the same
file without its `pip:` entries) gets a class of its own in the third column, which is what such a file will meet
once the PyPI step takes the `pip:` lines. Shares, printed by test_shares (pytest -s), for 55 files:
  whole files:  missing 19 (34.5 %), refused 36 (65.5 %: pip 32, LD_LIBRARY_PATH in variables 2, the channel
                `default` 1, a channel as a dependency 1), solved 0
  conda part of the 35 pip files: missing 31, refused 4 (LD_LIBRARY_PATH 2, `default` 1, a channel as a dependency 1)
  so with the PyPI step: 50 of 55 (90.9 %) reach the solver; 5 (9.1 %) are refused: 3 as conda refuses them, 2 for
  a variable that makes every program the users run load the env's libraries first.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
import yaml
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
    # Not yet built: the PyPI step will take the `pip:` lines (Spec.pip); then the file meets its conda part's class.
    "pip": "a 'pip:' section is not supported; build conda packages or use 'cpkgs extend'",
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

# file: (class, N missing or refusal, class of the conda part without `pip:` (pip files only))
EXPECTED: dict[str, tuple[str, int | str, tuple[str, int | str] | None]] = {
    "01-usgs-isis3": ("missing", 72, None),
    "02-usgs-isis3-2020": ("missing", 56, None),
    "03-usgs-ale-docs": ("refused", "default", None),
    "04-mintpy-insar-2021": ("refused", "pip", ("missing", 24)),
    "05-geopandas-docs": ("refused", "pip", ("missing", 24)),
    "06-openscapes-corn-hub": ("refused", "pip", ("missing", 99)),
    "07-so-fronts-ocean": ("refused", "pip", ("missing", 4)),
    "08-pangeo-notebook": ("missing", 134, None),
    "09-pangeo-ml-notebook": ("missing", 7, None),
    "10-esmvaltool": ("missing", 103, None),
    "11-xarray-ci": ("refused", "pip", ("missing", 56)),
    "12-xclim": ("missing", 69, None),
    "13-mdtf-python3-base": ("refused", "pip", ("missing", 32)),
    "14-ncar-cupid-analysis": ("refused", "pip", ("missing", 56)),
    "15-unidata-python-training": ("missing", 15, None),
    "16-purdue-af-python3": ("refused", "loader-variable", ("refused", "loader-variable")),
    "17-purdue-af-coffea-latest": ("refused", "loader-variable", ("refused", "loader-variable")),
    "18-cmseft-coffea-export": ("missing", 165, None),
    "19-hsf-scikit-hep-tutorial": ("missing", 21, None),
    "20-lhcb-analysis-essentials": ("refused", "pip", ("missing", 26)),
    "21-root-training": ("missing", 1, None),
    "22-hsf-dl-intro-for-hep": ("refused", "pip", ("missing", 13)),
    "23-nfcore-fastqc": ("missing", 1, None),
    "24-nfcore-checkqc": ("refused", "pip", ("missing", 7)),
    "25-snakemake-siglasso-r": ("missing", 7, None),
    "26-qiime2-amplicon-2024.5": ("missing", 726, None),
    "27-nextstrain-ncov": ("missing", 4, None),
    "28-esmfold": ("refused", "pip", ("missing", 15)),
    "29-openfold": ("refused", "pip", ("missing", 27)),
    "30-rfdiffusion-se3nv": ("refused", "pip", ("missing", 6)),
    "31-theislab-sc-tutorial": ("refused", "pip", ("missing", 28)),
    "32-deeplabcut": ("refused", "pip", ("missing", 5)),
    "33-airgapped-torch-gpu-cv": ("refused", "pip", ("missing", 17)),
    "34-latent-diffusion": ("refused", "pip", ("missing", 6)),
    "35-instruct-pix2pix": ("refused", "pip", ("missing", 6)),
    "36-dinov2": ("refused", "pip", ("missing", 9)),
    "37-gaussian-splatting": ("refused", "pip", ("missing", 9)),
    "38-sleap-gpu": ("refused", "pip", ("missing", 32)),
    "39-psp-export-prefix": ("refused", "pip", ("missing", 20)),
    "40-minigpt4": ("refused", "pip", ("missing", 2)),
    "41-diffusion-in-the-dark-export": ("missing", 186, None),
    "42-difusco-pip-indexes": ("refused", "pip", ("missing", 44)),
    "43-rlhf-poisoning": ("refused", "channel-as-dep", ("refused", "channel-as-dep")),
    "44-hyperbox-pip-r": ("refused", "pip", ("missing", 4)),
    "45-yolo-windows-export": ("refused", "pip", ("missing", 9)),  # vc, vs2015_runtime, win-64 builds: missing
    "46-bodo-rapids-export": ("missing", 440, None),
    "47-bodo-conda-lock-main": ("missing", 36, None),
    "48-fairchem-gpu": ("refused", "pip", ("missing", 14)),
    "49-handson-ml2": ("refused", "pip", ("missing", 31)),
    "50-handson-ml3": ("refused", "pip", ("missing", 26)),
    "51-nlp-with-transformers": ("refused", "pip", ("missing", 7)),
    "52-quantecon-lectures": ("refused", "pip", ("refused", "default")),
    "53-dask-tutorial": ("missing", 18, None),
    "54-udacity-carnd-term1": ("refused", "pip", ("missing", 17)),
    "55-repo2docker-frozen": ("missing", 106, None),
}

_MISSING = re.compile(r"cpkgs: cannot solve for linux-64: no channel has (?P<named>.*?)(?: and (?P<more>\d+) more)? "
                      r"\(channels: (?P<channels>[^()]*)\)\n\Z")


@pytest.fixture(scope="module")
def channel_names(channel_dir: Path) -> set[str]:
    """The package names the test channel holds."""
    import json

    return {r["name"] for rd in channel_dir.glob("*/repodata.json") for key in ("packages", "packages.conda")
            for r in json.loads(rd.read_text()).get(key, {}).values()}


@pytest.fixture(scope="module")
def corpus_site(tmp_path_factory: pytest.TempPathFactory, channel_url: str) -> tuple[Path, Path]:
    """(site root, the empty mirror root that is its channel alias)."""
    base = tmp_path_factory.mktemp("corpus")
    alias = base / "mirror-root"
    alias.mkdir()
    maps = [a for name in MAPPED for a in ("--channel-map", f"{name}={channel_url}")]
    site = make_site(base / "site", None, "-c", "conda-forge", "--channel-alias", str(alias), *maps)
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


def check_outcome(  # type: ignore[no-untyped-def]
    r, expected: tuple[str, int | str], text: str, alias: Path, held: set[str]
) -> None:
    """R is EXPECTED's outcome; a missing package named is one the test channel (holding HELD) cannot give."""
    kind, detail = expected
    if kind == "solved":
        assert r.returncode == 0, r
        return
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r
    if kind == "refused":
        want = REFUSALS[str(detail)].format(alias=alias.as_uri(), alias_path=alias)
        assert want in r.stderr, r.stderr
        return
    m = _MISSING.match(r.stderr)
    assert m, r.stderr
    named = [q.strip("'\"") for q in re.findall(r"'[^']*'|\"[^\"]*\"|[^,\s][^,]*", m.group("named"))]
    assert len(named) == min(int(detail), 20) and len(named) + int(m.group("more") or 0) == detail, r.stderr
    assert len(r.stderr) < 2000  # the missing packages only, never the whole request
    for spec in named:  # as the file writes them (modulo conda's [extras] dropped)
        assert spec.split("[")[0] in text, spec
        ms = MatchSpec(spec.split("[")[0])
        assert ms.name.normalized not in held or ms.version is not None or ms.build is not None, spec


@pytest.mark.parametrize("name", FILES)
def test_corpus_file(corpus_site: tuple[Path, Path], channel_names: set[str], tmp_path: Path, name: str) -> None:
    site, alias = corpus_site
    path = CORPUS / name / "environment.yml"
    text = path.read_text(encoding="utf-8")
    kind, detail, conda_part = EXPECTED[name]
    r = run_cpkgs("new-env", "corpus-1.0", "-f", str(path), "--dry-run", root=site)
    check_outcome(r, (kind, detail), text, alias, channel_names)
    if conda_part is None:
        assert not any(isinstance(d, dict) for d in yaml.safe_load(text).get("dependencies") or [])
        return
    data = yaml.safe_load(text)
    data["dependencies"] = [d for d in data["dependencies"] if not isinstance(d, dict)]
    stripped = tmp_path / "environment.yml"
    stripped.write_text(yaml.safe_dump(data, sort_keys=False))
    r = run_cpkgs("new-env", "corpus-1.0", "-f", str(stripped), "--dry-run", root=site)
    check_outcome(r, conda_part, text, alias, channel_names)


def test_shares() -> None:
    """The share of each class (pytest -s prints them); pinned so that a change shows here too."""
    whole = Counter(kind if kind != "refused" else f"refused: {detail}" for kind, detail, _ in EXPECTED.values())
    part = Counter(c[0] if c[0] != "refused" else f"refused: {c[1]}" for _, _, c in EXPECTED.values() if c)
    with_pip = Counter(c[0] if c else kind for kind, _, c in EXPECTED.values())
    n = len(EXPECTED)
    for title, counts, total in (("whole files", whole, n), ("conda part of the pip files", part, sum(part.values())),
                                 ("with the PyPI step", with_pip, n)):
        print(f"{title}: " + ", ".join(f"{k} {v} ({100 * v / total:.1f} %)" for k, v in sorted(counts.items())))
    assert whole == {"missing": 19, "refused: pip": 32, "refused: default": 1, "refused: channel-as-dep": 1,
                     "refused: loader-variable": 2}
    assert part == {"missing": 31, "refused: default": 1, "refused: channel-as-dep": 1, "refused: loader-variable": 2}
    assert with_pip == {"missing": 50, "refused": 5}
