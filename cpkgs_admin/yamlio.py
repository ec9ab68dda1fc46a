"""YAML as cpkgs reads admins' files (cpkgs.yaml, specs/*.yml, environment.yml): PyYAML's safe subset, libyaml's
parser when PyYAML has it, and a key given twice in one mapping is an error (PyYAML keeps the last one silently:
`dependencies:` twice would build an env without the first list). conda's own loader refuses duplicates too."""

from __future__ import annotations

from functools import cache
from typing import Any

MERGE_TAG = "tag:yaml.org,2002:merge"


@cache
def _loader() -> Any:
    import yaml

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
    import yaml

    return yaml.load(text, Loader=_loader())  # a SafeLoader subclass: the safe subset only
