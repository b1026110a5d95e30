"""Look at a built corpus: a text summary from its manifest and stats, and PNG strips of random samples."""

from __future__ import annotations

import json
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from cascadevsr.errors import UserError


def _load(corpus: Path) -> tuple[Any, dict[str, Any]]:
    import pandas as pd

    if not (corpus / "manifest.parquet").exists():
        if (corpus / "config.json").exists():
            raise UserError(f"{corpus} has no manifest yet: its build did not finish; rerun the same "
                            f"build-corpus command to complete it.")
        raise UserError(f"{corpus} is not a corpus folder (no manifest.parquet).")
    stats = json.loads((corpus / "stats.json").read_text()) if (corpus / "stats.json").exists() else {}
    return pd.read_parquet(corpus / "manifest.parquet"), stats


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TB"


def summarize(corpus: str | Path, max_failures: int = 20) -> str:
    """A human summary: samples, shards, presets, sizes, filter rejections and failures with reasons."""
    corpus = Path(corpus)
    manifest, stats = _load(corpus)
    ok = manifest[manifest["status"] == "ok"]
    rejected = manifest[manifest["status"] == "rejected"]
    failed = manifest[manifest["status"] == "failed"]
    shards = stats.get("shards", {})
    state = "complete" if stats.get("complete") else "INCOMPLETE (rerun the build to finish)"
    unusable = stats.get("sources", {}).get("unusable", 0)
    lines = [
        f"corpus {corpus}: {state}",
        f"  samples   {len(ok)} in {ok['shard'].nunique()} shard(s) of {shards.get('total', '?')} planned; "
        f"HR {_size(float(ok['hr_bytes'].sum()))}, LR {_size(float(ok['lr_bytes'].sum()))}",
        f"  sources   {manifest['source'].nunique()} ({unusable} unusable)",
        "  presets   " + ", ".join(f"{p} ({n})" for p, n in Counter(ok["preset"]).most_common()),
    ]
    if len(ok):
        sizes = Counter(zip(ok["hr_size"], ok["lr_size"], strict=True)).most_common()
        lines.append("  sizes     " + ", ".join(f"HR {h} / LR {lr} ({n})" for (h, lr), n in sizes))
        frames = (ok["end"] - ok["start"]).astype(int)
        lines.append(f"  frames    {int(frames.min())}-{int(frames.max())} per clip, "
                     f"{int(frames.sum())} in all")
    kinds = Counter(r.split(":")[0] for r in rejected["reason"])
    detail = " (" + ", ".join(f"{k} {n}" for k, n in kinds.items()) + ")" if kinds else ""
    lines.append(f"  rejected  {len(rejected)}{detail}")
    musiq = stats.get("filters", {}).get("musiq")
    if isinstance(musiq, str):
        lines.append(f"  musiq     {musiq}")
    lines.append(f"  failures  {len(failed)}")
    for row in failed.head(max_failures).itertuples(index=False):
        where = f"{Path(row.source).name}" + (f" [{row.start}:{row.end}]" if row.key else "")
        lines.append(f"    {where}: {row.reason}")
    if len(failed) > max_failures:
        lines.append(f"    ... and {len(failed) - max_failures} more (see manifest.parquet)")
    if throughput := stats.get("throughput"):
        lines.append(f"  last run  {throughput.get('clips_this_run', 0)} clips in "
                     f"{throughput.get('shard_seconds', 0):.1f} s "
                     f"({throughput.get('clips_per_s', 0):.2f} clips/s)")
    return "\n".join(lines)


def read_sample(tar_path: str | Path, key: str) -> dict[str, bytes]:
    """The members of sample ``key`` in a shard, by extension (``hr.mp4``, ``lr.mp4``, ``params.json``)."""
    out: dict[str, bytes] = {}
    with tarfile.open(tar_path) as tar:
        for member in tar:
            stem, _, ext = member.name.partition(".")
            if stem == key:
                fh = tar.extractfile(member)
                if fh is not None:
                    out[ext] = fh.read()
    if not out:
        raise UserError(f"sample {key} is not in {tar_path}.")
    return out


def write_previews(corpus: str | Path, count: int, out: str | Path | None = None,
                   seed: int = 0) -> list[Path]:
    """Write ``count`` PNG strips (HR | LR upsampled | motion) of randomly chosen samples; returns the paths.

    The choice is seeded, so the same call previews the same samples.
    """
    from cascadevsr.datasets.loader import decode_clip
    from cascadevsr.degrade.preview import write_preview

    corpus = Path(corpus)
    manifest, _ = _load(corpus)
    ok = manifest[manifest["status"] == "ok"].reset_index(drop=True)
    if ok.empty:
        raise UserError(f"{corpus} holds no samples to preview.")
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(len(ok), size=min(count, len(ok)), replace=False).tolist())
    folder = Path(out) if out else corpus / "preview"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for i in pick:
        row = ok.iloc[i]
        sample = read_sample(corpus / f"{row['shard']}.tar", row["key"])
        path = folder / f"{row['key']}.png"
        write_preview(path, decode_clip(sample["hr.mp4"]), decode_clip(sample["lr.mp4"]))
        written.append(path)
    return written
