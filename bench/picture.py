"""Draw ``docs/upgrade.svg`` with matplotlib: requests over time during upgrades, grace_plugins
next to gunicorn.

Regenerate it from the repository root (matplotlib comes with the ``bench`` extra)::

    python bench/picture.py             # runs the two servers (~1 min), writes docs/upgrade.svg
    python bench/picture.py --out x.svg # or x.png

(``python bench/run.py`` draws it too, from the same rows of its own run.) Left panel:
``flask hotrun`` serving an app that takes 1 s to import, upgraded by ``kill -HUP``; right
panel: ``gunicorn -k gthread`` with the same app and gunicorn's plain HUP. Each dot is one
request: x is when it started, y how long it took (log scale), its colour the process (pid and
code version) that answered; red crosses are failed requests; dashed lines are the HUPs.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any

from common import ROOT, RunPlan, Sample, Timeline

MAX_DOTS = 1500  # quick requests drawn per panel (every failure and slow request is drawn)
#: matplotlib's tab10 without its red, which marks the failures.
PALETTE = ["#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#bcbd22"]
FAIL = "#d62728"
Y_MIN, Y_MAX = 0.0005, 20.0  # seconds, log scale
PANELS = (
    ("`flask hotrun`", "HUP", "grace_plugins: flask hotrun (HUP)"),
    ("`gunicorn -k gthread -w 2 --threads 4`", "HUP", "gunicorn -k gthread (plain HUP)"),
)
MISSING = "matplotlib not installed: pip install 'grace_plugins[bench]' (or pip install matplotlib)"


def drawn(row: Any) -> bool:
    """Is *row* (of ``upgrades.ROWS``) one of the two the picture draws?"""
    return any(row.label == label and row.trigger == trigger for label, trigger, _ in PANELS)


def _thin(samples: list[Sample]) -> list[Sample]:
    keep = [s for s in samples if s.failure or s.kind == "slow"]
    quick = [s for s in samples if not (s.failure or s.kind == "slow")]
    stride = max(1, math.ceil(len(quick) / MAX_DOTS))
    return quick[::stride] + keep


def panel(ax: Any, timeline: Timeline, title: str, note: str) -> None:
    """Draw one timeline on the axes *ax*."""
    t0 = timeline.load_start
    ax.set_title(f"{title}\n{note}", fontsize=10)
    ax.set_yscale("log")
    ax.set_ylim(Y_MIN, Y_MAX)
    ax.set_xlim(0, max(timeline.load_end - t0, 1.0))
    ax.set_xlabel("time (s)")
    ax.set_ylabel("request latency (log scale)")
    ax.yaxis.set_major_formatter(lambda v, _: f"{v * 1000:g} ms" if v < 1 else f"{v:g} s")
    ax.grid(True, axis="y", color="#e4e4e4", linewidth=0.6)
    for up in timeline.upgrades:
        ax.axvline(up.triggered - t0, color="#555", linestyle="--", linewidth=0.9)
        ax.text(up.triggered - t0, Y_MAX * 0.6, " HUP", color="#555", fontsize=8, va="top")
    served: dict[int, str] = {}
    first: dict[int, float] = {}
    for s in timeline.samples:
        if s.pid > 0 and s.pid not in served:
            served[s.pid], first[s.pid] = s.version, s.start
    drawn = _thin(timeline.samples)
    for number, pid in enumerate(sorted(served, key=first.__getitem__)):
        mine = [s for s in drawn if s.pid == pid and not s.failure]
        ax.scatter(
            [s.start - t0 for s in mine],
            [max(s.end - s.start, Y_MIN) for s in mine],
            s=[14 if s.kind == "slow" else 5 for s in mine],
            color=PALETTE[number % len(PALETTE)],
            alpha=0.6,
            linewidths=0,
            rasterized=True,  # thousands of dots: a bitmap inside the SVG, text stays text
            label=f"pid {pid} · {served[pid]}",
        )
    failed = [s for s in timeline.samples if s.failure]
    ax.scatter(
        [s.start - t0 for s in failed],
        [min(max(s.end - s.start, Y_MIN), Y_MAX) for s in failed],
        marker="x",
        color=FAIL,
        s=24,
        linewidths=1.4,
        label=f"failed request ({len(failed)})",
    )
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, fontsize=8, frameon=False,
              markerscale=1.6)  # fmt: skip


def render(panels: list[tuple[str, Timeline, str]], path: str) -> None:
    """Write the picture (SVG or PNG, by *path*'s suffix), one panel per (title, timeline,
    note). Raises ImportError without matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matplotlib.rcParams.update(
        {"svg.fonttype": "none", "svg.hashsalt": "grace_plugins", "font.family": "sans-serif"}
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 4.4), squeeze=False)
    for ax, (title, timeline, note) in zip(axes[0], panels, strict=True):
        panel(ax, timeline, title, note)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Date": None} if path.endswith(".svg") else None)
    plt.close(fig)


def _note(result: Any) -> str:
    n = result.numbers
    failed = sum(n.failures.values())
    return (
        f"app import 1 s; {n.requests} requests, {failed} failed, slow"
        f" {n.slow_completed}/{n.slow_started}, longest stall {n.stall_s * 1000:.0f} ms"
    )


def render_from_results(results: list[Any], path: str) -> bool:
    """Draw the picture from the upgrade rows' results (the 1 s import rows); False if one is
    missing. Raises ImportError without matplotlib."""
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
    import upgrades

    parser = argparse.ArgumentParser(description="Draw docs/upgrade.svg (runs two servers).")
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "upgrade.svg"))
    parser.add_argument("--upgrades", type=int, default=3)
    args = parser.parse_args(argv)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(MISSING, file=sys.stderr)
        return 2
    plan = RunPlan(upgrades=args.upgrades)
    results = []
    for label, trigger, _ in PANELS:
        row = next(r for r in upgrades.ROWS if r.label == label and r.trigger == trigger)
        results.append(upgrades.run_row(row, 1.0, plan))
    if not render_from_results(results, args.out):
        print("cannot draw: a server was skipped (see above)", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
