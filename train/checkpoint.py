"""Training checkpoints: one dict per numbered folder, written atomically, pruned to the last k.

Layout of a run folder::

    RUN/config.json                 the run's TrainConfig (checked again on resume)
    RUN/step-00001000/checkpoint.pt one dict (below); the folder appears only once complete
    RUN/best/checkpoint.pt          the checkpoint with the best validation number so far
    RUN/.step-00002000.tmp/         a save in progress (or one that a crash or a full disk interrupted)

A save writes into ``.step-N.tmp/`` and renames it to ``step-N/``: a rename within a folder is atomic, so
``step-*`` folders always hold a whole checkpoint and a process killed at any moment leaves at worst a
``.tmp`` folder, removed by the next save. When writing fails (no space left on the device), the temporary
folder is removed and the earlier checkpoints are untouched.

The dict is a superset of the model checkpoint that ``cascadevsr upscale`` reads (``format``,
``model_config``, ``model``, ``ema``, ``step``; see ``cascadevsr.train.model``), plus ``optimizer``,
``scheduler``, ``scaler``, ``rng`` (torch / CUDA / numpy / python states), ``data`` (position in the
sample stream), ``best`` (the best validation value and its step) and ``config`` (the whole TrainConfig).
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STEP_DIR = re.compile(r"^step-(\d{8})$")
FILE = "checkpoint.pt"


def step_dir(run_dir: Path, step: int) -> Path:
    """``RUN/step-00001234``."""
    return Path(run_dir) / f"step-{step:08d}"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete numbered checkpoints of a run, oldest first, as ``(step, file)``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = []
    for d in run_dir.iterdir():
        m = STEP_DIR.match(d.name)
        if m and (d / FILE).is_file():
            found.append((int(m.group(1)), d / FILE))
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint file of a run, or None."""
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def resolve(path: str | Path) -> Path:
    """A checkpoint file from a file, a ``step-*`` folder or a run folder (its latest)."""
    from cascadevsr.errors import UserError

    path = Path(path).expanduser()
    if path.is_file():
        return path
    if (path / FILE).is_file():
        return path / FILE
    latest = latest_checkpoint(path)
    if latest is None:
        raise UserError(f"no checkpoint at {path} (expected a checkpoint.pt, a step-* folder or a run folder "
                        "holding step-*/checkpoint.pt)")
    return latest


def _write(state: dict[str, Any], final: Path) -> None:
    """Write ``state`` as ``final/checkpoint.pt`` through ``.final.tmp/`` and one rename."""
    import torch

    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with open(tmp / FILE, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name says the checkpoint is complete
        if final.exists():  # re-saving a step (or replacing best/): move the old one aside first
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save(run_dir: str | Path, state: dict[str, Any], step: int, keep_last: int, best: bool = False) -> Path | None:
    """Save ``state`` as ``RUN/step-NNNNNNNN/`` (and ``RUN/best/`` when ``best``), then prune to ``keep_last``.

    Returns the new folder, or None when writing failed with an ``OSError`` (a full disk, a quota): that is
    logged and training goes on, since the previous checkpoint is still whole.
    """
    run_dir = Path(run_dir)
    final = step_dir(run_dir, step)
    try:
        _write(state, final)
        if best:
            best_dir = run_dir / "best"
            tmp = run_dir / ".best.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            try:  # a hard link costs no space; a copy where links are not supported
                os.link(final / FILE, tmp / FILE)
            except OSError:
                shutil.copyfile(final / FILE, tmp / FILE)
            old = run_dir / ".best.old"
            shutil.rmtree(old, ignore_errors=True)
            if best_dir.exists():
                best_dir.rename(old)
            tmp.rename(best_dir)
            shutil.rmtree(old, ignore_errors=True)
    except OSError as err:
        log.error("could not save the checkpoint of step %d in %s: %s; the previous checkpoint is kept",
                  step, run_dir, err)
        return None
    prune(run_dir, keep_last)
    return final


def prune(run_dir: str | Path, keep_last: int) -> None:
    """Remove all but the newest ``keep_last`` numbered checkpoints (``best/`` is separate)."""
    for _, file in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(file.parent, ignore_errors=True)


def read_file(file: Path) -> Any:
    """``torch.load`` of a checkpoint file on the CPU; a truncated or foreign file raises a ``UserError``."""
    import torch

    from cascadevsr.errors import UserError

    try:
        return torch.load(file, map_location="cpu", weights_only=False)
    except Exception as err:  # say which file and why, whatever the unpickler tripped on
        raise UserError(f"cannot read checkpoint {file}: it is truncated or not a torch checkpoint "
                        f"({type(err).__name__}: {err})") from None


def load(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint dict (on the CPU); an unreadable file raises a ``UserError`` naming it."""

    from cascadevsr.errors import UserError

    file = resolve(path)
    state = read_file(file)
    if not isinstance(state, dict) or "model" not in state:
        raise UserError(f"{file} is not a cascadevsr training checkpoint")
    state["_file"] = str(file)
    return state


# ----------------------------------------------------------------------------------------------- RNG


def rng_state() -> dict[str, Any]:
    """The global random states of torch (CPU and CUDA), numpy and python."""
    import numpy as np
    import torch

    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
