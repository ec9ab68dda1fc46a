"""Step 4a of new-env, first thing after the install: rattler's `conda-meta/*.json` records made what conda writes.

py-rattler 0.28 records, for a package's symlink, a `sha256_in_prefix` that is the hash of the link's target *text*
(`bin/python -> python3.11`: sha256 of "python3.11"). conda records none for a symlink (it copies the package's
paths.json entry: conda/core/path_actions.py, LinkPathAction.verify), and `conda doctor` hashes what each
`sha256_in_prefix` entry's path leads to (plugins/subcommands/doctor/health_checks/altered_files.py): every env with
python showed "Altered Files: bin/python ..." there (the symptom conda/conda#14836 reports from another installer).
The entry is dropped. A file whose prefix was patched gets the patched file's hash where rattler left none, as conda
records it (PrefixReplaceLinkAction), so `conda doctor` checks it too.

Only records that change are rewritten (as rattler writes them: 2-space JSON, keys in their order). cpkgs' own check
reads the records after this step: expected_files ignores symlinks' hashes and takes sha256_in_prefix of a patched
file, so nothing else changes for it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cpkgs_admin.errors import BuildError
from cpkgs_admin.integrity.manifest import sha256_file
from cpkgs_admin.site.files import write_staged


def _conda_entry(prefix: Path, entry: dict[str, Any]) -> bool:
    """ENTRY (one path of a record) made conda's; whether it changed."""
    if entry.get("path_type") == "softlink":
        return entry.pop("sha256_in_prefix", None) is not None
    if entry.get("prefix_placeholder") and not entry.get("sha256_in_prefix") and entry.get("path_type") != "directory":
        entry["sha256_in_prefix"] = sha256_file(str(prefix / entry["_path"]))
        return True
    return False


def normalise_conda_meta(prefix: Path) -> list[str]:
    """Rewrite PREFIX's conda-meta records where rattler's differ from conda's (see the module doc); the records
    rewritten."""
    changed = []
    for path in sorted((prefix / "conda-meta").glob("*.json")):
        try:
            data = json.loads(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise BuildError(f"{path}: unreadable conda-meta record ({exc})") from None
        paths = (data.get("paths_data") or {}).get("paths") if isinstance(data, dict) else None
        if not isinstance(paths, list):
            continue
        changes = [_conda_entry(prefix, e) for e in paths if isinstance(e, dict)]  # every entry, not the first
        if any(changes):
            write_staged(path, json.dumps(data, indent=2, ensure_ascii=False), os.lstat(path).st_mode & 0o777)
            changed.append(path.name)
    return changed
