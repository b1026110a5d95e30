"""Device names from the command line, checked once: one clear sentence instead of a CUDA traceback."""

from __future__ import annotations

from typing import Any

from cascadevsr.errors import UserError

CHOICES = "cpu, cuda, cuda:N or auto"


def resolve_device(name: str, flag: str = "--device") -> Any:
    """``auto`` → the GPU when CUDA is available, else the CPU; other names as torch spells them.

    Raises:
        UserError: a name torch does not know, or a CUDA device this machine does not have.
    """
    import torch

    text = str(name).strip()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise UserError(f"{flag} {text!r} is not a device; use {CHOICES}.") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only torch build" if torch.version.cuda is None else "no visible CUDA device"
            raise UserError(f"{flag} {text} asked for, but this machine has {build}; use {flag} cpu.")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UserError(f"{flag} {text} asked for, but this machine has {count} CUDA device(s).")
    return device
