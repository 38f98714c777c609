"""Chart geometry for the flywheel page: plain numbers in, SVG coordinates out (no JavaScript, no
plotting library: the page is server-rendered and stays readable in any browser)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

WIDTH, HEIGHT = 460, 260
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 16, 40


@dataclass
class Chart:
    width: int = WIDTH
    height: int = HEIGHT
    points: list[dict[str, Any]] = field(default_factory=list)
    lines: list[dict[str, Any]] = field(default_factory=list)  # horizontal reference lines
    polyline: str = ""
    x_ticks: list[dict[str, Any]] = field(default_factory=list)
    y_ticks: list[dict[str, Any]] = field(default_factory=list)
    x_label: str = ""
    y_label: str = ""
    plot: dict[str, float] = field(default_factory=dict)
    empty: str = ""


def _frame(chart: Chart) -> None:
    chart.plot = {"x0": LEFT, "x1": chart.width - RIGHT, "y0": TOP, "y1": chart.height - BOTTOM}


def _y(chart: Chart, score: float) -> float:
    p = chart.plot
    return round(p["y1"] - (p["y1"] - p["y0"]) * max(0.0, min(1.0, score)), 1)


def _score_ticks(chart: Chart) -> None:
    chart.y_ticks = [{"y": _y(chart, v), "label": f"{v:.1f}"} for v in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)]


def score_vs_cost(points: list[dict[str, Any]]) -> Chart:
    """Points {label, kind, score, cost}: x = $ per 1,000 requests on a log scale (candidates and
    production are often 100x apart), y = score in [0, 1]."""
    chart = Chart(x_label="$ per 1,000 requests (log scale)", y_label="score")
    _frame(chart)
    usable = [p for p in points if p.get("cost") and p["cost"] > 0 and p.get("score") is not None]
    if not usable:
        chart.empty = "no scored experiment with a cost yet"
        return chart
    lo = math.floor(math.log10(min(p["cost"] for p in usable)))
    hi = math.ceil(math.log10(max(p["cost"] for p in usable)))
    if hi == lo:
        hi += 1
    p0 = chart.plot

    def x(cost: float) -> float:
        return round(p0["x0"] + (p0["x1"] - p0["x0"]) * (math.log10(cost) - lo) / (hi - lo), 1)

    chart.points = [{**p, "x": x(p["cost"]), "y": _y(chart, p["score"])} for p in usable]
    chart.x_ticks = [{"x": x(10.0 ** e), "label": f"{10.0 ** e:g}"} for e in range(lo, hi + 1)]
    _score_ticks(chart)
    return chart


def score_history(runs: list[dict[str, Any]], lines: list[dict[str, Any]]) -> Chart:
    """Runs in time order {label, score (the best eval score), guard: [{label, score, passed}]}: one
    column per run; reference lines {label, score, style} across the chart."""
    chart = Chart(x_label="runs, oldest first", y_label="score")
    _frame(chart)
    runs = [r for r in runs if r.get("score") is not None or r.get("guard")]
    if not runs:
        chart.empty = "no scored run yet"
        return chart
    p0 = chart.plot
    width = p0["x1"] - p0["x0"]

    def x(i: int) -> float:
        return round(p0["x0"] + (width * i / (len(runs) - 1) if len(runs) > 1 else width / 2), 1)

    for i, r in enumerate(runs):
        if r.get("score") is not None:
            chart.points.append({"label": f"{r['label']}: best eval score", "kind": "best", "score": r["score"],
                                 "x": x(i), "y": _y(chart, r["score"])})
        for g in r.get("guard") or []:
            chart.points.append({"label": g["label"], "kind": "passed" if g["passed"] else "blocked",
                                 "score": g["score"], "x": x(i), "y": _y(chart, g["score"])})
    chart.polyline = " ".join(f"{p['x']},{p['y']}" for p in chart.points if p["kind"] == "best")
    chart.lines = [{**ln, "y": _y(chart, ln["score"])} for ln in lines if ln.get("score") is not None]
    _score_ticks(chart)
    return chart
