"""Report inputs: results parquet files, merged into one set of rows, and analysis outputs, told apart by
their columns.

Kinds (by the columns a file has):

* ``results``: ``method, clip, frame, metric, value`` (``cascadevsr evaluate``); ``frame`` null for
  clip-level values; the protocol in the parquet metadata or in ``FILE.protocol.json`` beside it.
* ``noise_aug``: the same columns plus ``train_range`` (e.g. ``"0.3-0.6"``) and ``test_level`` (float),
  the noise-augmentation sweep (one model per training range, scored at several test noise levels).
* ``timesteps``: ``clip, step, t_from, t_to, variation``, the timestep analysis (high-frequency change of
  the predicted clean signal over the sampling steps; rows of clip ``mean`` hold each step's mean over
  clips), with ``density.json`` beside it (``{"edges": [K+1 values from 0 to 1], "pdf": [K non-negative
  weights]}``).
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cascadevsr.errors import UserError
from cascadevsr.reports.protocol import protocol_conflict

RESULTS_COLUMNS = ("method", "clip", "frame", "metric", "value")
NOISE_COLUMNS = ("train_range", "test_level")
TIMESTEP_COLUMNS = ("clip", "step", "t_from", "t_to", "variation")
# The metadata key under which cascadevsr.evaluate.run stores the protocol (its PROTOCOL_KEY); spelled out
# here so that reading a report's inputs does not import the evaluation stage (and torch).
PROTOCOL_KEY = b"cascadevsr.protocol"
DENSITY_FILE = "density.json"
# The clip name of the rows a timestep analysis adds with each step's mean over clips
# (cascadevsr.evaluate.timesteps.MEAN_CLIP).
TIMESTEP_MEAN_CLIP = "mean"


@dataclass
class Input:
    """One input file of a report.

    Attributes:
        path: the file.
        kind: ``results``, ``noise_aug`` or ``timesteps`` (see the module docstring).
        rows: its rows, with the column types of its kind.
        protocol: the evaluation protocol it records (empty when it records none).
        density: the timestep analysis' sampling density (``timesteps`` only; None when absent).
        metric_order: the metrics in the order the run was asked for (from ``FILE.config.json`` beside it,
            which evaluation runs and sweeps write); empty when unknown.
    """

    path: Path
    kind: str
    rows: pd.DataFrame
    protocol: dict[str, Any]
    density: dict[str, list[float]] | None = None
    metric_order: list[str] = field(default_factory=list)


def read_input(path: str | Path) -> Input:
    """Read and classify one report input; anything unreadable or of unknown shape is a ``UserError``."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"input file {path} does not exist.")
    if not path.is_file():
        raise UserError(f"input {path} is not a file; give results .parquet files.")
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"cannot read {path} as parquet ({reason}).") from None
    cols = set(table.column_names)
    protocol = _protocol(table, path)
    if set(RESULTS_COLUMNS) <= cols and set(NOISE_COLUMNS) <= cols:
        rows = table.to_pandas()
        rows = _results_types(rows)
        rows["train_range"] = rows["train_range"].astype("string")
        rows["test_level"] = rows["test_level"].astype("float64")
        return Input(path, "noise_aug", rows, protocol, metric_order=_metric_order(path))
    if set(RESULTS_COLUMNS) <= cols:
        rows = _results_types(table.to_pandas())[list(RESULTS_COLUMNS)]
        return Input(path, "results", rows, protocol, metric_order=_metric_order(path))
    if set(TIMESTEP_COLUMNS) <= cols:
        rows = table.to_pandas().astype({"clip": "string", "step": "int64", "t_from": "float64",
                                         "t_to": "float64", "variation": "float64"})
        return Input(path, "timesteps", rows, protocol, _density(path.parent / DENSITY_FILE))
    raise UserError(f"{path} is neither an evaluation results file (columns {', '.join(RESULTS_COLUMNS)}), "
                    f"a noise-augmentation sweep (those plus {', '.join(NOISE_COLUMNS)}) nor a timestep "
                    f"analysis (columns {', '.join(TIMESTEP_COLUMNS)}).")


def _results_types(rows: pd.DataFrame) -> pd.DataFrame:
    return rows.astype({"method": "string", "clip": "string", "frame": "Int64", "metric": "string",
                        "value": "float64"})


def _protocol(table: pa.Table, path: Path) -> dict[str, Any]:
    raw = (table.schema.metadata or {}).get(PROTOCOL_KEY)
    if raw:
        return json.loads(raw)
    beside = path.with_name(path.name + ".protocol.json")
    if beside.is_file():
        try:
            return json.loads(beside.read_text())
        except json.JSONDecodeError as err:
            raise UserError(f"{beside} is not valid JSON ({err.msg} at line {err.lineno}).") from None
    return {}


def _metric_order(path: Path) -> list[str]:
    """The ``metrics`` list of the run's ``FILE.config.json``, or [] (the rows are stored sorted by name)."""
    config = path.with_name(path.name + ".config.json")
    try:
        metrics = json.loads(config.read_text()).get("metrics") if config.is_file() else None
    except (json.JSONDecodeError, AttributeError):
        return []  # an unreadable side file only loses the column order
    return [str(m) for m in metrics] if isinstance(metrics, list) else []


def _density(path: Path) -> dict[str, list[float]] | None:
    """The sampling density beside a timestep analysis, checked; None when there is none."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}).") from None
    if not isinstance(data, dict) or "edges" not in data or "pdf" not in data:
        raise UserError(f"{path} must be a JSON object with 'edges' and 'pdf'.")
    edges, pdf = [float(v) for v in data["edges"]], [float(v) for v in data["pdf"]]
    if len(edges) != len(pdf) + 1 or not pdf:
        raise UserError(f"{path} needs K+1 edges for K pdf values, got {len(edges)} and {len(pdf)}.")
    if edges[0] != 0.0 or edges[-1] != 1.0 or any(b <= a for a, b in itertools.pairwise(edges)):
        raise UserError(f"{path}: the edges must increase strictly from 0 to 1.")
    if any(not math.isfinite(v) or v < 0 for v in pdf) or sum(pdf) <= 0:
        raise UserError(f"{path}: the pdf values must be finite, non-negative and not all zero.")
    return {"edges": edges, "pdf": pdf}


def merge_results(inputs: list[Input], allow_mixed: bool = False) -> pd.DataFrame:
    """The rows of several results files as one table.

    Files whose protocols would give different numbers for the same output are refused (naming the
    setting) unless ``allow_mixed``. A (method, clip, frame, metric) present in two files must carry the
    same value in both; it is then kept once.
    """
    if not allow_mixed:
        for i, a in enumerate(inputs):
            for b in inputs[i + 1:]:
                conflict = protocol_conflict(a.protocol, b.protocol)
                if conflict:
                    raise UserError(f"{a.path.name} and {b.path.name} were computed under different protocols: "
                                    f"{conflict}; report them separately or pass --allow-mixed-protocols.")
    frames = []
    for inp in inputs:
        frames.append(inp.rows.assign(_file=inp.path.name))
    rows = pd.concat(frames, ignore_index=True)
    key = list(RESULTS_COLUMNS[:4])
    dup = rows[rows.duplicated(subset=key, keep=False)]
    if not dup.empty:
        spread = dup.groupby(key, dropna=False)["value"].agg(lambda v: v.max() - v.min() if v.notna().any() else 0.0)
        bad = spread[spread.fillna(1.0) > 0]
        if not bad.empty:
            method, clip, _, metric = bad.index[0]
            files = sorted(dup[(dup["method"] == method) & (dup["clip"] == clip)
                               & (dup["metric"] == metric)]["_file"].unique())
            raise UserError(f"method '{method}' has different '{metric}' values for clip '{clip}' in "
                            f"{' and '.join(files)}; give each method's results once.")
    rows = rows.drop_duplicates(subset=key, keep="first").drop(columns="_file")
    return rows.reset_index(drop=True)
