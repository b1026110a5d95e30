"""Process groups for the trainer: one process, torchrun (DDP), or Ray Train workers.

* ``torchrun --nproc-per-node N -m cascadevsr train ...`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` and a
  rendezvous address; :func:`setup` joins the group (NCCL on GPUs, gloo on CPU).
* ``cascadevsr train --ray --num-workers N [--address HOST:PORT]`` starts Ray Train's ``TorchTrainer``
  (:func:`launch_ray`); Ray creates the process group before our loop runs, and :func:`setup` adopts it.

Either way the trainer sees the same :class:`Dist` and keeps the configured global batch
(ranks × micro-batch × accumulation steps).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Dist:
    """Where this process sits: rank, world size, local rank and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: Any  # torch.device
    owns_group: bool  # whether teardown() should destroy the process group

    @property
    def main(self) -> bool:
        """Rank 0 writes checkpoints, logs and samples."""
        return self.rank == 0


def pick_device(name: str, local_rank: int) -> Any:
    """``auto`` -> this rank's GPU when CUDA is available, else the CPU."""
    import torch

    from cascadevsr.devices import resolve_device

    device = resolve_device(name, flag="device")
    if device.type == "cuda" and device.index is None:
        device = resolve_device(f"cuda:{local_rank}", flag="device")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def setup(device: str = "auto") -> Dist:
    """Join (or adopt) the process group described by the environment; a single process needs none."""
    import torch.distributed as td

    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if td.is_available() and td.is_initialized():  # Ray Train (or a caller) made the group
        dev = pick_device(device, local_rank)
        return Dist(td.get_rank(), td.get_world_size(), local_rank, dev, owns_group=False)
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world == 1:
        return Dist(0, 1, 0, pick_device(device, 0), owns_group=False)
    dev = pick_device(device, local_rank)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    td.init_process_group(backend=backend, device_id=dev if dev.type == "cuda" else None)
    return Dist(td.get_rank(), td.get_world_size(), local_rank, dev, owns_group=True)


def teardown(dist: Dist) -> None:
    """Destroy the process group if :func:`setup` created it."""
    import torch.distributed as td

    if dist.owns_group and td.is_initialized():
        td.destroy_process_group()


def all_reduce_mean(values: list[float], dist: Dist) -> list[float]:
    """Mean over ranks of a few floats (one collective)."""
    if dist.world_size == 1:
        return values
    import torch
    import torch.distributed as td

    t = torch.tensor(values, dtype=torch.float64, device=dist.device)
    td.all_reduce(t)
    return (t / dist.world_size).tolist()


def barrier(dist: Dist) -> None:
    """Wait for every rank (no-op for one process)."""
    if dist.world_size > 1:
        import torch.distributed as td

        td.barrier()


def broadcast_object(obj: Any, dist: Dist) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if dist.world_size == 1:
        return obj
    import torch.distributed as td

    box = [obj]
    td.broadcast_object_list(box, src=0)
    return box[0]


# ------------------------------------------------------------------------------------------ Ray Train


def _ray_worker(config: dict[str, Any]) -> None:
    """Ray Train's per-worker entry point: the ordinary training loop on Ray's process group."""
    from cascadevsr.train.config import TrainConfig
    from cascadevsr.train.trainer import train

    cfg = TrainConfig.from_dict(config["cfg"])
    if cfg.device == "auto":
        import ray.train.torch

        cfg.device = str(ray.train.torch.get_device())
    train(cfg, config["run_dir"], resume=config["resume"], show_progress=config["show_progress"])


def launch_ray(cfg: Any, run_dir: str | Path, resume: str, num_workers: int, address: str | None = None,
               use_gpu: bool | None = None, show_progress: bool = True) -> None:
    """Run :func:`cascadevsr.train.trainer.train` on ``num_workers`` Ray Train workers.

    Every worker must see ``run_dir`` and the shards at the same paths (shared storage across nodes);
    rank 0 writes the run folder as in any other mode. Ray's own results go to ``RUN/ray/``.
    """
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from cascadevsr.errors import UserError

    run_dir = Path(run_dir).absolute()
    if not ray.is_initialized():
        # Workers inherit the driver's environment; runtime_env keeps cascadevsr importable on every node.
        ray.init(address=address, include_dashboard=False, log_to_driver=True)
    if use_gpu is None:
        use_gpu = cfg.device != "cpu" and ray.cluster_resources().get("GPU", 0) >= num_workers
    scaling = ScalingConfig(num_workers=num_workers, use_gpu=use_gpu, resources_per_worker={"CPU": 1})
    trainer = TorchTrainer(
        _ray_worker,
        train_loop_config={"cfg": cfg.to_dict(), "run_dir": str(run_dir), "resume": resume,
                           "show_progress": show_progress},
        scaling_config=scaling,
        run_config=RunConfig(name="ray", storage_path=str(run_dir)),
    )
    result = trainer.fit()
    if getattr(result, "error", None) is not None:
        raise UserError(f"Ray Train run failed: {result.error}")
