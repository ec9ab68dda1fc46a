"""cpkgs.yaml's `usage:` section and the environment variable that carries it to every python.

    usage:
      enabled: true                    # off by default
      collector: udp://10.0.0.5:514    # or `syslog`: this host's local socket (/dev/log)
      logs: [/var/log/cpkgs-usage.log, /var/log/cpkgs-usage.log.*]   # what `cpkgs usage` reads (globs, .gz ok)
      sample: 1.0                      # share of python runs that send a record, 0-1
      user_names: plain                # or `hashed`

While enabled, conda.sh/conda.csh, the modulefiles and the kernelspecs export CPKGS_USAGE_SEND (`cpkgs refresh`
rewrites them all), e.g. `to=udp://10.0.0.5:514 sample=1 users=plain`; the hook inside each env reads only that
variable. Users opt out with CPKGS_USAGE=0.

The collector must be a numeric address: the hook runs inside users' programs at exit and must never wait for a
name lookup. Hashed user names are SHA-256 of a salt and the uid, cut to 16 hex digits; the salt is derived from the
site root and is no secret (whatever the hook uses runs in users' processes and can be read by them): the hash keeps
names out of the collector's files and anything they are forwarded to, it does not stop a reader who can list the
site's uids.

Kept free of other cpkgs imports but errors.py: config.py validates the section with it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cpkgs_admin.errors import ConfigError

SEND_VARIABLE = "CPKGS_USAGE_SEND"
OPT_OUT_VARIABLE = "CPKGS_USAGE"
USER_MODES = ("plain", "hashed")
KEYS = ("enabled", "collector", "logs", "sample", "user_names")
SYSLOG = "syslog"


@dataclass(frozen=True)
class UsageConfig:
    enabled: bool = False
    collector: str | None = None
    logs: tuple[str, ...] = ()
    sample: float = 1.0
    user_names: str = "plain"

    def to_yaml_dict(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "collector": self.collector,
            "logs": list(self.logs),
            "sample": self.sample,
            "user_names": self.user_names,
        }


def collector_problem(value: str) -> str | None:
    """Why VALUE is no collector (`udp://IP:PORT` or `syslog`), or None."""
    if value == SYSLOG:
        return None
    if not value.startswith("udp://"):
        return f"{value!r} is neither udp://IP:PORT nor syslog"
    host, sep, port = value[len("udp://"):].rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        return f"{value!r} needs a port (udp://IP:PORT, 1-65535)"
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        addr = ipaddress.ip_address(bare)
    except ValueError:
        return f"{value!r}: {host!r} is not an IP address (the hook makes no name lookups: give the address)"
    if addr.version == 6 and bare == host:
        return f"{value!r}: write an IPv6 address in brackets, udp://[{host}]:{port}"
    if "%" in bare:
        return f"{value!r}: a scoped IPv6 address is not supported"
    return None


def usage_from_mapping(data: Any, bad: Callable[[str, str], ConfigError]) -> UsageConfig:
    """Validate cpkgs.yaml's `usage:` value (None: the defaults); BAD(key, problem) makes the error to raise."""
    if data is None:
        return UsageConfig()
    if not isinstance(data, dict):
        raise bad("usage", f"must be a mapping of {', '.join(KEYS)}, got {type(data).__name__}")
    for key in data:
        if key not in KEYS:
            raise bad(f"usage.{key}", f"is unknown (known keys: {', '.join(KEYS)})")
    enabled = data.get("enabled", False)
    if not isinstance(enabled, bool):
        raise bad("usage.enabled", f"must be true or false, got {enabled!r}")
    collector = data.get("collector")
    if collector is not None:
        if not isinstance(collector, str):
            raise bad("usage.collector", f"must be udp://IP:PORT or syslog, got {type(collector).__name__}")
        problem = collector_problem(collector.strip())
        if problem:
            raise bad("usage.collector", problem)
        collector = collector.strip()
    if enabled and collector is None:
        raise bad("usage.collector", "is required when usage.enabled is true (udp://IP:PORT or syslog)")
    return UsageConfig(
        enabled=enabled,
        collector=collector,
        logs=_logs(data.get("logs", []), bad),
        sample=_sample(data.get("sample", 1.0), bad),
        user_names=_user_names(data.get("user_names", "plain"), bad),
    )


def _logs(value: Any, bad: Callable[[str, str], ConfigError]) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise bad("usage.logs", f"must be a list of absolute paths, got {type(value).__name__}")
    for i, p in enumerate(value):
        if not isinstance(p, str) or not p.startswith("/") or any(ord(c) < 0x20 or c == "\x7f" for c in p):
            raise bad(f"usage.logs[{i}]", f"{p!r} is not an absolute path")
    return tuple(value)


def _sample(value: Any, bad: Callable[[str, str], ConfigError]) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad("usage.sample", f"must be a number between 0 and 1, got {value!r}")
    if not math.isfinite(value) or not 0 <= value <= 1:
        raise bad("usage.sample", f"must be between 0 and 1, got {value}")
    return float(value)


def _user_names(value: Any, bad: Callable[[str, str], ConfigError]) -> str:
    if value not in USER_MODES:
        raise bad("usage.user_names", f"must be plain or hashed, got {value!r}")
    return str(value)


def site_salt(root: str) -> str:
    return hashlib.sha256(f"cpkgs-usage:{root}".encode()).hexdigest()[:16]


def send_value(config: UsageConfig, root: str) -> str | None:
    """CPKGS_USAGE_SEND's value for this site, or None while records are off. Only [A-Za-z0-9.:/=[] ] in it (the
    validation above guarantees it), so every dialect can embed it in single quotes."""
    if not config.enabled or config.collector is None:
        return None
    words = [f"to={config.collector}", f"sample={config.sample:g}", f"users={config.user_names}"]
    if config.user_names == "hashed":
        words.append(f"salt={site_salt(root)}")
    return " ".join(words)


def sh_line(config: UsageConfig, root: str) -> str:
    """conda.sh's statement: export the variable, or unset it (a shell that sourced the profile while records
    were on stops sending once it sources it again)."""
    value = send_value(config, root)
    if value is None:
        return f"unset {SEND_VARIABLE}"
    return f"{SEND_VARIABLE}={shlex.quote(value)}; export {SEND_VARIABLE}"


def csh_line(config: UsageConfig, root: str) -> str:
    value = send_value(config, root)
    if value is None:
        return f"unsetenv {SEND_VARIABLE}"
    return f"setenv {SEND_VARIABLE} '{value}'"


def usage_variables(config: UsageConfig, root: str) -> tuple[tuple[str, str], ...]:
    """What a modulefile or kernel of an env with python sets for records (nothing while they are off)."""
    value = send_value(config, root)
    return () if value is None else ((SEND_VARIABLE, value),)
