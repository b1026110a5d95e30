"""Leaderboard plots drawn from a method × metric :class:`~cascadevsr.reports.tables.Table` (PNG, Agg backend):
bars per metric, and quality against speed when methods have a runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cascadevsr.reports.protocol import RUNTIME_METRIC
from cascadevsr.reports.tables import Table, best_cells


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def axis_label(name: str, higher_is_better: bool | None) -> str:
    """A metric's axis label with its direction spelled out."""
    return name + {True: " (higher is better)", False: " (lower is better)", None: ""}[higher_is_better]


def log_axis(ax) -> None:
    """A log x axis labelled at 1, 2 and 5 × 10^k only, so spans under a decade stay readable."""
    from matplotlib.ticker import LogFormatterSciNotation, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(LogFormatterSciNotation(labelOnlyBase=False))
    ax.xaxis.set_minor_formatter(NullFormatter())


def save_figure(fig, out: Path, title: str | None = None, axes=None, used: int = 0) -> Path:
    """Blank the unused panels of a grid (``axes[r][c]`` after the first ``used``), title, save, close."""
    if axes is not None:
        cols = len(axes[0])
        for j in range(used, len(axes) * cols):
            axes[j // cols][j % cols].axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    return out


def bars(table: Table, out: Path, baseline: str | None = None) -> Path:
    """One horizontal bar panel per column of a method × metric table; the best bar is highlighted and a
    dashed line marks ``baseline``'s value. Methods keep the table's order so panels read alike."""
    plt = pyplot()
    methods = [lab[0] for lab in table.labels]
    best = best_cells(table)
    n = len(table.columns)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.8 * cols, rows * (1.5 + 0.45 * len(methods))), squeeze=False)
    y = np.arange(len(methods))
    for i, col in enumerate(table.columns):
        ax = axes[i // cols][i % cols]
        vals = table.values[:, i]
        colours = ["tab:orange" if best[r, i] else "tab:blue" for r in range(len(methods))]
        ax.barh(y, np.nan_to_num(vals, nan=0.0), color=colours)
        for r, v in enumerate(vals):
            if np.isfinite(v):
                ax.annotate(f"{v:.4g}", (v, r), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
        if baseline in methods and np.isfinite(vals[methods.index(baseline)]):
            ax.axvline(vals[methods.index(baseline)], color="gray", ls="--", lw=1)
        ax.set_yticks(y, methods)
        ax.invert_yaxis()
        ax.set_title(f"{col.name} {col.arrow}".rstrip())
        ax.set_xlabel(axis_label(col.name, col.higher_is_better))
        finite = vals[np.isfinite(vals)]
        if col.name == RUNTIME_METRIC and finite.size and (finite > 0).all():  # runtimes span decades
            log_axis(ax)
        ax.grid(axis="x", alpha=0.3)
        ax.margins(x=0.18)
    title = "Leaderboard (best in orange" + (f"; dashed line: {baseline})" if baseline in methods else ")")
    return save_figure(fig, out, title, axes, n)


def quality_vs_speed(table: Table, out: Path) -> Path | None:
    """One scatter panel per metric: the metric against seconds per frame (log scale), one labelled point
    per method with a runtime; None (nothing written) when no method has one."""
    names = [c.name for c in table.columns]
    if RUNTIME_METRIC not in names:
        return None
    rt = table.values[:, names.index(RUNTIME_METRIC)]
    metrics = [(i, c) for i, c in enumerate(table.columns) if c.name != RUNTIME_METRIC]
    have = np.isfinite(rt) & (rt > 0)
    if not metrics or not have.any():
        return None
    plt = pyplot()
    cols = min(len(metrics), 3)
    rows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.8 * rows), squeeze=False)
    for k, (i, col) in enumerate(metrics):
        ax = axes[k // cols][k % cols]
        for r, label in enumerate(table.labels):
            if have[r] and np.isfinite(table.values[r, i]):
                ax.scatter(rt[r], table.values[r, i], s=30)
                ax.annotate(label[0], (rt[r], table.values[r, i]), xytext=(4, 3), textcoords="offset points",
                            fontsize=8)
        log_axis(ax)
        ax.set_xlabel("seconds per frame (lower is faster)")
        ax.set_ylabel(axis_label(col.name, col.higher_is_better))
        ax.grid(alpha=0.3)
        ax.margins(x=0.25, y=0.15)
    return save_figure(fig, out, "Quality against speed", axes, len(metrics))
