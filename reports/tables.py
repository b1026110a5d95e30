"""Tables from results rows, and their Markdown, CSV and LaTeX (booktabs) renderings.

A :class:`Table` is plain data: row labels, one :class:`Column` per metric with its direction, a float
matrix of values, and notes. Builders turn long-format results rows into tables (method × metric, clip ×
method × metric, the difference to a baseline method); renderers turn a table into text. Every number in
a table is read from the rows, never recomputed from outputs.

Numbers: a column shows as many decimals as its smallest non-zero magnitude needs for four significant
digits (at least two, at most six; cell by cell when the column spans more than three decades). The best
cell of a column is bold, judged by the column's direction (↑ higher is better, ↓ lower is better); cells
that print the same as the best are bold too. A column whose direction is unknown (a metric from another
tool) has no arrow and no bold cell.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cascadevsr.reports.protocol import NOT_SCORES, RUNTIME_METRIC

REPORTED_MARK = "†"


@dataclass(frozen=True)
class Column:
    """A metric column: its name in the results and whether higher values are better (None: unknown)."""

    name: str
    higher_is_better: bool | None

    @property
    def arrow(self) -> str:
        return {True: "↑", False: "↓", None: ""}[self.higher_is_better]


@dataclass
class Table:
    """A table of numbers with labelled rows.

    Attributes:
        title: one line saying what the table holds.
        keys: names of the row-label columns (``["method"]``, ``["clip", "method"]``, …).
        labels: one tuple of ``len(keys)`` strings per row.
        columns: the metric columns.
        values: float ``(rows, columns)``; NaN where there is no value.
        groups: rows with the same group number compete for the best cell (None: all rows compete).
        marks: ``(row, column) -> mark`` printed after a cell's number (explained in ``notes``).
        notes: sentences printed under the table.
        signed: values are differences and print with an explicit sign.
    """

    title: str
    keys: list[str]
    labels: list[tuple[str, ...]]
    columns: list[Column]
    values: np.ndarray
    groups: list[int] | None = None
    marks: dict[tuple[int, int], str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    signed: bool = False


# ------------------------------------------------------------------------------------------- builders


def clip_means(rows: pd.DataFrame, by: tuple[str, ...] = ("method", "clip", "metric")) -> pd.DataFrame:
    """One value per (method, clip, metric): the clip-level row (``frame`` null), or, where a file has only
    per-frame rows for it, the mean of those. Columns ``by`` (which must name the clip) and ``value``."""
    key = list(by)
    clip_level = rows[rows["frame"].isna()][[*key, "value"]]
    per_frame = rows[rows["frame"].notna()].groupby(key, as_index=False)["value"].mean()
    have = pd.MultiIndex.from_frame(clip_level[key])
    extra = per_frame[~pd.MultiIndex.from_frame(per_frame[key]).isin(have)]
    return pd.concat([clip_level, extra], ignore_index=True)


def score_metrics(rows: pd.DataFrame, order: list[str] | None = None) -> list[str]:
    """The metrics of ``rows`` that are scores (not runtime or alignment): those in ``order`` first, in that
    order, then the others in order of first appearance."""
    seen = list(dict.fromkeys(rows["metric"].tolist()))
    first = [n for n in dict.fromkeys(order or []) if n in seen]
    names = first + [n for n in seen if n not in first]
    return [n for n in names if n not in NOT_SCORES and n != RUNTIME_METRIC]


def leaderboard_table(rows: pd.DataFrame, metrics: list[str], directions: dict[str, bool | None],
                      reported_runtime: dict[str, float] | None = None) -> Table:
    """Method × metric: each method's clip means averaged over its clips, plus ``runtime_s_per_frame``.

    Args:
        rows: long-format results rows.
        metrics: the metric columns, in order.
        directions: ``metric -> higher_is_better`` (None: unknown).
        reported_runtime: ``method -> seconds per frame`` a method reported itself (a submission's
            ``meta.json``), used where the run measured no runtime and marked with a dagger.
    """
    means = clip_means(rows)
    methods = list(dict.fromkeys(rows["method"].tolist()))
    runtime = means[means["metric"] == RUNTIME_METRIC].groupby("method")["value"].mean()
    reported = {m: v for m, v in (reported_runtime or {}).items() if m in methods and m not in runtime.index}
    names = list(metrics) + ([RUNTIME_METRIC] if len(runtime) or reported else [])
    scores = means[means["metric"].isin(names)]
    wide = scores.groupby(["method", "metric"])["value"].mean().unstack("metric")
    wide = wide.reindex(index=methods, columns=names)
    marks = {}
    for m, v in reported.items():
        r, c = methods.index(m), names.index(RUNTIME_METRIC)
        wide.iloc[r, c] = v
        marks[(r, c)] = REPORTED_MARK
    counts = scores[scores["metric"] != RUNTIME_METRIC].groupby(["method", "metric"])["clip"].nunique()
    notes = [_clip_note(counts)]
    if RUNTIME_METRIC in names:
        notes.append(f"{RUNTIME_METRIC}: wall-clock seconds per output frame measured by the evaluation run on "
                     "its own device (compare only runs on the same machine).")
    if reported:
        notes.append(f"{REPORTED_MARK} runtime reported by the submission itself, not measured.")
    columns = [Column(n, False if n == RUNTIME_METRIC else directions.get(n)) for n in names]
    return Table("Clip means averaged over clips, per method", ["method"], [(m,) for m in methods], columns,
                 wide.to_numpy(dtype=np.float64), marks=marks, notes=notes)


def _clip_note(counts: pd.Series) -> str:
    base = ("Each cell is the mean over clips of the clip-level values (a clip's value is the mean of its "
            "per-frame scores)")
    if counts.empty:
        return base + "."
    distinct = sorted(set(counts.tolist()))
    if len(distinct) == 1:
        return base + f"; {distinct[0]} clip(s) per method."
    per = counts.groupby(level="method").max()
    return base + "; methods were scored on different numbers of clips: " + ", ".join(
        f"{m} {n}" for m, n in per.items()) + "."


def per_clip_table(rows: pd.DataFrame, metrics: list[str], directions: dict[str, bool | None]) -> Table:
    """(clip, method) × metric: the clip-level values; the best method is bold within each clip."""
    means = clip_means(rows)
    names = list(metrics) + ([RUNTIME_METRIC] if (means["metric"] == RUNTIME_METRIC).any() else [])
    means = means[means["metric"].isin(names)]
    methods = list(dict.fromkeys(rows["method"].tolist()))
    clips = sorted(means["clip"].unique().tolist())
    wide = means.groupby(["clip", "method", "metric"])["value"].mean().unstack("metric")
    index = pd.MultiIndex.from_tuples([(c, m) for c in clips for m in methods if (c, m) in wide.index])
    wide = wide.reindex(index=index, columns=names)
    labels = [(str(c), str(m)) for c, m in wide.index]
    groups = [clips.index(c) for c, _ in labels]
    return Table("Clip-level values per clip and method", ["clip", "method"], labels,
                 [Column(n, False if n == RUNTIME_METRIC else directions.get(n)) for n in names],
                 wide.to_numpy(dtype=np.float64), groups=groups, notes=["The best method per clip is bold."])


def baseline_table(table: Table, baseline: str) -> Table:
    """Every other method's difference to method ``baseline`` (``value − baseline value``), per column.

    The best difference is bold by the column's direction; a positive difference is an improvement in an
    ↑ column and a regression in a ↓ column.
    """
    row = [lab[0] for lab in table.labels].index(baseline)
    keep = [i for i in range(len(table.labels)) if i != row]
    diff = table.values[keep] - table.values[row]
    return Table(f"Difference to {baseline} (method − {baseline})", list(table.keys),
                 [table.labels[i] for i in keep], list(table.columns), diff,
                 notes=[f"Positive means larger than {baseline}; read it with the column's arrow."], signed=True)


# ------------------------------------------------------------------------------------------ numbers


def decimals(values: np.ndarray) -> int:
    """Decimals for a column: four significant digits of its smallest non-zero magnitude, 2 to 6."""
    finite = np.abs(values[np.isfinite(values) & (values != 0)])
    if finite.size == 0:
        return 2
    return int(min(6, max(2, 3 - math.floor(math.log10(float(finite.min()))))))


def cell_texts(table: Table) -> list[list[str]]:
    """The printed numbers of every cell (``–`` for a missing value), without marks or bolding.

    A column whose magnitudes span more than three decades (runtimes of an interpolation and of a diffusion
    model) gets its decimals cell by cell, so no cell shows a long run of insignificant digits.
    """
    out = [["" for _ in table.columns] for _ in table.labels]
    for c in range(len(table.columns)):
        col = table.values[:, c]
        mags = np.abs(col[np.isfinite(col) & (col != 0)])
        per_cell = mags.size > 1 and mags.max() / mags.min() > 1e3
        d = decimals(col)
        for r in range(len(table.labels)):
            v = table.values[r, c]
            dv = decimals(np.array([v])) if per_cell else d
            out[r][c] = "–" if not np.isfinite(v) else (f"{v:+.{dv}f}" if table.signed else f"{v:.{dv}f}")
    return out


def best_cells(table: Table) -> np.ndarray:
    """Bool ``(rows, columns)``: the cells printing the best value of their column (within their group)."""
    texts = cell_texts(table)
    best = np.zeros(table.values.shape, dtype=bool)
    groups = table.groups if table.groups is not None else [0] * len(table.labels)
    for c, col in enumerate(table.columns):
        if col.higher_is_better is None:
            continue
        for g in set(groups):
            rows = [r for r in range(len(table.labels)) if groups[r] == g and np.isfinite(table.values[r, c])]
            if len(rows) < 2:
                continue  # a single value is not "best" of anything
            pick = max if col.higher_is_better else min
            top = pick(rows, key=lambda r, c=c: table.values[r, c])
            for r in rows:
                best[r, c] = texts[r][c] == texts[top][c]
    return best


# ---------------------------------------------------------------------------------------- renderers


def to_markdown(table: Table, notes: bool = True) -> str:
    """A GitHub-flavoured Markdown table (best cells bold), followed by its notes."""
    texts, best = cell_texts(table), best_cells(table)
    head = [*table.keys, *[f"{c.name} {c.arrow}".rstrip() for c in table.columns]]
    lines = ["| " + " | ".join(_md_escape(h) for h in head) + " |",
             "|" + "---|" * len(table.keys) + "---:|" * len(table.columns)]
    for r, label in enumerate(table.labels):
        cells = []
        for c in range(len(table.columns)):
            text = texts[r][c] + table.marks.get((r, c), "")
            cells.append(f"**{text}**" if best[r, c] else text)
        lines.append("| " + " | ".join([*(_md_escape(x) for x in label), *cells]) + " |")
    if notes and table.notes:
        lines += ["", " ".join(table.notes)]
    return "\n".join(lines)


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def to_csv(table: Table) -> str:
    """CSV with the row-label columns and one column per metric (its plain name), values at full precision."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*table.keys, *[c.name for c in table.columns]])
    for r, label in enumerate(table.labels):
        writer.writerow([*label, *("" if not np.isfinite(v) else repr(float(v)) for v in table.values[r])])
    return buf.getvalue()


LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "↑": r"$\uparrow$", "↓": r"$\downarrow$", "†": r"$^\dagger$", "–": "--", "−": "-"}


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped (names such as ``realesrgan_x4plus`` or ``50%``)."""
    return "".join(LATEX_SPECIALS.get(ch, ch) for ch in str(text))


def to_latex(table: Table, label: str = "tab:results", comments: list[str] | None = None) -> str:
    """A ``table`` float with a booktabs ``tabular`` (needs ``\\usepackage{booktabs}``); best cells in bold,
    the notes in the caption, ``comments`` (e.g. the protocol) as ``%`` lines after it."""
    texts, best = cell_texts(table), best_cells(table)
    spec = "l" * len(table.keys) + "r" * len(table.columns)
    head = [*(latex_escape(k) for k in table.keys),
            *(latex_escape(f"{c.name} {c.arrow}".rstrip()) for c in table.columns)]
    caption = " ".join([table.title + ".", *table.notes])
    lines = ["% Written by cascadevsr report from results parquet; needs \\usepackage{booktabs}.",
             "\\begin{table}[t]", "\\centering", f"\\caption{{{latex_escape(caption)}}}",
             f"\\label{{{label}}}", f"\\begin{{tabular}}{{{spec}}}", "\\toprule", " & ".join(head) + " \\\\",
             "\\midrule"]
    for r, lab in enumerate(table.labels):
        if table.groups is not None and r > 0 and table.groups[r] != table.groups[r - 1]:
            lines.append("\\midrule")
        cells = []
        for c in range(len(table.columns)):
            text = latex_escape(texts[r][c] + table.marks.get((r, c), ""))
            cells.append(f"\\textbf{{{text}}}" if best[r, c] else text)
        lines.append(" & ".join([*(latex_escape(x) for x in lab), *cells]) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    lines += [f"% {line}" for line in comments or []]
    return "\n".join(lines) + "\n"
