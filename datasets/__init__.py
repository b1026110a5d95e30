"""Corpus builder and loaders: videos → clip specs → Ray shard tasks → WebDataset shards → training batches.

Layering (each module imports only those above it):
    config    CorpusConfig, the one frozen settings dataclass
    sources   reader: inputs, scans (frame counts, scene cuts), clip plan, HR framing, filters
    shard     worker: process_shard(spec) -> ShardResult, the sample format
    builder   distributor: lock, plan, Ray or plain-loop execution, manifest and stats
    loader    pair_loader: shards → aligned LR/HR crops for training
    summary, command   --inspect / --preview and the build-corpus CLI
"""

from __future__ import annotations

from typing import Any

# Imported on first use so that a shard worker does not pay for torch, nor the CLI parser for Ray.
_EXPORTS = {
    "CorpusConfig": "cascadevsr.datasets.config",
    "build_corpus": "cascadevsr.datasets.builder",
    "corpus_shards": "cascadevsr.datasets.builder",
    "process_shard": "cascadevsr.datasets.shard",
    "ShardSpec": "cascadevsr.datasets.shard",
    "ShardResult": "cascadevsr.datasets.shard",
    "pair_loader": "cascadevsr.datasets.loader",
    "pair_dataset": "cascadevsr.datasets.loader",
    "summarize": "cascadevsr.datasets.summary",
    "write_previews": "cascadevsr.datasets.summary",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        from importlib import import_module

        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cascadevsr.datasets' has no attribute '{name}'")
