"""A channel of many-file packages for `bench_new_env.py --bulk`: how new-env's cost grows with an env's file count.

Production envs (ROOT, numpy, jupyter, compilers: a few hundred packages) hold tens of thousands of files; the test
channel's biggest env has about 9,200. PACKAGES noarch packages (`cpkgs-bench-bulk-NN`), each FILES files of text
of 1-12 KiB (a .py-like size spread) in nested directories, built with py-rattler-build like the test channel and
cached per machine under ~/.cache/cpkgs-bench-bulk/channel-<key> (the key hashes this file and the two numbers).
Built once; about a minute for 20 x 2,000 files on a 2-core VM.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import textwrap
from pathlib import Path

HERE = Path(__file__).resolve()
_DONE = ".complete"
PACKAGES = 20
FILES = 2000

# The build script of one package: FILES files under $PREFIX/share/cpkgs-bench-bulk/NN/dDD/, sizes 1-12 KiB, each
# file's text different (no two archives members alike), compressible like source code.
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


def _key(packages: int, files: int) -> str:
    h = hashlib.sha256(HERE.read_bytes())
    h.update(f"{packages}/{files}/{sys.version_info[:2]}".encode())
    return h.hexdigest()[:16]


def bulk_channel(packages: int = PACKAGES, files: int = FILES) -> Path:
    """The channel directory (file:// usable), built on first use."""
    from filelock import FileLock

    root = Path.home() / ".cache" / "cpkgs-bench-bulk"
    final = root / f"channel-{_key(packages, files)}"
    if (final / _DONE).is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if (final / _DONE).is_file():
            return final
        tmp = Path(tempfile.mkdtemp(prefix="build-", dir=root))
        try:
            channel = _build(tmp, packages, files)
            (channel / _DONE).write_text("")
            shutil.rmtree(final, ignore_errors=True)
            os.rename(channel, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _build(tmp: Path, packages: int, files: int) -> Path:
    import asyncio

    from rattler.index import index_fs
    from rattler_build import Stage0Recipe, ToolConfiguration, VariantConfig

    print(f"bulk channel: building {packages} packages x {files} files (once per machine) ...", file=sys.stderr,
          flush=True)
    out = tmp / "out"
    out.mkdir()
    (tmp / "make_files.py").write_text(_SCRIPT)
    os.environ["RATTLER_CACHE_DIR"] = str(tmp / "rattler-cache")
    for k in range(packages):
        idx = f"{k:02d}"
        recipe_dir = tmp / f"recipe-{idx}"
        recipe_dir.mkdir()
        (recipe_dir / "recipe.yaml").write_text(textwrap.dedent(f"""\
            schema_version: 1
            package:
              name: cpkgs-bench-bulk-{idx}
              version: "1.0"
            build:
              number: 0
              noarch: generic
              script:
                - {sys.executable} {tmp / "make_files.py"} {files} {idx} "$PREFIX"
            about:
              summary: cpkgs benchmark - {files} files of text
              license: MIT
            """))
        Stage0Recipe.from_file(recipe_dir / "recipe.yaml").run_build(
            variant_config=VariantConfig(),
            tool_config=ToolConfiguration(test_strategy="skip"),
            output_dir=out,
            channels=[out.as_uri()],
            package_format="conda",
        )
    channel = tmp / "channel"
    (channel / "noarch").mkdir(parents=True)
    (channel / "linux-64").mkdir()
    for pkg in (out / "noarch").glob("*.conda"):
        shutil.copy2(pkg, channel / "noarch" / pkg.name)
    asyncio.run(index_fs(channel, write_zst=False, write_shards=False, force=True))
    return channel


def bulk_specs(packages: int = PACKAGES) -> list[str]:
    return [f"cpkgs-bench-bulk-{k:02d}" for k in range(packages)]
