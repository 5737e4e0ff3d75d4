"""The console's charts: pygal renders each as an inline SVG on the server, so a chart costs no
script, no request of its own and nothing from the internet, and shows before any script runs.
Each function returns markup for the template (``{{ chart }}``, already safe); an empty series
gives an empty string (the template shows its empty state instead)."""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import pygal
from markupsafe import Markup
from pygal.style import Style

# pygal puts a finder for its map plugins (pygal.maps.*, unused here) on sys.meta_path, without
# find_spec: every import after it warns (ImportWarning, an error under the tests' filters)
sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != "PluginImportFixer"]

STYLE = Style(
    background="transparent",
    plot_background="transparent",
    foreground="#334155",
    foreground_strong="#0f172a",
    foreground_subtle="#94a3b8",
    colors=("#2563eb", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#64748b"),
    font_family="system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif",
    label_font_size=11,
    major_label_font_size=11,
    legend_font_size=12,
    value_font_size=11,
    tooltip_font_size=12,
)
COMMON = {
    "style": STYLE,
    "js": [],  # no tooltip script (pygal's default fetches one from a CDN)
    "disable_xml_declaration": True,
    "explicit_size": False,
    "show_legend": False,
    "margin": 8,
    "height": 260,
    "width": 720,
}


# pygal writes its config as an inline <script> in every SVG, even with ``js=[]``: the console's
# Content-Security-Policy (``script-src 'self'``) refuses it, a console error on every chart page.
INLINE_SCRIPT = re.compile(r"<script\b.*?</script>", re.DOTALL)


def _svg(chart: pygal.graph.graph.Graph) -> Markup:
    svg = INLINE_SCRIPT.sub("", chart.render(is_unicode=True))
    return Markup(f'<figure class="chart">{svg}</figure>')  # noqa: S704 (pygal escapes labels)


TIME_LABELS = 5


def line_over_time(
    points: Sequence[tuple[int, float]], title: str = "", value_label: str = "score", series: str = ""
) -> Markup:
    """A value over time (``(epoch ms, value)`` points, in order) as a stepped line."""
    if not points:
        return Markup("")
    chart = pygal.DateTimeLine(
        **COMMON,
        title=title or None,
        x_value_formatter=lambda moment: moment.strftime("%b %d %H:%M"),
        x_label_rotation=0,
        show_dots=len(points) <= 60,
        interpolate=None,
        y_title=value_label,
        truncate_label=-1,
        show_x_guides=False,
    )
    moments = [datetime.fromtimestamp(ms / 1000, tz=UTC) for ms, _ in points]
    first, last = moments[0], moments[-1]
    # at most TIME_LABELS labels, evenly spaced: pygal's own choice overlaps on a narrow chart
    chart.x_labels = (
        [first + (last - first) * i / (TIME_LABELS - 1) for i in range(TIME_LABELS)] if last > first else [first]
    )
    chart.add(series or value_label, [(moment, value) for moment, (_, value) in zip(moments, points, strict=True)])
    return _svg(chart)


def bars(labels: Sequence[str], values: Sequence[float | None], title: str = "", horizontal: bool = False) -> Markup:
    """One bar per label (contacts per stage, a funnel)."""
    if not labels:
        return Markup("")
    kind = pygal.HorizontalBar if horizontal else pygal.Bar
    chart = kind(**COMMON, title=title or None, print_values=True, x_label_rotation=0, truncate_label=-1)
    chart.x_labels = list(labels)
    chart.add(title or "count", [None if v is None else float(v) for v in values])
    return _svg(chart)


def histogram(
    series: dict[str, Sequence[tuple[float, float, float]]], title: str = "", x_title: str = "score"
) -> Markup:
    """Distributions side by side: per series name, ``(count, lower, upper)`` bins."""
    if not any(series.values()):
        return Markup("")
    chart = pygal.Histogram(**{**COMMON, "show_legend": len(series) > 1}, title=title or None, x_title=x_title)
    for name, bins in series.items():
        chart.add(name, [(float(count), float(low), float(high)) for count, low, high in bins])
    return _svg(chart)


def grouped_bars(labels: Sequence[str], series: Mapping[str, Sequence[float]], x_title: str = "") -> Markup:
    """Several series side by side per label (two models' contacts per score band): unlike
    :func:`histogram`'s overlaid areas, equal distributions stay both visible."""
    if not labels or not any(series.values()):
        return Markup("")
    chart = pygal.Bar(
        **{**COMMON, "show_legend": len(series) > 1},
        x_title=x_title or None,
        x_label_rotation=0,
        truncate_label=-1,
        legend_at_bottom=True,
    )
    chart.x_labels = list(labels)
    for name, values in series.items():
        chart.add(name, [float(v) for v in values])
    return _svg(chart)
