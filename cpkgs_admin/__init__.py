"""cpkgs: a site's shared conda installation on a network drive."""

from __future__ import annotations

__version__ = "0.1.0"
