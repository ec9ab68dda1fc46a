"""What the last render of one platform's catalog saw, so that the next one re-reads only the records that changed.

Kept in the catalog directory itself (`.state.json`; deleting the directory just means a full render next time):
per env the record file's (inode, size, mtime, ctime) and its summary. Records are only ever replaced by rename
(site.files.atomic_write), so a rewritten record has a new inode or times; the env a command changes is also named to
the update explicitly. A state written for another root, platform or set of templates is not used.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cpkgs_admin.outputs.catalog.model import EnvSummary

STATE = ".state.json"
SCHEMA = 1
Key = tuple[int, int, int, int]


def stat_key(path: Path) -> Key | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass
class State:
    root: str
    platform: str
    fingerprint: str
    keys: dict[str, Key]
    summaries: dict[str, EnvSummary]

    def to_text(self) -> str:
        envs = {n: {"key": list(self.keys[n]), "summary": s.to_json()} for n, s in sorted(self.summaries.items())
                if n in self.keys}
        doc = {"schema": SCHEMA, "root": self.root, "platform": self.platform, "fingerprint": self.fingerprint,
               "envs": envs}
        return json.dumps(doc, separators=(",", ":"), sort_keys=True) + "\n"


def load_state(catalog_dir: Path, root: str, platform: str, fingerprint: str) -> State | None:
    """The state of CATALOG_DIR when it was written by this cpkgs for this ROOT and PLATFORM, else None (a full
    render then rebuilds every page)."""
    try:
        doc: Any = json.loads((catalog_dir / STATE).read_bytes())
    except (OSError, ValueError):
        return None
    want = {"schema": SCHEMA, "root": root, "platform": platform, "fingerprint": fingerprint}
    if not isinstance(doc, dict) or any(doc.get(k) != v for k, v in want.items()):
        return None
    keys: dict[str, Key] = {}
    summaries: dict[str, EnvSummary] = {}
    try:
        for name, entry in doc["envs"].items():
            k = tuple(int(x) for x in entry["key"])
            if len(k) != 4:
                return None
            keys[name] = (k[0], k[1], k[2], k[3])
            summaries[name] = EnvSummary.from_json(entry["summary"])
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    return State(root=root, platform=platform, fingerprint=fingerprint, keys=keys, summaries=summaries)
