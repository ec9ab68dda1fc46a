"""Channel names to the URLs a site serves them from (cpkgs.yaml `channel_map`, `channel_alias`).

What conda does with a channel name, read in conda 26.7.1's conda/models/channel.py and conda/base/context.py:
a name in `custom_multichannels` (`defaults` is one) stands for several URLs; a name whose leading path segments
are in `custom_channels` lives under that channel's location (`nvidia/label/cuda-11.8.0` under `nvidia`); any other
name lives under `channel_alias` (https://conda.anaconda.org). A trailing known subdir (`bodo.ai/linux-64`) is split
off first (`split_platform`). cpkgs' `channel_map` plays both custom parts with full URLs (a mirror's directory
need not be named after the channel), and also takes URL prefixes as keys, so that a URL channel in a user's file
(`https://packages.qiime2.org/...`) or a lock file's package URL can be pointed at a mirror too. A URL under conda's
own alias while the site has another one is read as the channel name it spells, as conda does for its
`migrated_channel_aliases` (channel.py `_read_channel_configuration`, step 3).

Pure functions over the config's values: this module imports nothing else of the site, so config.py can validate
with it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cpkgs_admin.errors import SpecError

# A channel name: `conda-forge`, or with path segments, as label channels have them: `nvidia/label/cuda-11.8.0`.
CHANNEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)*\Z")
# conda/base/constants.py: DEFAULT_CHANNEL_ALIAS, DEFAULTS_CHANNEL_NAME, KNOWN_SUBDIRS.
DEFAULT_CHANNEL_ALIAS = "https://conda.anaconda.org"
DEFAULTS = "defaults"
# conda/env/installers/conda.py: in an environment file's `channels:`, drops the configured channels.
NODEFAULTS = "nodefaults"
CONDA_SUBDIRS = frozenset({
    "noarch", "emscripten-wasm32", "wasi-wasm32", "freebsd-64", "linux-32", "linux-64", "linux-aarch64",
    "linux-armv6l", "linux-armv7l", "linux-ppc64", "linux-ppc64le", "linux-riscv64", "linux-s390x", "osx-64",
    "osx-arm64", "win-32", "win-64", "win-arm64", "zos-z",
})


def _segments(text: str) -> list[str]:
    return [s for s in text.split("/") if s]


def _join(base: str, *rest: str) -> str:
    return "/".join([base.rstrip("/"), *(r.strip("/") for r in rest if r)])


def split_subdir(name: str) -> tuple[str, str]:
    """`bodo.ai/linux-64` -> ("bodo.ai", "linux-64"); a name without a subdir comes back with ""."""
    head, _, last = name.rpartition("/")
    return (head, last) if head and last in CONDA_SUBDIRS else (name, "")


def _url_prefix_match(url: str, prefix: str) -> str | None:
    """The rest of URL after PREFIX when PREFIX is URL's leading whole path segments (scheme and host equal)."""
    u_scheme, _, u_rest = url.partition("://")
    p_scheme, _, p_rest = prefix.partition("://")
    if u_scheme != p_scheme:
        return None
    u, p = _segments(u_rest), _segments(p_rest)
    if u[: len(p)] != p:
        return None
    return "/".join(u[len(p):])


@dataclass(frozen=True)
class ChannelMap:
    """cpkgs.yaml's channel_map (keys without a trailing '/') and channel_alias."""

    entries: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    alias: str | None = DEFAULT_CHANNEL_ALIAS

    def _named(self, name: str) -> tuple[str, ...] | None:
        """NAME's URLs from the map: its own entry, else the longest entry holding its leading segments."""
        hit = self.entries.get(name)
        if hit:
            return hit
        segs = _segments(name)
        for n in range(len(segs) - 1, 0, -1):
            hit = self.entries.get("/".join(segs[:n]))
            if hit and len(hit) == 1:  # a multichannel stands for its URLs only by its own name, as in conda
                return (_join(hit[0], *segs[n:]),)
        return None

    def name_urls(self, name: str) -> tuple[str, ...]:
        """The URLs of a channel NAME (no subdir); SpecError naming the name when the site gives it none."""
        if name == NODEFAULTS:
            raise SpecError(f"{NODEFAULTS!r} is not a channel: it drops the site's channels in an environment file")
        hit = self._named(name)
        if hit:
            return hit
        if name == DEFAULTS:
            raise SpecError("channel 'defaults': this site maps no URL to it (set channel_map.defaults in cpkgs.yaml, "
                            "e.g. cpkgs init --channel-map defaults=URL, or drop it)")
        if self.alias is None:
            hint = " (did you mean 'defaults'?)" if name == "default" else ""
            raise SpecError(f"channel {name!r} is not in cpkgs.yaml's channel_map and the site has no channel_alias"
                            + hint)
        return (_join(self.alias, name),)

    def url_name(self, url: str) -> str | None:
        """The channel name URL spells under conda's alias or the site's (https://conda.anaconda.org/menpo -> menpo)."""
        for alias in dict.fromkeys(a for a in (DEFAULT_CHANNEL_ALIAS, self.alias) if a):
            rest = _url_prefix_match(url, alias)
            if rest:
                return rest
        return None

    def map_url(self, url: str) -> str:
        """URL (a channel base, or a package URL under one) on this site: a URL key's mirror, else where the site
        serves the name it spells under an alias, else URL itself."""
        url = url.rstrip("/")
        best: tuple[int, str] | None = None
        for key, urls in self.entries.items():
            if "://" in key and len(urls) == 1:
                rest = _url_prefix_match(url, key)
                if rest is not None and (best is None or len(key) > best[0]):
                    best = (len(key), _join(urls[0], rest))
        if best is not None:
            return best[1]
        name = self.url_name(url)
        if name is None:
            return url
        # The name it spells, as this site serves that name: a map entry, else the site's own alias when it has
        # moved away from conda's (a mirror of anaconda.org); names the site cannot serve keep their URL.
        segs = _segments(name)
        for n in range(len(segs), 0, -1):
            hit = self._named("/".join(segs[:n]))
            if hit and len(hit) == 1:
                return _join(hit[0], *segs[n:])
        if self.alias and self.alias != DEFAULT_CHANNEL_ALIAS:
            return _join(self.alias, name)
        return url

    def urls(self, channel: str) -> tuple[tuple[str, ...], str]:
        """(base URLs, subdir or "") of CHANNEL as a spec, `-c` or cpkgs.yaml gives it: a name, a URL or a path."""
        channel = channel.strip()
        if channel.startswith("/"):
            channel = Path(channel).as_uri()
        if "://" in channel:
            return (self.map_url(channel),), ""
        if not CHANNEL_NAME.match(channel.rstrip("/")):
            raise SpecError(f"channel {channel!r} is neither a URL nor a channel name")
        name, subdir = split_subdir(channel.rstrip("/"))
        return self.name_urls(name), subdir

    def display_name(self, channel: str) -> str:
        """What records call CHANNEL: its name; a URL under an alias by the name it spells; other URLs as given."""
        channel = channel.strip().rstrip("/")
        if channel.startswith("/"):
            return Path(channel).as_uri()
        if "://" in channel:
            return self.url_name(channel) or channel
        return split_subdir(channel)[0]


@dataclass(frozen=True)
class Source:
    """A channel of one build: the name the request used and the URL cpkgs reads it from."""

    name: str
    url: str


@dataclass
class ChannelPlan:
    """The channels of one solve, in priority order, and the request's specs with their channels as URLs."""

    sources: list[Source] = field(default_factory=list)  # one per URL: the first name that asked for it
    named: dict[str, list[str]] = field(default_factory=dict)  # every name asked for -> its URLs
    specs: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def add(self, name: str, urls: Iterable[str]) -> None:
        known = {s.url for s in self.sources}
        for url in urls:
            if url not in self.named.setdefault(name, []):
                self.named[name].append(url)
            if url not in known:
                self.sources.append(Source(name, url))
                known.add(url)

    def names(self) -> list[str]:
        return list(self.named)

    def name_of(self, url: str) -> str:
        """The request's name for the channel at URL (a record's channel), else URL."""
        url = url.rstrip("/")
        return next((s.name for s in self.sources if s.url.rstrip("/") == url), url)


def _resolve(cmap: ChannelMap, channel: str, where: str) -> tuple[tuple[str, ...], str]:
    try:
        return cmap.urls(channel)
    except SpecError as exc:
        raise SpecError(f"{where}: {exc}") from None


def split_channel_spec(spec: str) -> tuple[str | None, str]:
    """(channel or None, the rest) of `channel::name ...`, the channel part as conda's MatchSpec takes it (the last
    '::' before any bracket section; conda/models/match_spec.py `_parse_spec_str`, step 5)."""
    head, bracket, tail = spec.partition("[")
    channel, sep, rest = head.rpartition("::")
    if not sep:
        return None, spec
    return channel.strip(), rest + bracket + tail


def plan_channels(
    cmap: ChannelMap,
    *,
    cli: Sequence[str] = (),
    spec_channels: Sequence[str] = (),
    site_channels: Sequence[str] = (),
    specs: Sequence[str] = (),
    where: str = "spec",
) -> ChannelPlan:
    """The solve's channels as `conda env create` orders them (conda/env/installers/conda.py `_solve`, conda/core/
    solve.py `_prepare`): the file's channels, then the configured ones (the site's) unless the file says
    `nodefaults`, then the channels of `channel::pkg` specs not among them. `-c` replaces the first two."""
    plan = ChannelPlan()
    if cli:
        wanted = [(c, "-c") for c in cli]
    else:
        wanted = [(c, where) for c in spec_channels if c != NODEFAULTS]
        if NODEFAULTS not in spec_channels:
            wanted += [(c, "cpkgs.yaml channels") for c in site_channels]
    for channel, origin in wanted:
        urls, _subdir = _resolve(cmap, channel, origin)
        plan.add(cmap.display_name(channel), urls)
    for spec in specs:
        plan.specs.append(_spec_with_url(cmap, plan, spec, where))
    return plan


def _spec_with_url(cmap: ChannelMap, plan: ChannelPlan, spec: str, where: str) -> str:
    """SPEC with its `channel::` as the URL this site reads that channel from; the channel joins the solve."""
    channel, rest = split_channel_spec(spec)
    if channel is None:
        return spec
    urls, subdir = _resolve(cmap, channel, f"{where}: {spec}")
    plan.add(cmap.display_name(channel), urls)
    if len(urls) > 1:
        # rattler's MatchSpec holds one channel URL: a multichannel's package may then come from any channel.
        plan.warnings.append(f"{spec}: {channel} stands for {len(urls)} channels; {rest.split()[0]} is taken from "
                             "whichever channel has it")
        return rest
    return f"{_join(urls[0], subdir)}::{rest}"


def lock_channel(cmap: ChannelMap, package_url: str, named: Mapping[str, str]) -> tuple[str, str]:
    """(channel name, base URL on this site) of a lock file's PACKAGE_URL. NAMED: the lock's own `# channel: NAME
    URL` lines (base URL -> name), which cpkgs writes so another site can map the names to its own mirrors."""
    base = package_url.rsplit("/", 2)[0].rstrip("/")
    name = named.get(base)
    if name is not None and "://" not in name:
        try:
            urls = cmap.name_urls(split_subdir(name)[0])
        except SpecError:
            return name, base
        return name, urls[0] if len(urls) == 1 else base
    return cmap.display_name(base), cmap.map_url(base)
