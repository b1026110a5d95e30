"""The trainer on a small real corpus: loss falls, a killed run resumes on the same trajectory, DDP and Ray
Train keep the global batch, bad samples are skipped and counted, and faults leave the run usable."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import clip_path, shard_with_a_broken_sample

from cascadevsr.datasets.builder import build_corpus, corpus_shards
from cascadevsr.datasets.config import CorpusConfig
from cascadevsr.errors import UserError
from cascadevsr.train import checkpoint
from cascadevsr.train.config import TrainConfig, load_config
from cascadevsr.train.trainer import train

ROOT = Path(__file__).resolve().parents[1]

# The tiny preset shrunk further so a step takes tens of milliseconds on one shared core.
SMALL = ["cpu_threads=1", "model.hidden=48", "model.heads=2", "model.lr_hidden=16", "data.num_frames=9",
         "data.num_workers=0", "log_every=5", "val.steps=4"]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """6 real pairs (2 clips each of bikes, carphone and cityCC0; 9 frames, HR 64x64, LR 16x16, one-order
    degradation), one sample per shard."""
    root = tmp_path_factory.mktemp("train-corpus")
    cfg = CorpusConfig(inputs=tuple(str(clip_path(n)) for n in ("bikes.mp4", "carphone_pristine.mp4",
                                                                 "cityCC0.mpg")),
                       out=str(root / "corpus"), preset="one_order", clip_frames=9, max_clips_per_video=2,
                       hr_size=(64, 64), scale=4.0, samples_per_shard=1, workers=0)
    report = build_corpus(cfg, show_progress=False, announce=None)
    assert report.complete and report.stats["clips"]["samples"] == 6
    return root / "corpus"


def config(corpus: Path | str, *overrides: str):
    return load_config("tiny", overrides=[*SMALL, *overrides, f"data.shards={corpus}"])


def losses(run: Path) -> pd.Series:
    df = pd.read_csv(run / "metrics.csv")
    return df.set_index("step")["loss"]


def cli(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "cascadevsr", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def cli_args(corpus: Path | str, out: Path, *overrides: str) -> list[str]:
    sets = [x for o in [*SMALL, *overrides] for x in ("--set", o)]
    return ["train", "--preset", "tiny", "--data", str(corpus), "--out", str(out), "--no-progress", *sets]


# ------------------------------------------------------------------------------------------- learning


def test_loss_falls_on_real_pairs_and_the_run_folder_is_complete(corpus, tmp_path):
    run = tmp_path / "run"
    cfg = config(corpus, "steps=60", "optim.lr=2e-3", "optim.warmup=5", "val.every=30", "ckpt_every=30")
    summary = train(cfg, run, show_progress=False)
    loss = losses(run)
    assert summary["step"] == 60 and list(loss.index) == list(range(1, 61))
    assert loss.iloc[-15:].mean() < 0.8 * loss.iloc[:5].mean()
    val = pd.read_csv(run / "val.csv")
    assert list(val.step) == [0, 30, 60]
    assert val.val_loss.iloc[-1] < val.val_loss.iloc[0]  # fixed held-out draws: a clean comparison
    assert val.bicubic_psnr.nunique() == 1 and val.val_psnr.notna().all()
    # The saved config is the one that ran; the checkpoint is what `cascadevsr upscale` reads.
    assert TrainConfig.from_dict(json.loads((run / "config.json").read_text())) == cfg
    from cascadevsr.train.model import load_checkpoint

    _, state = load_checkpoint(run / "best")
    assert state["step"] == 60 and state["ema"] is not None and state["data"]["index"] > 0
    assert sorted(p.name for p in run.glob("step-*")) == ["step-00000030", "step-00000060"]
    assert len(list((run / "samples").glob("*.mp4"))) == 3
    from cascadevsr.cli import main

    assert main(["train", "--plot", str(run)]) == 0
    assert (run / "curves.png").stat().st_size > 10_000


def test_killed_run_resumes_on_the_same_loss_trajectory(corpus, tmp_path):
    overrides = ("steps=16", "ckpt_every=4", "keep_last=2", "val.every=0", "data.num_workers=1",
                 "global_batch=4", "micro_batch=2")
    straight = tmp_path / "straight"
    train(config(corpus, *overrides), straight, show_progress=False)

    killed = tmp_path / "killed"
    proc = cli(*cli_args(corpus, killed, *overrides))
    deadline = time.time() + 120
    while checkpoint.latest_checkpoint(killed) is None:
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.stdout else ""
        time.sleep(0.05)
    time.sleep(random.uniform(0.0, 0.6))  # anywhere in the next steps, possibly mid-save
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = [s for s, _ in checkpoint.list_checkpoints(killed)]
    assert done and done[-1] < 16, "the run finished before it was killed"
    for _, file in checkpoint.list_checkpoints(killed):  # every numbered folder holds a whole checkpoint
        assert checkpoint.load(file)["step"] == int(file.parent.name[5:])

    resumed = cli(*cli_args(corpus, killed, *overrides))
    out, _ = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, out
    assert f"resumed from {killed}/step-{done[-1]:08d}" in out
    a, b = losses(straight), losses(killed)
    assert list(b.index) == list(range(1, 17))  # rows logged after the checkpoint by the killed run were replaced
    torch.testing.assert_close(torch.tensor(b.values), torch.tensor(a.values), rtol=1e-5, atol=1e-6)


def test_two_gloo_ddp_processes_match_one_process_with_the_same_global_batch(corpus, tmp_path):
    # One clip, whole frames, no flips: both layouts see the same data, so only the gradient arithmetic differs.
    shard = corpus_shards(corpus)[0]
    overrides = ("steps=5", "ckpt_every=5", "val.every=0", "data.crop_size=16", "data.hflip=false",
                 "global_batch=2", "micro_batch=1")
    single = tmp_path / "single"
    train(config(shard, *overrides), single, show_progress=False)  # 1 rank x 1 x 2 accumulation

    ddp = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-port", str(29500 + os.getpid() % 1000), "-m", "cascadevsr",
                           *cli_args(shard, ddp, *overrides)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 rank(s) x 1 x 1 accumulation" in done.stdout
    torch.testing.assert_close(torch.tensor(losses(ddp).values), torch.tensor(losses(single).values),
                               rtol=1e-5, atol=1e-6)
    a, b = checkpoint.load(single), checkpoint.load(ddp)
    for key in a["model"]:
        torch.testing.assert_close(b["model"][key], a["model"][key], rtol=1e-4, atol=1e-6)
    assert len(b["data"]) == 2  # one data position per rank


def test_ray_train_with_two_workers_completes(corpus, tmp_path):
    run = tmp_path / "ray"
    proc = cli(*cli_args(corpus, run, "steps=4", "ckpt_every=2", "val.every=0", "global_batch=2",
                         "micro_batch=1"), "--ray", "--num-workers", "2")
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out[-3000:]
    assert "2 rank(s) x 1 x 1 accumulation" in out
    assert list(losses(run).index) == [1, 2, 3, 4]
    assert checkpoint.load(run)["step"] == 4


# ---------------------------------------------------------------------------------------- bad input


def test_a_corrupt_sample_is_skipped_and_counted_and_training_goes_on(corpus, tmp_path):
    shard = shard_with_a_broken_sample(corpus, tmp_path / "mixed.tar")
    run = tmp_path / "run"
    summary = train(config(shard, "steps=6", "val.every=0", "global_batch=2", "micro_batch=2",
                           "data.shuffle_buffer=1"), run, show_progress=False)
    assert summary["step"] == 6
    assert summary["skipped"] >= 1
    assert pd.read_csv(run / "metrics.csv").skipped.iloc[-1] == summary["skipped"]


def test_missing_or_empty_shards_are_refused_up_front(corpus, tmp_path):
    empty = tmp_path / "empty.tar"
    empty.write_bytes(b"")
    good = corpus_shards(corpus)[0]
    for data, words in ((tmp_path / "nowhere", "does not exist"), (f"{good},{empty}", "missing or empty"),
                        (f"{good},{tmp_path / 'gone.tar'}", "missing or empty"), (tmp_path, "no finished")):
        with pytest.raises(UserError, match=words):
            train(config(data, "steps=1", "val.every=0"), tmp_path / "run", show_progress=False)


def test_a_checkpoint_from_another_config_is_refused_naming_the_keys(corpus, tmp_path):
    run = tmp_path / "run"
    train(config(corpus, "steps=2", "ckpt_every=2", "val.every=0"), run, show_progress=False)
    other = config(corpus, "steps=4", "val.every=0", "optim.lr=3e-3", "model.depth=3")
    with pytest.raises(UserError, match=r"another config.*model\.depth: 2 -> 3.*optim\.lr: 0\.001 -> 0\.003"):
        train(other, run, show_progress=False)
    # Changing only how long it runs or how often it logs is a resume, not another config.
    assert train(config(corpus, "steps=3", "ckpt_every=1", "val.every=0", "log_every=1"), run,
                 show_progress=False)["step"] == 3


def test_out_of_disk_while_saving_keeps_the_previous_checkpoint(corpus, tmp_path, monkeypatch):
    run = tmp_path / "run"
    real_save = torch.save
    calls = {"n": 0}

    def full_disk(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] >= 2:  # the second save runs out of space half way through
            f.write(b"x" * 1000)
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    summary = train(config(corpus, "steps=4", "ckpt_every=2", "val.every=0"), run, show_progress=False)
    monkeypatch.undo()
    assert summary["step"] == 4  # training went on
    assert [s for s, _ in checkpoint.list_checkpoints(run)] == [2]
    assert checkpoint.load(run)["step"] == 2
    assert not list(run.glob(".*.tmp"))


def test_stage_presets_chain_through_init_from(corpus, tmp_path):
    first = tmp_path / "stage1"
    train(config(corpus, "steps=3", "ckpt_every=3", "val.every=3", "val.at_start=false"), first,
          show_progress=False)
    second = tmp_path / "stage2"
    train(config(corpus, "steps=1", "val.every=1", "init_from=stage1"), second, show_progress=False)
    # Step 0 of stage 2 validates stage 1's EMA weights on the same held-out draws.
    assert pd.read_csv(second / "val.csv").val_loss.iloc[0] == pytest.approx(
        pd.read_csv(first / "val.csv").val_loss.iloc[-1], rel=1e-6)


def test_cached_latents_are_written_beside_the_shards_and_spare_the_video_decode(corpus, tmp_path):
    cache = tmp_path / "cache"
    overrides = ("data.latents=cache", f"data.cache_dir={cache}", "val.every=0", "global_batch=2", "micro_batch=2")
    train(config(corpus, "steps=6", *overrides), tmp_path / "fill", show_progress=False)
    cached = {p.stem for p in cache.glob("*.npz")}
    assert cached
    with np.load(next(cache.glob("*.npz"))) as z:  # whole clips in the tiny codec (space factor 2)
        assert z["hr"].shape[-3:] == (3, 32, 32) and z["lr"].shape[-3:] == (3, 8, 8)
    # The same samples with unreadable videos: training reads the cache only, so nothing is skipped.
    garbled = []
    for path in corpus_shards(corpus):
        with tarfile.open(path) as tar:
            members = [(m.name, tar.extractfile(m).read()) for m in tar]
        if members[0][0].split(".")[0] not in cached:
            continue
        out = tmp_path / Path(path).name
        with tarfile.open(out, "w") as tar:
            for name, data in members:
                data = b"garbage" if name.endswith(".mp4") else data
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        garbled.append(str(out))
    summary = train(config(",".join(garbled), "steps=4", *overrides), tmp_path / "warm", show_progress=False)
    assert summary["skipped"] == 0 and summary["step"] == 4


def test_gradient_checkpointing_keeps_the_losses_and_bf16_autocast_trains(corpus, tmp_path):
    base = ("steps=3", "val.every=0", "global_batch=2", "micro_batch=2")
    train(config(corpus, *base), tmp_path / "plain", show_progress=False)
    train(config(corpus, *base, "grad_checkpointing=true"), tmp_path / "recompute", show_progress=False)
    torch.testing.assert_close(torch.tensor(losses(tmp_path / "recompute").values),
                               torch.tensor(losses(tmp_path / "plain").values), rtol=1e-5, atol=1e-6)
    train(config(corpus, *base, "precision=bf16"), tmp_path / "bf16", show_progress=False)
    torch.testing.assert_close(torch.tensor(losses(tmp_path / "bf16").values),
                               torch.tensor(losses(tmp_path / "plain").values), rtol=0.05, atol=0.02)


def test_latents_stored_by_build_corpus_with_the_same_codec_are_used_as_they_are(tmp_path):
    cfg = CorpusConfig(inputs=(str(clip_path("carphone_pristine.mp4")),), out=str(tmp_path / "corpus"),
                       preset="one_order", clip_frames=9, max_clips_per_video=2, hr_size=(64, 64), scale=4.0,
                       samples_per_shard=1, workers=0,
                       latent_codec='{"name": "pixel", "space_factor": 2, "time_factor": 4}')
    assert build_corpus(cfg, show_progress=False, announce=None).complete
    cache = tmp_path / "cache"
    summary = train(config(tmp_path / "corpus", "steps=2", "val.every=0", "global_batch=2", "micro_batch=2",
                           "data.latents=cache", f"data.cache_dir={cache}"), tmp_path / "run", show_progress=False)
    assert summary["step"] == 2 and summary["skipped"] == 0
    assert not cache.exists()  # nothing had to be encoded
