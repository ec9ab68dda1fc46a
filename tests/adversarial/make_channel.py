"""A small channel of packages no site should publish, and of packages that hurt a build on purpose.

Kept apart from the main test channel (tests/channel), whose cache key hashes every recipe there: built afresh
into a directory the caller gives (a session's temporary dir; about a second). Recipes in ``recipes/`` are built
with py-rattler-build like the main channel's. What rattler-build refuses to produce (a file under conda-meta/, an
absolute path, a path climbing out with '..', a file under a directory symlink, a file list that lies about sizes)
is written by hand below as a real ``.tar.bz2`` package (a bzip2 tar with ``info/index.json`` and
``info/paths.json``, the format conda and rattler read), and the channel is indexed with rattler's own indexer.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
RECIPES_DIR = HERE / "recipes"
# Where the symlinks of evil-abs-symlink, evil-rel-symlink and evil-under-symlink point: a world-writable
# directory (tests create it 1777, as /tmp is).
WORLD_WRITABLE = "/tmp/cpkgs-test-world-writable"
SUBDIRS = ("linux-64", "noarch")


def _member(tf: tarfile.TarFile, name: str, data: bytes = b"", *, link: str | None = None) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = 0
    if link is not None:
        info.type = tarfile.SYMTYPE
        info.linkname = link
        info.mode = 0o777
        tf.addfile(info)
        return
    info.size = len(data)
    info.mode = 0o644
    tf.addfile(info, io.BytesIO(data))


def _hand_made(channel: Path, name: str, entries: list[tuple[str, bytes | str, int | None]]) -> None:
    """A noarch .tar.bz2 package NAME-1.0-0 holding ENTRIES: (path, content bytes or a symlink's target as str,
    the size paths.json states or None for the true one). The tar member has the path as given."""
    index = {"name": name, "version": "1.0", "build": "0", "build_number": 0, "depends": [], "subdir": "noarch",
             "noarch": "generic", "license": "MIT", "timestamp": 0}
    paths = []
    for path, content, size in entries:
        if isinstance(content, str):
            paths.append({"_path": path, "path_type": "softlink", "size_in_bytes": 0})
        else:
            paths.append({"_path": path, "path_type": "hardlink", "sha256": hashlib.sha256(content).hexdigest(),
                          "size_in_bytes": len(content) if size is None else size})
    target = channel / "noarch" / f"{name}-1.0-0.tar.bz2"
    with tarfile.open(target, "w:bz2") as tf:
        for path, content, _size in entries:
            if isinstance(content, str):
                _member(tf, path, link=content)
            else:
                _member(tf, path, content)
        _member(tf, "info/index.json", json.dumps(index).encode())
        _member(tf, "info/paths.json", json.dumps({"paths": paths, "paths_version": 1}).encode())
        _member(tf, "info/files", "".join(p + "\n" for p, _c, _s in entries).encode())


def _hand_made_packages(channel: Path) -> None:
    _hand_made(channel, "evil-meta", [("conda-meta/cpkgs/layer", b"/tmp/cpkgs-test-world-writable/base\n", None)])
    _hand_made(channel, "evil-abs-path", [("/tmp/cpkgs-test-abs-path-evil", b"owned\n", None)])
    _hand_made(channel, "evil-dotdot", [("share/../../cpkgs-test-dotdot-evil", b"owned\n", None)])
    _hand_made(channel, "evil-under-symlink", [("share/evil", WORLD_WRITABLE, None),
                                               ("share/evil/planted", b"owned\n", None)])
    # Two packages shipping one path: rattler keeps one (the later in its order) and moves the other under
    # __clobbers__/, rewriting both packages' records after every package was linked.
    _hand_made(channel, "cpkgs-test-clobber-a", [("share/clobber/same.txt", b"from a\n", None),
                                                 ("share/clobber/a.txt", b"a\n", None)])
    _hand_made(channel, "cpkgs-test-clobber-b", [("share/clobber/same.txt", b"from b, longer\n", None),
                                                 ("share/clobber/b.txt", b"b\n", None)])
    # Says 16 bytes; unpacks to 20 MiB (bzip2 makes that about 50 bytes): passes any estimate from its metadata.
    _hand_made(channel, "cpkgs-test-liar", [("share/liar/zeros", bytes(20 << 20), 16)])


def _built_packages(out: Path) -> None:
    from rattler_build import RenderConfig, Stage0Recipe, ToolConfiguration, VariantConfig

    for recipe_dir in sorted(p for p in RECIPES_DIR.iterdir() if (p / "recipe.yaml").is_file()):
        recipe = Stage0Recipe.from_file(recipe_dir / "recipe.yaml")
        recipe.run_build(
            variant_config=VariantConfig(),
            tool_config=ToolConfiguration(test_strategy="skip"),
            output_dir=out,
            channels=[out.as_uri()],
            package_format="conda",
            render_config=RenderConfig(),
        )


def build_adversarial_channel(dest: Path) -> Path:
    """Build the channel into DEST (a new directory); returns it."""
    from rattler.index import index_fs

    channel = dest / "channel"
    for subdir in SUBDIRS:
        (channel / subdir).mkdir(parents=True)
    out = dest / "rattler-build-out"
    out.mkdir()
    _built_packages(out)
    for subdir in SUBDIRS:
        for pkg in (out / subdir).glob("*.conda"):
            shutil.copy2(pkg, channel / subdir / pkg.name)
    _hand_made_packages(channel)
    for pkg in channel.glob("*/*.*"):
        pkg.chmod(0o644)
    asyncio.run(index_fs(channel, write_zst=False, write_shards=False, force=True))
    return channel
