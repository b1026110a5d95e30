"""``cascadevsr report``: tables, plots and a leaderboard page from results parquet files, never recomputing
a metric.

Inputs are told apart by their columns (see :mod:`cascadevsr.reports.inputs`): evaluation results are
merged into one leaderboard (files whose protocols disagree on a setting that changes the numbers are
refused unless ``--allow-mixed-protocols``); timestep analyses and noise-augmentation sweeps get their own
plot and table. ``--out DIR`` receives::

    index.md                    everything below, linked, with the leaderboard table inline
    report.json                 the resolved command
    leaderboard.{md,csv,tex}    method × metric (clip means averaged over clips), the protocol under it
    leaderboard.html            self-contained page: sortable tables, protocol, plots embedded
    per_clip.{md,csv,tex}       with --per-clip
    vs_BASELINE.{md,csv,tex}    with --baseline: every method's difference to that method
    bars.png                    one bar panel per metric
    quality_vs_speed.png        metric against seconds per frame, when runtimes exist
    STEM.png, STEM.{md,csv,tex} per analysis input (its file name's stem)
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cascadevsr.errors import UserError
from cascadevsr.reports.protocol import RUNTIME_METRIC

if TYPE_CHECKING:  # the parser is built for every command, so pandas is imported only when a report runs
    import pandas as pd

    from cascadevsr.reports.inputs import Input
    from cascadevsr.reports.leaderboard import Section
    from cascadevsr.reports.tables import Table

log = logging.getLogger(__name__)

FORMATS = ("md", "csv", "tex", "html")
KIND_TITLES = {"results": "evaluation results", "noise_aug": "noise-augmentation sweep",
               "timesteps": "timestep analysis"}
# Analysis tables longer than this are linked from index.md rather than printed in it.
INLINE_ROWS = 20


@dataclass
class ReportConfig:
    """Settings of ``cascadevsr report``.

    Attributes:
        inputs: results parquet files and analysis outputs.
        out: output folder (created; files in it are overwritten).
        formats: table formats among ``md, csv, tex, html`` (html: the leaderboard page).
        metrics: metric columns and their order (default: every score in the inputs, in order).
        baseline: a method to report every other method's difference to.
        per_clip: also write the per-clip table.
        plots: draw the PNG plots.
        allow_mixed_protocols: merge results files whose protocols disagree on settings that change numbers.
        title: heading of index.md and the HTML page.
    """

    inputs: list[Path]
    out: Path
    formats: list[str] = field(default_factory=lambda: list(FORMATS))
    metrics: list[str] | None = None
    baseline: str | None = None
    per_clip: bool = False
    plots: bool = True
    allow_mixed_protocols: bool = False
    title: str = "cascadevsr report"

    def __post_init__(self) -> None:
        problems = []
        if self.metrics is not None:
            # The runtime is a column of its own whenever the results have it, after the scores.
            self.metrics = [m for m in self.metrics if m != RUNTIME_METRIC]
        if not self.inputs:
            problems.append("give at least one input file")
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown:
            problems.append(f"--format: unknown format(s) {unknown}; choose from {', '.join(FORMATS)}")
        if not self.formats:
            problems.append(f"--format: give at least one of {', '.join(FORMATS)}")
        if self.metrics is not None and not self.metrics:
            problems.append("--metrics: give at least one metric besides runtime_s_per_frame")
        if problems:
            raise UserError("; ".join(problems) + ".")
        self.inputs = [Path(p) for p in self.inputs]
        self.out = Path(self.out)


@dataclass
class ReportResult:
    """What a report wrote: every file, and the leaderboard as Markdown (table and notes; None when no
    results file was given)."""

    files: list[Path]
    leaderboard_markdown: str | None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``cascadevsr report``."""
    parser.add_argument("inputs", nargs="+", metavar="RESULTS.parquet",
                        help="results files of `cascadevsr evaluate` (merged into one leaderboard), and/or "
                             "analysis outputs (timestep analysis, noise-augmentation sweep)")
    parser.add_argument("--out", help="output folder")
    parser.add_argument("--format", default=",".join(FORMATS),
                        help=f"comma-separated table formats among {', '.join(FORMATS)} (default all)")
    parser.add_argument("--metrics", help="comma-separated metric columns, in order (default: all in the inputs)")
    parser.add_argument("--baseline", metavar="NAME",
                        help="also tabulate every method's difference to this method (dashed line in the bars)")
    parser.add_argument("--per-clip", action="store_true", help="also write the per-clip table")
    parser.add_argument("--no-plots", dest="plots", action="store_false", help="write tables only")
    parser.add_argument("--allow-mixed-protocols", action="store_true",
                        help="merge results files whose protocols disagree on settings that change the numbers")
    parser.add_argument("--title", default="cascadevsr report", help="title of index.md and the HTML page")


def _split(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def run(args: argparse.Namespace) -> int:
    """Run ``cascadevsr report``."""
    if not args.out:
        raise UserError("--out is required (a folder for the report).")
    cfg = ReportConfig(inputs=[Path(p).expanduser() for p in args.inputs], out=Path(args.out).expanduser(),
                       formats=_split(args.format) or [], metrics=_split(args.metrics), baseline=args.baseline,
                       per_clip=args.per_clip, plots=args.plots, allow_mixed_protocols=args.allow_mixed_protocols,
                       title=args.title)
    print(f"report: {len(cfg.inputs)} input(s) [{', '.join(p.name for p in cfg.inputs)}]; formats "
          f"{','.join(cfg.formats)} → {cfg.out}/", flush=True)
    result = build_report(cfg)
    if result.leaderboard_markdown:
        print(result.leaderboard_markdown)
    print(f"wrote {cfg.out / 'index.md'} and {len(result.files) - 1} other file(s)")
    return 0


# ----------------------------------------------------------------------------------------- the report


def _pick_metrics(wanted: list[str] | None, present: list[str]) -> list[str]:
    """The metrics asked for that an input holds, in the order asked (all it holds when none were asked)."""
    if wanted is None:
        return present
    return [m for m in wanted if m in present]


@dataclass
class _Writer:
    """Writes a report's files into its folder and remembers them."""

    out: Path
    formats: list[str]
    files: list[Path] = field(default_factory=list)

    def write(self, name: str, text: str) -> Path:
        path = self.out / name
        path.write_text(text)
        self.files.append(path)
        return path

    def tables(self, table: Table, stem: str, comments: list[str]) -> list[str]:
        """Write ``table`` in the text formats asked for; Markdown links to what was written."""
        from cascadevsr.reports import tables as T

        links = []
        if "md" in self.formats:
            body = T.to_markdown(table) + ("\n\n" + "\n".join(f"- {c}" for c in comments) if comments else "")
            self.write(f"{stem}.md", f"**{table.title}**\n\n{body}\n")
            links.append(f"[Markdown]({stem}.md)")
        if "csv" in self.formats:
            self.write(f"{stem}.csv", T.to_csv(table))
            links.append(f"[CSV]({stem}.csv)")
        if "tex" in self.formats:
            self.write(f"{stem}.tex", T.to_latex(table, label=f"tab:{stem}", comments=comments))
            links.append(f"[LaTeX]({stem}.tex)")
        return links


def build_report(cfg: ReportConfig) -> ReportResult:
    """Read the inputs, write every table, plot, page and index into ``cfg.out``; see the module docstring."""
    from cascadevsr.reports import leaderboard
    from cascadevsr.reports import tables as T
    from cascadevsr.reports.inputs import merge_results, read_input

    inputs = [read_input(p) for p in cfg.inputs]
    results = [i for i in inputs if i.kind == "results"]
    present = {m for i in inputs if i.kind != "timesteps" for m in T.score_metrics(i.rows)}
    if cfg.metrics is not None:
        missing = [m for m in cfg.metrics if m not in present]
        if missing:
            raise UserError(f"--metrics: '{missing[0]}' is not in the inputs; they hold "
                            f"{', '.join(sorted(present)) or 'no metric rows'}.")
    if cfg.baseline is not None and not results:
        raise UserError("--baseline needs an evaluation results file among the inputs.")
    # Everything that can refuse the inputs runs before the first file is written.
    rows = merge_results(results, cfg.allow_mixed_protocols) if results else None
    methods = list(dict.fromkeys(rows["method"].tolist())) if rows is not None else []
    if cfg.baseline is not None and cfg.baseline not in methods:
        raise UserError(f"--baseline '{cfg.baseline}' is not a method of the results; they hold "
                        f"{', '.join(methods)}.")
    resolved_metrics: dict[str, list[str]] = {}
    if rows is not None:
        order = [m for i in results for m in i.metric_order]
        resolved_metrics["results"] = _pick_metrics(cfg.metrics, T.score_metrics(rows, order))
    for inp in (i for i in inputs if i.kind == "noise_aug"):
        resolved_metrics[str(inp.path)] = _pick_metrics(cfg.metrics, T.score_metrics(inp.rows, inp.metric_order))
        if not resolved_metrics[str(inp.path)]:
            raise UserError(f"{inp.path} holds none of the metrics asked for with --metrics.")

    cfg.out.mkdir(parents=True, exist_ok=True)
    writer = _Writer(cfg.out, cfg.formats)
    index = [f"# {cfg.title}", "",
             "Made by `cascadevsr report` from " + ", ".join(f"`{i.path.name}` ({KIND_TITLES[i.kind]})" for i in inputs)
             + ". Every number is read from these files; none is recomputed. The resolved command is in "
             "[report.json](report.json)"
             + ("; every table and plot is also on one page, [leaderboard.html](leaderboard.html)."
                if "html" in cfg.formats else ".")]
    sections: list[Section] = []
    board_md = None
    if rows is not None:
        lines, more, board_md = _results_part(cfg, writer, results, rows, resolved_metrics["results"])
        index += lines
        sections += more
    stems: set[str] = set()
    for inp in (i for i in inputs if i.kind != "results"):
        stem = _unique(_safe(inp.path.stem), stems)
        lines, section = _analysis_part(cfg, writer, inp, stem, resolved_metrics.get(str(inp.path), []))
        index += lines
        sections.append(section)

    if "html" in cfg.formats:
        writer.write("leaderboard.html", leaderboard.page(cfg.title, sections))
    writer.write("index.md", "\n".join(index).rstrip() + "\n")
    record = _resolved(cfg, inputs, resolved_metrics)
    record["outputs"] = sorted({p.name for p in writer.files} | {"report.json"})
    writer.write("report.json", json.dumps(record, indent=1) + "\n")
    return ReportResult(files=writer.files, leaderboard_markdown=board_md)


def _results_part(cfg: ReportConfig, writer: _Writer, results: list[Input], rows: pd.DataFrame,
                  metrics: list[str]) -> tuple[list[str], list[Section], str]:
    """The leaderboard from the merged results rows: its files, index lines, page sections and Markdown."""
    from cascadevsr.reports import leaderboard, plots
    from cascadevsr.reports import tables as T
    from cascadevsr.reports.protocol import metric_directions, summary_lines

    protocols = [i.protocol for i in results]
    directions = metric_directions(metrics, protocols)
    board = T.leaderboard_table(rows, metrics, directions, _reported_runtimes(protocols))
    proto = summary_lines({i.path.name: i.protocol for i in results})
    board_md = T.to_markdown(board)
    links = writer.tables(board, "leaderboard", proto)
    if "html" in cfg.formats:
        links.append("[HTML](leaderboard.html)")
    index = ["", "## Leaderboard", "", board_md, ""] + (["Also as: " + " · ".join(links), ""] if links else [])
    section = leaderboard.Section("Leaderboard", tables=[board])
    extra = []
    if cfg.baseline is not None:
        extra.append((T.baseline_table(board, cfg.baseline), f"vs_{_safe(cfg.baseline)}"))
    if cfg.per_clip:
        extra.append((T.per_clip_table(rows, metrics, directions), "per_clip"))
    for table, stem in extra:
        more = writer.tables(table, stem, [])
        index += [f"### {table.title}", "", T.to_markdown(table), "", " · ".join(more), ""]
        section.tables.append(table)
    if cfg.plots:
        made = [plots.bars(board, cfg.out / "bars.png", cfg.baseline),
                plots.quality_vs_speed(board, cfg.out / "quality_vs_speed.png")]
        for png in (p for p in made if p is not None):
            writer.files.append(png)
            section.images.append(png)
            index += [f"![]({png.name})", ""]
    index += ["### Protocol", "", *[f"- {line}" for line in proto]]
    return index, [section, leaderboard.Section("Protocol", items=proto)], board_md


def _analysis_part(cfg: ReportConfig, writer: _Writer, inp: Input, stem: str,
                   metrics: list[str]) -> tuple[list[str], Section]:
    """The figure and table of one analysis input: its files, index lines and page section."""
    from cascadevsr.reports import analysis, leaderboard
    from cascadevsr.reports import tables as T
    from cascadevsr.reports.protocol import metric_directions, summary_lines

    heading = f"{KIND_TITLES[inp.kind].capitalize()} (`{inp.path.name}`)"
    section = leaderboard.Section(heading.replace("`", ""))
    comments = summary_lines({inp.path.name: inp.protocol}) if inp.protocol else []
    png = cfg.out / f"{stem}.png"
    if inp.kind == "timesteps":
        table = analysis.timestep_table(inp.rows, inp.density)
        if cfg.plots:
            analysis.plot_timesteps(inp.rows, inp.density, png)
        if inp.density is None:
            comments.append(f"No {inp.path.parent / 'density.json'} beside it: no sampling pdf.")
    else:
        directions = metric_directions(metrics, [inp.protocol])
        table = analysis.noise_table(inp.rows, metrics, directions)
        if cfg.plots:
            analysis.plot_noise(inp.rows, metrics, directions, png)
    links = writer.tables(table, stem, comments)
    index = ["", f"## {heading}", ""]
    if cfg.plots:
        writer.files.append(png)
        section.images.append(png)
        index += [f"![]({png.name})", ""]
    if len(table.labels) <= INLINE_ROWS:
        index += [T.to_markdown(table), ""]
    index += ["Table: " + " · ".join(links), ""] if links else []
    index += (["Protocol:", ""] if inp.protocol else []) + [f"- {c}" for c in comments]
    section.tables.append(table)
    section.items += comments
    return index, section


def _reported_runtimes(protocols: list[dict[str, Any]]) -> dict[str, float]:
    """``method -> runtime_s_per_frame`` that submissions reported in their ``meta.json``."""
    out = {}
    for p in protocols:
        for name, desc in p.get("methods", {}).items():
            value = (desc.get("meta") or {}).get("runtime_s_per_frame")
            if isinstance(value, int | float) and not isinstance(value, bool):
                out[name] = float(value)
    return out


def _safe(name: str) -> str:
    """A file-name-safe version of a method or file name."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name) or "input"


def _unique(stem: str, taken: set[str]) -> str:
    reserved = {"index", "report", "leaderboard", "per_clip", "bars", "quality_vs_speed"}
    out, n = stem, 2
    while out in taken or out in reserved or out.startswith("vs_"):
        out, n = f"{stem}-{n}", n + 1
    taken.add(out)
    return out


def _resolved(cfg: ReportConfig, inputs: list[Input], metrics: dict[str, list[str]]) -> dict[str, Any]:
    """The command as run, with every default filled in, and what each input was read as."""
    argv = ["cascadevsr", "report", *[str(p.resolve()) for p in cfg.inputs], "--out", str(cfg.out.resolve()),
            "--format", ",".join(cfg.formats)]
    if cfg.metrics is not None:
        argv += ["--metrics", ",".join(cfg.metrics)]
    if cfg.baseline is not None:
        argv += ["--baseline", cfg.baseline]
    argv += ["--per-clip"] * cfg.per_clip + ["--no-plots"] * (not cfg.plots)
    argv += ["--allow-mixed-protocols"] * cfg.allow_mixed_protocols + ["--title", cfg.title]
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    settings["inputs"] = [str(p.resolve()) for p in cfg.inputs]
    settings["out"] = str(cfg.out.resolve())
    return {"command": argv, "settings": settings, "metrics": metrics,
            "inputs": [{"path": str(i.path.resolve()), "kind": i.kind, "rows": len(i.rows)} for i in inputs]}
