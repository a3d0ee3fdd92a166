"""Draw ``docs/upgrade.svg``: requests over time during upgrades, grace_plugins next to gunicorn.

Regenerate it from the repository root with::

    python bench/picture.py             # runs the two servers (~1 min), writes docs/upgrade.svg
    python bench/picture.py --out x.svg

(``python bench/run.py`` draws it too, from the same rows of its own run.) Left panel:
``flask hotrun`` serving an app that takes 1 s to import, upgraded by ``kill -HUP``; right
panel: ``gunicorn -k gthread`` with the same app and gunicorn's plain HUP. Each dot is one
request: x is when it started, y how long it took (log scale), its colour the process (pid and
code version) that answered; red crosses are failed requests; dashed lines are the HUPs.

Plain hand-written SVG: no plotting library needed.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from html import escape
from typing import Any

from common import ROOT, RunPlan, Sample, Timeline

PANEL_W, PANEL_H = 520, 330
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 62, 16, 46, 96
MAX_DOTS = 1500  # quick requests drawn per panel (every failure and slow request is drawn)
PALETTE = [
    "#1f77b4",
    "#2ca02c",
    "#9467bd",
    "#ff7f0e",
    "#17becf",
    "#8c564b",
    "#e377c2",
    "#bcbd22",
    "#7f7f7f",
    "#393b79",
]
FAIL = "#d62728"
Y_MIN, Y_MAX = 0.0005, 20.0  # seconds, log scale
PANELS = (
    ("`flask hotrun`", "HUP", "grace_plugins: flask hotrun (HUP)"),
    ("`gunicorn -k gthread`", "HUP", "gunicorn -k gthread (plain HUP)"),
)


def _y(seconds: float, top: float, height: float) -> float:
    value = min(max(seconds, Y_MIN), Y_MAX)
    frac = (math.log10(value) - math.log10(Y_MIN)) / (math.log10(Y_MAX) - math.log10(Y_MIN))
    return top + height * (1 - frac)


def _thin(samples: list[Sample]) -> list[Sample]:
    keep = [s for s in samples if s.failure or s.kind == "slow"]
    quick = [s for s in samples if not (s.failure or s.kind == "slow")]
    stride = max(1, math.ceil(len(quick) / MAX_DOTS))
    return quick[::stride] + keep


def panel(timeline: Timeline, title: str, x0: float, note: str) -> list[str]:
    """SVG elements of one panel whose left edge is at *x0*."""
    left, top = x0 + MARGIN_L, MARGIN_T
    width = PANEL_W - MARGIN_L - MARGIN_R
    height = PANEL_H - MARGIN_T - MARGIN_B
    t_min = timeline.load_start
    t_max = max(timeline.load_end, t_min + 1.0)

    def x(t: float) -> float:
        return left + width * (t - t_min) / (t_max - t_min)

    out = [
        f'<text x="{x0 + PANEL_W / 2:.0f}" y="22" text-anchor="middle" font-size="14"'
        f' font-weight="bold">{escape(title)}</text>',
        f'<text x="{x0 + PANEL_W / 2:.0f}" y="38" text-anchor="middle" font-size="11"'
        f' fill="#444">{escape(note)}</text>',
        f'<rect x="{left}" y="{top}" width="{width}" height="{height}" fill="#fafafa"'
        ' stroke="#999"/>',
    ]
    for exp in range(int(math.log10(Y_MIN)), int(math.log10(Y_MAX)) + 1):
        value = 10.0**exp
        if not Y_MIN <= value <= Y_MAX:
            continue
        y = _y(value, top, height)
        label = f"{value * 1000:g} ms" if value < 1 else f"{value:g} s"
        out.append(
            f'<line x1="{left}" x2="{left + width}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e4e4e4"/>'
        )
        out.append(
            f'<text x="{left - 5}" y="{y + 4:.1f}" text-anchor="end" font-size="10">{label}</text>'
        )
    step = max(1, math.ceil((t_max - t_min) / 8))
    for tick in range(0, int(t_max - t_min) + 1, step):  # seconds since the load started
        xt = x(t_min + tick)
        out.append(
            f'<line x1="{xt:.1f}" x2="{xt:.1f}" y1="{top + height}" y2="{top + height + 4}"'
            ' stroke="#666"/>'
        )
        out.append(
            f'<text x="{xt:.1f}" y="{top + height + 16}" text-anchor="middle"'
            f' font-size="10">{tick}</text>'
        )
    out.append(
        f'<text x="{left + width / 2:.0f}" y="{top + height + 32}" text-anchor="middle"'
        ' font-size="11">time (s)</text>'
    )
    out.append(
        f'<text x="{x0 + 14}" y="{top + height / 2:.0f}" text-anchor="middle"'
        f' font-size="11" transform="rotate(-90 {x0 + 14} {top + height / 2:.0f})">'
        "request latency (log scale)</text>"
    )
    for up in timeline.upgrades:
        xu = x(up.triggered)
        out.append(
            f'<line x1="{xu:.1f}" x2="{xu:.1f}" y1="{top}" y2="{top + height}"'
            ' stroke="#555" stroke-dasharray="4 3"/>'
        )
        out.append(f'<text x="{xu + 3:.1f}" y="{top + 11}" font-size="10" fill="#555">HUP</text>')
    served: dict[int, str] = {}
    for sample in timeline.samples:
        if sample.pid > 0 and sample.pid not in served:
            served[sample.pid] = sample.version
    colour = {
        pid: PALETTE[i % len(PALETTE)]
        for i, pid in enumerate(
            sorted(served, key=lambda p: min(s.start for s in timeline.samples if s.pid == p))
        )
    }
    for sample in sorted(_thin(timeline.samples), key=lambda s: bool(s.failure)):
        xs, ys = x(sample.start), _y(sample.end - sample.start, top, height)
        if sample.failure:
            out.append(
                f'<path d="M{xs - 3:.1f},{ys - 3:.1f}l6,6m0,-6l-6,6" stroke="{FAIL}"'
                ' stroke-width="1.6"/>'
            )
        else:
            radius = 2.6 if sample.kind == "slow" else 1.8
            out.append(
                f'<circle cx="{xs:.1f}" cy="{ys:.1f}" r="{radius}"'
                f' fill="{colour[sample.pid]}" fill-opacity="0.6"/>'
            )
    failures = sum(1 for s in timeline.samples if s.failure)
    legend_y = top + height + 50
    items = [(colour[p], f"pid {p} · {served[p]}", "dot") for p in colour]
    items.append((FAIL, f"failed request ({failures})", "cross"))
    for i, (fill, text, shape) in enumerate(items):
        lx = left + (i % 3) * 150
        ly = legend_y + (i // 3) * 16
        if shape == "dot":
            out.append(f'<circle cx="{lx + 4}" cy="{ly - 4}" r="4" fill="{fill}"/>')
        else:
            out.append(
                f'<path d="M{lx},{ly - 8}l8,8m0,-8l-8,8" stroke="{FAIL}" stroke-width="1.6"/>'
            )
        out.append(f'<text x="{lx + 12}" y="{ly}" font-size="10">{escape(text)}</text>')
    return out


def render(panels: list[tuple[str, Timeline, str]], path: str) -> None:
    """Write the SVG with one panel per (title, timeline, note)."""
    total_w = PANEL_W * len(panels)
    body: list[str] = []
    for i, (title, timeline, note) in enumerate(panels):
        body += panel(timeline, title, i * PANEL_W, note)
    svg = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{total_w}" height="{PANEL_H}"'
        f' viewBox="0 0 {total_w} {PANEL_H}" font-family="sans-serif">',
        f'<rect width="{total_w}" height="{PANEL_H}" fill="white"/>',
        *body,
        "</svg>",
    ]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as handle:
        handle.write("\n".join(svg) + "\n")


def _note(result: Any) -> str:
    n = result.numbers
    failed = sum(n.failures.values())
    return (
        f"app import 1 s; {n.requests} requests, {failed} failed, slow"
        f" {n.slow_completed}/{n.slow_started} completed, longest stall {n.stall_s * 1000:.0f} ms"
    )


def render_from_results(results: list[Any], path: str) -> bool:
    """Draw the picture from ``bench/run.py`` results (the 1 s import rows); False if missing."""
    chosen = []
    for label, trigger, title in PANELS:
        found = [
            r
            for r in results
            if r.row.label == label
            and r.row.trigger == trigger
            and r.delay == 1.0
            and r.timeline is not None
            and r.numbers is not None
        ]
        if not found:
            return False
        chosen.append((title, found[0].timeline, _note(found[0])))
    render(chosen, path)
    return True


def main(argv: list[str] | None = None) -> int:
    import run

    parser = argparse.ArgumentParser(description="Draw docs/upgrade.svg (runs two servers).")
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "upgrade.svg"))
    parser.add_argument("--upgrades", type=int, default=3)
    args = parser.parse_args(argv)
    plan = RunPlan(upgrades=args.upgrades)
    results = []
    for label, trigger, _ in PANELS:
        row = next(r for r in run.ROWS if r.label == label and r.trigger == trigger)
        results.append(run.run_row(row, 1.0, plan))
    if not render_from_results(results, args.out):
        print("cannot draw: a server was skipped (see above)", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
