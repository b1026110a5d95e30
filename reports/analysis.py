"""Tables and plots of the two analyses (SimpleGVR §4.3): the timestep analysis (Fig. 5 analogue) and the
noise-augmentation sweep (Fig. 7 analogue), read from their output files only.

* Timesteps: the detail-variation curve over the sampling steps, drawn with t running from 1 (noise) to 0
  (clean) as sampling does, and the detail-aware sampling pdf it was turned into, normalised to integrate
  to 1 over [0, 1], against the uniform pdf (1 everywhere).
* Noise augmentation: one panel per metric, the metric against the test noise level, one curve per
  training noise range (its range shaded), plus a table of the same numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cascadevsr.reports.inputs import TIMESTEP_MEAN_CLIP
from cascadevsr.reports.plots import axis_label, pyplot, save_figure
from cascadevsr.reports.tables import Column, Table, clip_means

# ------------------------------------------------------------------------------------------ timesteps


def density_pdf(density: dict[str, list[float]]) -> tuple[np.ndarray, np.ndarray]:
    """``(edges (K+1,), pdf (K,))`` with the per-bin weights turned into a density integrating to 1."""
    edges = np.asarray(density["edges"], dtype=np.float64)
    mass = np.asarray(density["pdf"], dtype=np.float64)
    mass = mass / mass.sum()
    return edges, mass / np.diff(edges)


def interval_mass(edges: np.ndarray, pdf: np.ndarray, lo: float, hi: float) -> float:
    """Probability of ``t ∈ [lo, hi]`` under the piecewise-constant density."""
    overlap = np.clip(np.minimum(edges[1:], hi) - np.maximum(edges[:-1], lo), 0.0, None)
    return float((overlap * pdf).sum())


def clip_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The per-clip rows of a timestep analysis (without its per-step ``mean`` rows, unless that is all
    there is), so that means and spreads are taken over clips once."""
    per_clip = rows[rows["clip"] != TIMESTEP_MEAN_CLIP]
    return per_clip if len(per_clip) else rows


def timestep_curve(rows: pd.DataFrame) -> pd.DataFrame:
    """Per sampling step: ``step, t_from, t_to, mean, std, clips`` (variation averaged over clips)."""
    g = clip_rows(rows).groupby("step")
    curve = pd.DataFrame({"t_from": g["t_from"].mean(), "t_to": g["t_to"].mean(), "mean": g["variation"].mean(),
                          "std": g["variation"].std(ddof=0), "clips": g["clip"].nunique()})
    return curve.reset_index().sort_values("step", kind="stable").reset_index(drop=True)


def timestep_table(rows: pd.DataFrame, density: dict[str, list[float]] | None) -> Table:
    """Step × (mean variation, its spread over clips, and the step interval's probability under the sampling
    density and under the uniform one)."""
    curve = timestep_curve(rows)
    cols = {"variation": curve["mean"], "variation_std": curve["std"]}
    if density is not None:
        edges, pdf = density_pdf(density)
        lo, hi = np.minimum(curve["t_from"], curve["t_to"]), np.maximum(curve["t_from"], curve["t_to"])
        cols["p_detail_aware"] = [interval_mass(edges, pdf, a, b) for a, b in zip(lo, hi, strict=True)]
        cols["p_uniform"] = hi - lo
    labels = [(str(s), f"{a:.4g}", f"{b:.4g}") for s, a, b in zip(curve["step"], curve["t_from"], curve["t_to"],
                                                                     strict=True)]
    values = np.column_stack([np.asarray(v, dtype=np.float64) for v in cols.values()])
    clips = int(curve["clips"].max()) if len(curve) else 0
    notes = [f"Detail variation between successive sampling steps, mean and standard deviation over {clips} clip(s)."]
    if density is not None:
        notes.append("p_detail_aware / p_uniform: probability that a training timestep falls in the step's interval.")
    return Table("Detail variation over the sampling steps", ["step", "t_from", "t_to"], labels,
                 [Column(n, None) for n in cols], values, notes=notes)


def plot_timesteps(rows: pd.DataFrame, density: dict[str, list[float]] | None, out: Path) -> Path:
    """The Fig. 5 analogue: variation against t (from 1 to 0), with the sampling pdf against the uniform pdf."""
    plt = pyplot()
    curve = timestep_curve(rows)
    t = (curve["t_from"] + curve["t_to"]) / 2
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    per_clip = clip_rows(rows)
    clips = per_clip["clip"].unique()
    if 1 < len(clips) <= 8:
        for clip in clips:
            c = per_clip[per_clip["clip"] == clip].sort_values("step")
            ax.plot((c["t_from"] + c["t_to"]) / 2, c["variation"], color="tab:blue", alpha=0.25, lw=0.8)
    ax.fill_between(t, curve["mean"] - curve["std"], curve["mean"] + curve["std"], color="tab:blue", alpha=0.15,
                    lw=0)
    ax.plot(t, curve["mean"], "o-", color="tab:blue", ms=3, label=f"detail variation (mean of {len(clips)} clips)")
    ax.set_xlim(1, 0)  # sampling runs from noise (t = 1) to clean (t = 0)
    ax.set_xlabel("timestep t (1 = noise → 0 = clean)")
    ax.set_ylabel("high-frequency variation between steps")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if density is not None:
        edges, pdf = density_pdf(density)
        ax2 = ax.twinx()
        ax2.stairs(pdf, edges, baseline=None, color="tab:red", lw=1.5, label="detail-aware sampling pdf")
        ax2.axhline(1.0, color="gray", ls="--", lw=1, label="uniform pdf")
        ax2.set_ylabel("sampling density")
        ax2.set_ylim(0, max(float(pdf.max()), 1.0) * 1.15)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, fontsize=8, loc="upper right")
    ax.set_title("Detail variation over the sampling steps")
    return save_figure(fig, out)


# ------------------------------------------------------------------------------------ noise augmentation


def range_bounds(text: str) -> tuple[float, float]:
    """``"0.3-0.6"`` → ``(0.3, 0.6)``; (inf, inf) for a label that is not a range, so it sorts last."""
    a, sep, b = str(text).partition("-")
    try:
        return (float(a), float(b)) if sep else (float("inf"), float("inf"))
    except ValueError:
        return float("inf"), float("inf")


def noise_means(rows: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """``(train_range, test_level) × metric``: clip means averaged over clips, ranges in ascending order."""
    by = ("train_range", "test_level", "method", "clip", "metric")
    means = clip_means(rows, by)
    means = means[means["metric"].isin(metrics)]
    wide = means.groupby(["train_range", "test_level", "metric"])["value"].mean().unstack("metric")
    wide = wide.reindex(columns=metrics)
    order = sorted(wide.index, key=lambda k: (range_bounds(k[0]), str(k[0]), k[1]))
    return wide.reindex(index=pd.MultiIndex.from_tuples(order, names=["train_range", "test_level"]))


def noise_table(rows: pd.DataFrame, metrics: list[str], directions: dict[str, bool | None]) -> Table:
    """The noise-augmentation numbers: one row per (training range, test level), one column per metric."""
    wide = noise_means(rows, metrics)
    labels = [(str(r), f"{lvl:g}") for r, lvl in wide.index]
    clips = rows["clip"].nunique()
    return Table("Metric against test noise level, per training noise range", ["train_range", "test_level"],
                 labels, [Column(m, directions.get(m)) for m in metrics], wide.to_numpy(dtype=np.float64),
                 notes=[f"Clip means averaged over {clips} clip(s); the best value over all rows is bold."])


def plot_noise(rows: pd.DataFrame, metrics: list[str], directions: dict[str, bool | None], out: Path) -> Path:
    """The Fig. 7 analogue: a panel per metric, metric against test noise level, a curve per training range."""
    plt = pyplot()
    wide = noise_means(rows, metrics)
    ranges = list(dict.fromkeys(r for r, _ in wide.index))
    cols = min(len(metrics), 3)
    nrows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.8 * cols, 3.8 * nrows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, metric in enumerate(metrics):
        ax = axes[k // cols][k % cols]
        for j, rng in enumerate(ranges):
            sub = wide.loc[rng][metric].dropna()
            colour = colours[j % len(colours)]
            ax.plot(sub.index, sub.to_numpy(), "o-", color=colour, ms=4, label=f"trained on {rng}")
            lo, hi = range_bounds(rng)
            if np.isfinite(lo) and np.isfinite(hi):
                ax.axvspan(lo, hi, color=colour, alpha=0.07, lw=0)
        ax.set_xlabel("test noise level")
        ax.set_ylabel(axis_label(metric, directions.get(metric)))
        ax.grid(alpha=0.3)
        if k == 0:
            ax.legend(fontsize=8)
    return save_figure(fig, out, "Noise augmentation: metric against test noise level per training range", axes,
                       len(metrics))
