"""Generated channels of many-file packages for the benchmarks, built with py-rattler-build like the test channel
and cached per machine under ~/.cache/cpkgs-bench-bulk/<key> (the key hashes the recipes).

- `bench_new_env.py --bulk N`: how new-env's cost grows with an env's file count. Production envs (ROOT, numpy,
  jupyter, compilers: a few hundred packages) hold tens of thousands of files; the test channel's biggest env has
  about 9,200. PACKAGES noarch packages (`cpkgs-bench-bulk-NN`), each FILES files of text of 1-12 KiB (a .py-like
  size spread) in nested directories: about 20 s to build 20 x 2,000 on a 2-core VM.
- `bench_new_env.py --small N`: the same question for the files real Python envs are mostly made of. SMALL_PACKAGES
  noarch packages (`cpkgs-bench-small-NNN`) of SMALL_FILES files each, laid out like Python packages (a package dir
  with sub-packages of 16 modules and an empty `__init__.py` each) with sizes spread log-uniformly over 64 B-8 KiB
  (median ~720 B; a Python install's .py files: median ~4.5 KiB, a quarter under 1.1 KiB). 110 x 400 = 44,000 files,
  about a minute to build on a 2-core VM.
- `bench_extend.py`: one small and one big package of tiny files (`build_channel` with its own recipes).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import textwrap
from pathlib import Path

_DONE = ".complete"
PACKAGES = 20
FILES = 2000

# The build script of one package: FILES files under $PREFIX/share/cpkgs-bench-bulk/NN/dDD/eE/, sizes 1-12 KiB,
# each file's text different (no two archive members alike), compressible like source code.
_SCRIPT = textwrap.dedent("""\
    import os, sys
    n, idx, prefix = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    base = os.path.join(prefix, "share", "cpkgs-bench-bulk", idx)
    for i in range(n):
        d = os.path.join(base, "d%02d" % (i % 50), "e%d" % (i % 7))
        os.makedirs(d, exist_ok=True)
        size = 1024 + (i * 7919) % (11 * 1024)
        line = ("# bulk %s file %d: the quick brown fox jumps over the lazy dog\\n" % (idx, i)).encode()
        with open(os.path.join(d, "m%05d.py" % i), "wb") as fh:
            fh.write((line * (size // len(line) + 1))[:size])
""")


SMALL_PACKAGES = 110
SMALL_FILES = 400

# One package of SMALL_FILES small "modules": $PREFIX/share/cpkgs-bench-small/pNNN/sSS/mJJ.py, 16 per sub-package
# plus its empty __init__.py; sizes log-uniform over 64 B-8 KiB, each file's text different.
_SMALL_SCRIPT = textwrap.dedent("""\
    import os, sys
    n, idx, prefix = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    base = os.path.join(prefix, "share", "cpkgs-bench-small", "p" + idx)
    i = 0
    while i < n:
        d = os.path.join(base, "s%02d" % (i // 17))
        os.makedirs(d, exist_ok=True)
        open(os.path.join(d, "__init__.py"), "wb").close()
        i += 1
        for j in range(16):
            if i >= n:
                break
            size = int(64 * 2 ** (7 * ((i * 0.6180339887) % 1.0)))
            line = ("# small %s module %d: the quick brown fox jumps over the lazy dog\\n" % (idx, i)).encode()
            with open(os.path.join(d, "m%02d.py" % j), "wb") as fh:
                fh.write((line * (size // len(line) + 1))[:size])
            i += 1
""")


def build_channel(recipes: dict[str, str], extra_files: dict[str, str] | None = None) -> Path:
    """A noarch channel of the packages whose rattler-build recipes RECIPES holds (name -> recipe.yaml text), built
    once per machine; EXTRA_FILES (name -> text) are written next to the recipes first (`@DIR@` in a recipe is
    replaced by their directory). Returns the channel directory (usable as a file:// channel)."""
    from filelock import FileLock

    h = hashlib.sha256(repr((sorted(recipes.items()), sorted((extra_files or {}).items()))).encode())
    root = Path.home() / ".cache" / "cpkgs-bench-bulk"
    final = root / f"channel-{h.hexdigest()[:16]}"
    if (final / _DONE).is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if (final / _DONE).is_file():
            return final
        tmp = Path(tempfile.mkdtemp(prefix="build-", dir=root))
        try:
            channel = _build(tmp, recipes, extra_files or {})
            (channel / _DONE).write_text("")
            shutil.rmtree(final, ignore_errors=True)
            os.rename(channel, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _build(tmp: Path, recipes: dict[str, str], extra_files: dict[str, str]) -> Path:
    import asyncio

    from rattler.index import index_fs
    from rattler_build import Stage0Recipe, ToolConfiguration, VariantConfig

    print(f"bench channel: building {len(recipes)} packages (once per machine) ...", file=sys.stderr, flush=True)
    out = tmp / "out"
    out.mkdir()
    for name, text in extra_files.items():
        (tmp / name).write_text(text)
    os.environ["RATTLER_CACHE_DIR"] = str(tmp / "rattler-cache")
    for name, text in recipes.items():
        recipe_dir = tmp / f"recipe-{name}"
        recipe_dir.mkdir()
        (recipe_dir / "recipe.yaml").write_text(text.replace("@DIR@", str(tmp)))
        Stage0Recipe.from_file(recipe_dir / "recipe.yaml").run_build(
            variant_config=VariantConfig(),
            tool_config=ToolConfiguration(test_strategy="skip"),
            output_dir=out,
            channels=[out.as_uri()],
            package_format="conda",
        )
    channel = tmp / "channel"
    for sub in ("noarch", "linux-64"):
        (channel / sub).mkdir(parents=True)
        for pkg in (out / sub).glob("*.conda"):
            shutil.copy2(pkg, channel / sub / pkg.name)
    asyncio.run(index_fs(channel, write_zst=False, write_shards=False, force=True))
    return channel


def bulk_channel(packages: int = PACKAGES, files: int = FILES) -> Path:
    """The `--bulk` channel: PACKAGES packages of FILES text files each."""
    recipes = {}
    for k in range(packages):
        idx = f"{k:02d}"
        recipes[f"cpkgs-bench-bulk-{idx}"] = textwrap.dedent(f"""\
            schema_version: 1
            package:
              name: cpkgs-bench-bulk-{idx}
              version: "1.0"
            build:
              number: 0
              noarch: generic
              script:
                - {sys.executable} @DIR@/make_files.py {files} {idx} "$PREFIX"
            about:
              summary: cpkgs benchmark - {files} files of text
              license: MIT
            """)
    return build_channel(recipes, {"make_files.py": _SCRIPT})


def bulk_specs(packages: int = PACKAGES) -> list[str]:
    return [f"cpkgs-bench-bulk-{k:02d}" for k in range(packages)]


def small_channel(packages: int = SMALL_PACKAGES, files: int = SMALL_FILES) -> Path:
    """The `--small` channel: PACKAGES packages of FILES small Python-like files each."""
    recipes = {}
    for k in range(packages):
        idx = f"{k:03d}"
        recipes[f"cpkgs-bench-small-{idx}"] = textwrap.dedent(f"""\
            schema_version: 1
            package:
              name: cpkgs-bench-small-{idx}
              version: "1.0"
            build:
              number: 0
              noarch: generic
              script:
                - {sys.executable} @DIR@/make_small.py {files} {idx} "$PREFIX"
            about:
              summary: cpkgs benchmark - {files} small files
              license: MIT
            """)
    return build_channel(recipes, {"make_small.py": _SMALL_SCRIPT})


def small_specs(packages: int = SMALL_PACKAGES) -> list[str]:
    return [f"cpkgs-bench-small-{k:03d}" for k in range(packages)]
