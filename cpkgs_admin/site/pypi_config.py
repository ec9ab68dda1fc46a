"""The `pypi:` section of cpkgs.yaml: where the pip part of a spec finds its packages, and whether it may have one.

```yaml
pypi:
  enabled: true                          # false: a spec with a `pip:` section is refused
  index_url: https://pypi.org/simple     # a site mirror of PyPI is this one line; null: no index (find_links only)
  extra_index_urls: []
  find_links: [/nfs/cpkgs/wheelhouse]    # wheelhouse directories (absolute) or URLs
  spec_indexes: true                     # spec files may name their own --index-url/--extra-index-url/--find-links
  build_from_source: true                # sdists and git sources are built into wheels; false: wheels only
```
Written to slot into site.config_from_mapping: `pypi_config_from_mapping(data.get("pypi"), source)`; every problem
is one ConfigError line naming the key (`pypi.index_url`, `pypi.find_links[1]`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cpkgs_admin.errors import ConfigError

PYPI_INDEX = "https://pypi.org/simple"


@dataclass(frozen=True)
class PypiConfig:
    enabled: bool = True
    index_url: str | None = PYPI_INDEX
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    spec_indexes: bool = True
    build_from_source: bool = True

    def to_yaml_dict(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "index_url": self.index_url,
            "extra_index_urls": list(self.extra_index_urls),
            "find_links": list(self.find_links),
            "spec_indexes": self.spec_indexes,
            "build_from_source": self.build_from_source,
        }


_KEYS: dict[str, tuple[type, ...]] = {
    "enabled": (bool,),
    "index_url": (str, type(None)),
    "extra_index_urls": (list,),
    "find_links": (list,),
    "spec_indexes": (bool,),
    "build_from_source": (bool,),
}


def index_url_problem(value: Any) -> str | None:
    """Why VALUE is not an index URL (http://, https:// or file:// with an absolute path), or None."""
    if not isinstance(value, str) or not value.strip():
        return "must be a non-empty URL"
    if any(c.isspace() or ord(c) < 0x20 for c in value):
        return f"{value!r} must not contain spaces or control characters"
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in ("http", "https", "file"):
        return f"{value!r} is not an http://, https:// or file:// URL"
    if scheme == "file" and not rest.startswith("/"):
        return f"{value!r} is a file:// URL without an absolute path"
    if scheme != "file" and (not rest or rest.startswith("/")):
        return f"{value!r} names no host"
    return None


def find_links_problem(value: Any) -> str | None:
    """Why VALUE is not a find-links location (an absolute directory or an index_url-style URL), or None."""
    if isinstance(value, str) and value.startswith("/"):
        if any(c.isspace() or ord(c) < 0x20 for c in value):
            return f"{value!r} must not contain spaces or control characters"
        return None
    if isinstance(value, str) and "://" not in value:
        return f"{value!r} must be an absolute directory or a URL"
    return index_url_problem(value)


def pypi_config_from_mapping(data: Any, source: str) -> PypiConfig:
    """Validate cpkgs.yaml's `pypi:` value (None when the key is absent: the defaults)."""

    def bad(key: str, problem: str) -> ConfigError:
        return ConfigError(f"{source}: key 'pypi.{key}' {problem}")

    if data is None:
        return PypiConfig()
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: key 'pypi' must be a mapping, got {type(data).__name__}")
    for key, value in data.items():
        if key not in _KEYS:
            raise bad(str(key), f"is unknown (known keys: {', '.join(sorted(_KEYS))})")
        types = _KEYS[key]
        # bool is an int in Python; a YAML `yes` where a list belongs must not pass either way
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise bad(key, f"must be {names}, got {type(value).__name__}")
    index_url = data.get("index_url", PYPI_INDEX)
    if index_url is not None:
        problem = index_url_problem(index_url)
        if problem:
            raise bad("index_url", problem)
        index_url = index_url.rstrip("/")
    extra = []
    for i, url in enumerate(data.get("extra_index_urls", [])):
        problem = index_url_problem(url)
        if problem:
            raise bad(f"extra_index_urls[{i}]", problem)
        extra.append(url.rstrip("/"))
    links = []
    for i, loc in enumerate(data.get("find_links", [])):
        problem = find_links_problem(loc)
        if problem:
            raise bad(f"find_links[{i}]", problem)
        links.append(loc)
    return PypiConfig(
        enabled=data.get("enabled", True),
        index_url=index_url,
        extra_index_urls=tuple(extra),
        find_links=tuple(links),
        spec_indexes=data.get("spec_indexes", True),
        build_from_source=data.get("build_from_source", True),
    )
