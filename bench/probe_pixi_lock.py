"""Probe (not a benchmark): can py-rattler 0.28 write a pixi.lock that carries the pip part, for a later
`cpkgs export --format pixi-lock`?

It builds a lock with one conda package of the test channel and two PyPI packages (a wheel by URL with its sha256
in the fragment, a git commit), writes it with LockFile.to_path, reads it back and prints what survived.

Finding (py-rattler 0.28.0): `LockFile.add_pypi_package(env, platform, name, version, location)` takes no hash,
no requires_dist, no requires_python and there is no way to set the environment's pypi indexes; the file it writes
is lock format version 7 (not 6) and its pypi entries hold only name, version and location. Read back,
PypiLockedPackage.hashes is empty and requires_dist [] (a sha256 put in the URL fragment stays only as part of
the location string). pixi checks requires_dist against the manifest and verifies wheel hashes, so such a lock
would not be taken as is: an export must write the pypi entries itself (or wait for py-rattler to take them).

Run: .venv/bin/python bench/probe_pixi_lock.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C


def main() -> None:
    import asyncio

    from rattler import LockChannel, LockFile, LockPlatform

    from cpkgs_admin.pipeline.solve import make_gateway

    channel = C.channel_dir()
    from rattler import Channel, MatchSpec

    async def query() -> list[object]:
        return await make_gateway(None).query([Channel(channel.as_uri())], ["linux-64", "noarch"],
                                              [MatchSpec("pip")], recursive=False)

    record = next(r for per in asyncio.run(query()) for r in per)
    plat = LockPlatform("linux-64")
    lock = LockFile([plat])
    lock.set_channels("default", [LockChannel(channel.as_uri())])
    lock.add_conda_package("default", plat, record)
    sha = "33bd4ef74232fb73fe9279a257718407f169c09b78a87ad3d296f548e27de0bb"
    lock.add_pypi_package("default", plat, "rich", "15.0.0",
                          f"https://files.pythonhosted.org/packages/rich-15.0.0-py3-none-any.whl#sha256={sha}")
    lock.add_pypi_package("default", plat, "tinytool", "0.1.0",
                          "git+https://example.org/tinytool.git?rev=v0.1#65e56d2ae5720aef3bde906425bcc260bfb18c4d")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pixi.lock"
        lock.to_path(str(path))
        text = path.read_text()
        print(text)
        env = LockFile.from_path(str(path)).default_environment()
        for _plat, pkgs in env.pypi_packages().items():
            for p in pkgs:
                print(f"read back: {p.name} {p.version} hashes={p.hashes!r} requires_dist={p.requires_dist} "
                      f"requires_python={p.requires_python} location={p.location}")
    version = text.splitlines()[0]
    print(f"finding: {version}; pypi entries carry name, version and location only "
          "(no sha256, requires_dist, requires_python, indexes)")


if __name__ == "__main__":
    main()
