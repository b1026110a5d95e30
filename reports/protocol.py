"""What a results file's protocol says: which metric direction is better, whether two files can share a
table, and the lines a report prints under its tables.

The protocol is the record ``cascadevsr evaluate`` stores in a results parquet's metadata (and beside it
as ``OUT.protocol.json``): crop border, colour space, frame subset, each metric's version, options and
weight hashes, and the methods. Reports only read it.
"""

from __future__ import annotations

import json
from typing import Any

RUNTIME_METRIC = "runtime_s_per_frame"
# Rows evaluate writes that are not scores: the estimated shift of an output against the ground truth.
NOT_SCORES = ("align_dx", "align_dy")


def metric_directions(metrics: list[str], protocols: list[dict[str, Any]]) -> dict[str, bool | None]:
    """``metric -> higher_is_better`` (None when unknown) for every name in ``metrics``.

    The protocols are read first, since they record what produced the numbers; names they lack are looked
    up in the metric table of ``cascadevsr.evaluate.metrics``. That module imports torch, so it is loaded
    only when a protocol does not answer. A name neither knows (a metric from another tool) maps to None:
    its column renders with no arrow and no best cell.
    """
    out: dict[str, bool | None] = {}
    for name in metrics:
        if name == RUNTIME_METRIC:
            out[name] = False
            continue
        for p in protocols:
            desc = p.get("metrics", {}).get(name)
            if isinstance(desc, dict) and isinstance(desc.get("lower_better"), bool):
                out[name] = not desc["lower_better"]
                break
    missing = [n for n in metrics if n not in out]
    if missing:
        from cascadevsr.evaluate.metrics import METRICS

        for name in missing:
            spec = METRICS.get(name)
            out[name] = None if spec is None else not spec.lower_better
    return out


def _number_settings(p: dict[str, Any]) -> dict[str, Any]:
    """The run-wide settings of a protocol that change the numbers (not the alignment tolerance, which
    only decides which shifts are flagged)."""
    return {"crop_border": p.get("crop_border"), "frames": p.get("frames")}


def protocol_conflict(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    """The first setting on which two protocols would give different numbers, as ``"what (x vs y)"``,
    or None when they agree. Empty protocols (files written by other tools) agree with everything."""
    if not a or not b:
        return None
    sa, sb = _number_settings(a), _number_settings(b)
    for key in sa:
        if key in a and key in b and sa[key] != sb[key]:
            return f"{key} ({_show(sa[key])} vs {_show(sb[key])})"
    ma, mb = a.get("metrics", {}), b.get("metrics", {})
    for name in sorted(set(ma) & set(mb)):
        for field in ("version", "options", "weights"):
            if ma[name].get(field) != mb[name].get(field):
                return (f"the {field} of metric '{name}' ({_show(ma[name].get(field))} vs "
                        f"{_show(mb[name].get(field))})")
    return None


def _show(value: Any) -> str:
    if isinstance(value, dict) and set(value) == {"start", "end", "step"}:
        return frames_text(value)
    return json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else str(value)


def frames_text(frames: dict[str, Any] | None) -> str:
    """``{"start": 0, "end": 9, "step": 1}`` → ``"frames 0:9 (end excluded)"``, with ``every Nth`` when
    the step is above 1."""
    if not frames:
        return "all frames"
    start, end, step = frames.get("start", 0), frames.get("end"), frames.get("step", 1)
    text = f"frames {start} to the last" if end is None else f"frames {start}:{end} (end excluded)"
    return text + (f", every {step}th" if step and step > 1 else "")


def summary_lines(protocols: dict[str, dict[str, Any]]) -> list[str]:
    """Plain-text lines describing the protocol(s) of the results files, keyed by file name.

    Settings shared by every file are printed once; settings that differ (only possible with
    ``--allow-mixed-protocols``) are printed per file.
    """
    named = {k: p for k, p in protocols.items() if p}
    if not named:
        return ["No protocol is recorded in the input file(s)."]
    lines: list[str] = []

    def per_file(label: str, render) -> None:
        texts = {name: render(p) for name, p in named.items()}
        texts = {k: v for k, v in texts.items() if v}
        if not texts:
            return
        if len(set(texts.values())) == 1:
            lines.append(f"{label}: {next(iter(texts.values()))}")
        else:
            lines.append(f"{label}: " + "; ".join(f"{v} ({k})" for k, v in texts.items()))

    per_file("Frame subset", lambda p: frames_text(p.get("frames")) if "frames" in p else "")
    per_file("Crop border", lambda p: _crop_text(p))
    metrics: dict[str, dict[str, Any]] = {}
    spaces: dict[str, str] = {}
    for p in named.values():
        metrics.update(p.get("metrics", {}))
        spaces.update(p.get("colour_space", {}))
    by_space: dict[str, list[str]] = {}
    for name, space in spaces.items():
        by_space.setdefault(space, []).append(name)
    if by_space:
        lines.append("Colour space: " + "; ".join(f"{', '.join(n)}: {s}" for s, n in by_space.items()))
    for name, desc in metrics.items():
        opts = ", ".join(f"{k}={v}" for k, v in sorted(desc.get("options", {}).items()))
        weights = ", ".join(f"{path} sha256 {sha[:12]}" for path, sha in sorted(desc.get("weights", {}).items()))
        lines.append(f"Metric {name}: version {desc.get('version', '?')}" + (f"; {opts}" if opts else "")
                     + (f"; weights {weights}" if weights else "")
                     + (f"; compares the {desc['compares']}" if desc.get("compares") else ""))
    methods: dict[str, dict[str, Any]] = {}
    for p in named.values():
        methods.update(p.get("methods", {}))
    if methods:
        lines.append("Methods: " + "; ".join(f"{n} ({_method_text(d)})" for n, d in methods.items()))
    # Settings of the analyses (timestep analysis, noise-augmentation sweep).
    per_file("Sampling", _sampling_text)
    for key, label in (("downsample", "LR consistency downsampling"), ("dct", "DCT"),
                       ("high_frequency", "High frequency"), ("variation", "Variation")):
        per_file(label, lambda p, key=key: str(p.get(key, "")))
    per_file("Checkpoint", lambda p: _checkpoint_text(p["checkpoint"]) if isinstance(p.get("checkpoint"), dict)
             else "")
    checkpoints = {n: d for p in named.values() for n, d in (p.get("checkpoints") or {}).items()}
    if checkpoints:
        lines.append("Checkpoints: " + "; ".join(f"{n} (trained on {d.get('train_range', '?')}, "
                                                 f"{_checkpoint_text(d)})" for n, d in checkpoints.items()))
    misaligned = [m for p in named.values() for m in p.get("misaligned", [])]
    for m in misaligned:
        lines.append(f"MISALIGNED: {m['method']} / {m['clip']} is shifted by ({m['dx']:+.2f}, {m['dy']:+.2f}) px "
                     "against the ground truth; its full-reference scores are not comparable")
    per_file("Packages", lambda p: ", ".join(f"{k} {v}" for k, v in sorted(p.get("packages", {}).items())))
    return lines


def _sampling_text(p: dict[str, Any]) -> str:
    if "steps" not in p:
        return ""
    parts = [f"{p['steps']} Euler steps"]
    if p.get("noise_level") is not None:
        parts.append(f"test noise level {p['noise_level']}")
    if p.get("cutoff") is not None:
        parts.append(f"high-pass cut-off {p['cutoff']}")
    if "seed" in p:
        parts.append(f"seed {p['seed']}")
    return ", ".join(parts)


def _checkpoint_text(d: dict[str, Any]) -> str:
    text = str(d.get("file") or d.get("checkpoint") or d.get("path") or "?")
    if d.get("sha256"):
        text += f" sha256 {str(d['sha256'])[:12]}"
    if d.get("step") is not None:
        text += f", step {d['step']}"
    return text


def _crop_text(p: dict[str, Any]) -> str:
    if "crop_border" not in p:
        return ""
    applies = p.get("crop_border_applies_to") or []
    return f"{p['crop_border']} px" + (f" (applies to {', '.join(applies)})" if applies else "")


def _method_text(desc: dict[str, Any]) -> str:
    kind = desc.get("kind", "?")
    up = desc.get("upscaler") or {}
    extra = str(up.get("method") or up.get("model") or up.get("checkpoint") or "")
    if up.get("device"):
        extra += f" on {up['device']}"
    weights = up.get("weights")
    if isinstance(weights, dict) and weights:
        extra += (", " if extra else "") + ", ".join(f"{k} sha256 {str(v)[:12]}" for k, v in sorted(weights.items()))
    return kind + (f": {extra}" if extra else "")
