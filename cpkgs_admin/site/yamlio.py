"""YAML as cpkgs reads admins' files.

YAML (cpkgs.yaml, specs/*.yml, environment.yml): PyYAML's safe subset, libyaml's parser when PyYAML has it, and a
key given twice in one mapping is an error (PyYAML keeps the last one silently: `dependencies:` twice would build an
env without the first list). conda's own loader refuses duplicates too."""

from __future__ import annotations

from functools import cache
from typing import Any

import yaml

from cpkgs_admin.errors import CpkgsError

MERGE_TAG = "tag:yaml.org,2002:merge"


@cache
def _loader() -> Any:
    base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class UniqueKeyLoader(base):  # type: ignore[misc, valid-type]
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            if isinstance(node, yaml.MappingNode):
                seen: set[Any] = set()
                for key_node, _value in node.value:
                    if key_node.tag == MERGE_TAG:  # '<<: *anchor' keys may be overridden: that is their point
                        continue
                    key = self.construct_object(key_node, deep=deep)
                    try:
                        duplicate = key in seen
                    except TypeError:  # an unhashable key: the base constructor says so
                        continue
                    if duplicate:
                        raise yaml.constructor.ConstructorError(
                            "while constructing a mapping", node.start_mark,
                            f"duplicate key {key!r}", key_node.start_mark,
                        )
                    seen.add(key)
            return super().construct_mapping(node, deep)

    return UniqueKeyLoader


def load_yaml(text: str) -> Any:
    """The document in TEXT; yaml.YAMLError (with problem and problem_mark) when it is not valid or repeats a key."""
    return yaml.load(text, Loader=_loader())  # a SafeLoader subclass: the safe subset only


def parse_yaml(text: str, label: str, error: type[CpkgsError]) -> Any:
    """load_yaml, its problem one ERROR line: "LABEL: line N invalid YAML: PROBLEM"."""
    try:
        return load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise error(f"{label}:{where} invalid YAML: {problem}") from None
