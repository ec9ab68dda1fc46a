"""Usage pictures for the static catalog page: inline SVG and HTML fragments, no script, no external asset.

The catalog's renderer calls one function:

    index_html, per_env = usage_panels(site, platform)        # or usage_panels(site, platform, report=...)

`index_html` is a <div> for the catalog's index page (records read, the site-wide chart of package prevalence:
distinct users per package, top 30, and the envs nobody used lately); `per_env` maps each env name of PLATFORM to a
<div> for its page (runs, users, last use, weekly runs over the last half year, its most used packages). Both
are "" / {} when the site keeps no usage logs; when the logs cannot be read here the index section says why (one
escaped line) and there are no env sections. Every text that comes from a log, a record or a path is HTML-escaped
(log lines are written by users' processes).

Reading the logs costs about 3 s per million records (report.py): a catalog run that already has a report passes
it in. Classes are prefixed `cpkgs-usage`; colours are inline, so the fragments look right without the catalog's
stylesheet.
"""

from __future__ import annotations

import time
from html import escape

from cpkgs_admin.errors import CpkgsError
from cpkgs_admin.outputs.usage.report import (
    EnvUsage,
    PackageCount,
    UsageReport,
    iso,
    usage_report,
    week_of,
    week_start,
)
from cpkgs_admin.site.paths import Site

TOP = 30
WEEKS = 26
KIND_COLOURS = {"conda": "#3b7dd8", "pypi": "#e39b2d", "user": "#8a63c7", "module": "#8c8c8c"}


def _e(text: object) -> str:
    return escape(str(text), quote=True)


def _day(t: float | None) -> str:
    return (iso(t) or "never")[:10] if t is not None else "never"


def package_chart_svg(packages: tuple[PackageCount, ...] | list[PackageCount], top: int = TOP) -> str:
    """Horizontal bars: distinct users per package, the TOP most used; colour by kind (conda, pypi, user)."""
    shown = list(packages)[:top]
    label_w, bar_w, row_h, head = 190, 380, 18, 28
    width, height = label_w + bar_w + 60, head + row_h * max(len(shown), 1) + 26
    most = max((p.users for p in shown), default=1) or 1
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="cpkgs-usage-chart" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-labelledby="cpkgs-usage-chart-title">',
           f'<title id="cpkgs-usage-chart-title">Distinct users per package (top {len(shown)})</title>',
           f'<text x="0" y="16" font-family="sans-serif" font-size="13" font-weight="bold">'
           f'Distinct users per package (top {len(shown)})</text>']
    if not shown:
        out.append(f'<text x="0" y="{head + 12}" font-family="sans-serif" font-size="12">no records yet</text>')
    for i, p in enumerate(shown):
        y = head + i * row_h
        w = max(1, round(bar_w * p.users / most))
        colour = KIND_COLOURS.get(p.kind, KIND_COLOURS["module"])
        name = p.name if len(p.name) <= 28 else p.name[:27] + "…"
        out.append(f'<g><title>{_e(p.name)} ({_e(p.kind)}): {p.users} users in {p.envs} envs</title>'
                   f'<text x="{label_w - 6}" y="{y + 13}" text-anchor="end" font-family="sans-serif" '
                   f'font-size="12">{_e(name)}</text>'
                   f'<rect x="{label_w}" y="{y + 2}" width="{w}" height="{row_h - 5}" fill="{colour}"/>'
                   f'<text x="{label_w + w + 4}" y="{y + 13}" font-family="sans-serif" font-size="11">{p.users}</text>'
                   "</g>")
    ly = height - 8
    x = 0
    for kind, colour in KIND_COLOURS.items():
        out.append(f'<rect x="{x}" y="{ly - 9}" width="10" height="10" fill="{colour}"/>'
                   f'<text x="{x + 14}" y="{ly}" font-family="sans-serif" font-size="11">{kind}</text>')
        x += 80
    out.append("</svg>")
    return "".join(out)


def weekly_svg(weekly: tuple[tuple[int, int], ...], now: float, weeks: int = WEEKS) -> str:
    """Runs per week over the last WEEKS weeks, one bar each (oldest left)."""
    this_week = week_of(now)
    counts = {week_of(w): n for w, n in weekly}
    series = [counts.get(this_week - weeks + 1 + i, 0) for i in range(weeks)]
    most = max(series) or 1
    bar, gap, h = 8, 2, 40
    width = weeks * (bar + gap)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="cpkgs-usage-weekly" width="{width}" height="{h + 2}" '
           f'viewBox="0 0 {width} {h + 2}" role="img" aria-label="runs per week, last {weeks} weeks">']
    for i, n in enumerate(series):
        bh = round(h * n / most) if n else 0
        start = week_start(this_week - weeks + 1 + i)
        out.append(f'<rect x="{i * (bar + gap)}" y="{h - bh}" width="{bar}" height="{max(bh, 1)}" '
                   f'fill="{KIND_COLOURS["conda"] if n else "#dddddd"}"><title>week of {_day(start)}: {n} runs'
                   "</title></rect>")
    out.append("</svg>")
    return "".join(out)


def env_panel_html(env: EnvUsage, now: float) -> str:
    """One env's usage section."""
    rows = [("runs", str(env.runs)), ("distinct users", str(env.users)), ("last used", _day(env.last_used))]
    if env.layer_runs:
        rows.append(("runs from personal layers", str(env.layer_runs)))
    items = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in rows)
    pkgs = "".join(f"<li>{_e(p.name)} <small>({_e(p.kind)})</small>: {p.users} users</li>" for p in env.top_packages)
    return (f'<div class="cpkgs-usage cpkgs-usage-env" data-env="{_e(env.name)}">'
            f"<dl>{items}</dl>{weekly_svg(env.weekly, now)}"
            + (f"<h3>Most used packages</h3><ol>{pkgs}</ol>" if pkgs else "") + "</div>")


def index_panel_html(report: UsageReport, platform: str | None = None) -> str:
    """The index page's section: what was read, the package chart, the retirement candidates."""
    cands = [c for c in report.candidates if platform is None or c.platform == platform]
    days = f"{report.unused_days / 86400:g}"
    if not report.covered:
        unused = f"<p>Unused envs: unknown (the usage logs do not reach back {_e(days)} days).</p>"
    elif cands:
        unused = (f"<h3>Not used for {_e(days)} days (retirement candidates)</h3><ul>"
                  + "".join(f"<li>{_e(c.name)}: last used {_e(_day(c.last_used))}</li>" for c in cands) + "</ul>")
    else:
        unused = f"<p>Every env was used in the last {_e(days)} days.</p>"
    span = f"{_day(report.first)} to {_day(report.last)}" if report.records else "no records yet"
    return ('<div class="cpkgs-usage cpkgs-usage-index">'
            f"<p>{report.records} python runs recorded ({_e(span)}); {report.skipped_lines} log lines skipped.</p>"
            f"<h3>Distinct users per package (top 30)</h3>{package_chart_svg(report.packages)}{unused}</div>")


def usage_panels(site: Site, platform: str | None = None, report: UsageReport | None = None,
                 now: float | None = None) -> tuple[str, dict[str, str]]:
    """(index section, {env name: env section}) for PLATFORM's catalog (every platform's envs when None)."""
    if report is None:
        if not site.config.usage.logs:
            return "", {}
        try:
            report = usage_report(site)
        except CpkgsError as exc:
            return (f'<div class="cpkgs-usage cpkgs-usage-index"><p>usage data unavailable: '
                    f"{_e(exc)}</p></div>", {})
    now = time.time() if now is None else now
    envs = {e.name: env_panel_html(e, now) for e in report.envs if platform is None or e.platform == platform}
    return index_panel_html(report, platform), envs
