"""`cascadevsr build-corpus` on real clips: bad inputs become failures, a killed build resumes to exactly the
same corpus, the same seed gives the same bytes, and a real Ray cluster joined by --address builds it too."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import clip_path, real_crop

from cascadevsr.datasets.config import CorpusConfig
from cascadevsr.datasets.loader import decode_clip
from cascadevsr.datasets.sources import (
    clip_measures,
    clip_starts,
    filter_rejection,
    fit_hr,
    plan_clips,
    scan_source,
)
from cascadevsr.errors import UserError
from cascadevsr.video import read_frames, write_video

# One small corpus, built several ways: 2 real clips, 4 clips each of 9 frames at 96x96, one clip per shard.
SETTINGS = ["--preset", "realbasicvsr", "--hr-size", "96x96", "--clip-frames", "9",
            "--max-clips-per-video", "4", "--samples-per-shard", "1", "--seed", "3", "--no-progress"]
EXPECTED_SHARDS = 8


@pytest.fixture(scope="module")
def ray_env():
    """Environment for commands that start Ray: quiet, no token files, sessions in a short private folder
    (Ray's socket paths must stay under ~100 characters)."""
    tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_TMPDIR=tmp, RAY_USAGE_STATS_ENABLED="0",
               TQDM_DISABLE="1")
    yield env
    shutil.rmtree(tmp, ignore_errors=True)


def build(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cascadevsr", "build-corpus", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def sources() -> list[str]:
    return [str(clip_path("bikes.mp4")), str(clip_path("carphone_pristine.mp4"))]


def tar_samples(corpus: Path) -> dict[str, dict[str, bytes]]:
    """Every sample of every shard tar, by key; fails on a duplicate key or an unreadable tar."""
    samples: dict[str, dict[str, bytes]] = {}
    for tar_path in sorted(corpus.glob("shard-*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                entry = samples.setdefault(key, {"__shard__": tar_path.stem.encode()})
                assert ext not in entry, f"{key}.{ext} appears twice"
                entry[ext] = tar.extractfile(member).read()
    return samples


def check_consistent(corpus: Path) -> dict[str, dict[str, bytes]]:
    """No temporary file left; every tar opens; every sample decodes; manifest rows match the tars."""
    assert not list(corpus.glob("*.tmp")), "temporary files left behind"
    samples = tar_samples(corpus)
    manifest = pd.read_parquet(corpus / "manifest.parquet")
    ok = manifest[manifest["status"] == "ok"]
    assert sorted(ok["key"]) == sorted(samples)
    for row in ok.itertuples(index=False):
        sample = samples[row.key]
        assert sample["__shard__"].decode() == row.shard
        params = json.loads(sample["params.json"])
        n = row.end - row.start
        assert decode_clip(sample["hr.mp4"]).shape == (n, 96, 96, 3)
        assert decode_clip(sample["lr.mp4"]).shape == (n, 24, 24, 3)
        assert params["source"]["frames"] == [row.start, row.end] and params["seed"] == int(row.seed)
    return samples


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The small corpus built in one process, no Ray (the plain loop over the same shard function)."""
    out = tmp_path_factory.mktemp("ref") / "corpus"
    res = build("--input", *sources(), "--out", str(out), "--workers", "0", *SETTINGS)
    assert res.returncode == 0, res.stderr
    return out


# ------------------------------------------------------------------------------------------- bad input


def test_bad_inputs_are_recorded_as_failures_and_every_good_clip_lands_in_a_shard(tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    shutil.copy(clip_path("carphone_pristine.mp4"), folder / "carphone.mp4")
    shutil.copy(clip_path("bikes.mp4"), folder / "bikes.mp4")
    data = clip_path("bikes.mp4").read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "notes.mp4").write_text("meeting notes, not a video\n")
    write_video(folder / "short.mp4", read_frames(clip_path("bikes.mp4"), 0, 5), 25.0)  # 5 < --clip-frames 9
    out = tmp_path / "corpus"

    res = build("--input", str(folder), "--out", str(out), "--workers", "0", *SETTINGS)

    assert res.returncode == 0, res.stderr
    manifest = pd.read_parquet(out / "manifest.parquet")
    failures = manifest[manifest["status"] == "failed"]
    failures = failures.set_index(failures["source"].map(lambda p: Path(p).name))
    assert set(failures.index) == {"truncated.mp4", "empty.mp4", "notes.mp4", "short.mp4"}
    assert "empty" in failures.loc["empty.mp4", "reason"]
    assert "truncated" in failures.loc["truncated.mp4", "reason"]
    assert "not a video" in failures.loc["notes.mp4", "reason"]
    assert "too short: 5 frames" in failures.loc["short.mp4", "reason"]
    samples = check_consistent(out)
    plan = pd.read_parquet(out / "plan.parquet")
    assert len(samples) == len(plan) == 8  # 4 clips of each good video, none lost
    assert {Path(p).name for p in plan["source"]} == {"bikes.mp4", "carphone.mp4"}
    stats = json.loads((out / "stats.json").read_text())
    assert stats["complete"] and stats["clips"]["samples"] == 8 and stats["sources"]["unusable"] == 4
    assert "skipped" in stats["filters"]["musiq"]  # no MUSIQ weights on this machine: skipped, and said so


def test_a_missing_input_path_is_refused_in_one_sentence(tmp_path):
    res = build("--input", str(tmp_path / "nowhere"), "--out", str(tmp_path / "c"), "--workers", "0")
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "is not a folder, a file, a glob" in res.stderr


# ------------------------------------------------------------------------------------------ determinism


def test_same_seed_gives_byte_identical_shards_with_ray_or_a_plain_loop(reference, tmp_path, ray_env):
    out = tmp_path / "again"
    res = build("--input", *sources(), "--out", str(out), "--workers", "2", *SETTINGS, env=ray_env)
    assert res.returncode == 0, res.stderr
    assert len(list(reference.glob("shard-*.tar"))) == EXPECTED_SHARDS
    for tar in sorted(reference.glob("shard-*.tar")):
        assert (out / tar.name).read_bytes() == tar.read_bytes(), tar.name
    check_consistent(out)


def test_a_different_seed_gives_different_degradations(reference, tmp_path):
    out = tmp_path / "other"
    settings = [a if a != "3" else "4" for a in SETTINGS]
    assert build("--input", *sources(), "--out", str(out), "--workers", "0", *settings).returncode == 0
    a, b = tar_samples(reference), tar_samples(out)
    assert sorted(a) == sorted(b)  # same clips (keys depend on source and frames only) ...
    assert all(a[k]["hr.mp4"] == b[k]["hr.mp4"] for k in a)  # ... same HR ...
    assert sum(a[k]["lr.mp4"] != b[k]["lr.mp4"] for k in a) == len(a)  # ... other LR


def test_rerunning_into_a_corpus_with_other_settings_is_refused(reference):
    res = build("--input", *sources(), "--out", str(reference), "--workers", "0",
                *[a if a != "realbasicvsr" else "one_order" for a in SETTINGS])
    assert res.returncode == 2 and "preset" in res.stderr and "another --out" in res.stderr


def test_rerunning_a_finished_build_rewrites_nothing(reference):
    before = {p.name: p.stat().st_mtime_ns for p in reference.glob("shard-*")}
    res = build("--input", *sources(), "--out", str(reference), "--workers", "0", *SETTINGS)
    assert res.returncode == 0, res.stderr
    assert "8 already done" in res.stdout
    assert {p.name: p.stat().st_mtime_ns for p in reference.glob("shard-*")} == before


# ------------------------------------------------------------------------------------------ kill, resume


def session_pids(sid: int) -> list[int]:
    """Processes of session ``sid`` (a command started with start_new_session, and everything it spawned)."""
    ps = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout.split("\n")
    return [int(p) for p, s in (line.split() for line in ps if line.strip()) if int(s) == sid]


def end_session(sid: int, grace: float = 3.0) -> None:
    """Give the processes of session ``sid`` ``grace`` seconds to exit, then kill the rest by id (Ray's
    dashboard and runtime-env agents outlive a killed driver)."""
    deadline = time.monotonic() + grace
    while session_pids(sid) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in session_pids(sid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_a_build_killed_halfway_resumes_to_exactly_the_uninterrupted_corpus(reference, tmp_path, ray_env):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "cascadevsr", "build-corpus", "--input", *sources(), "--out", str(out),
           "--workers", "1", *SETTINGS]
    proc = subprocess.Popen(cmd, env=ray_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("shard-*.json")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert proc.poll() is None, "the build ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        end_session(proc.pid)
    finished = len(list(out.glob("shard-*.json")))
    assert 1 <= finished < EXPECTED_SHARDS and not (out / "stats.json").exists()

    res = build(*cmd[4:], env=ray_env)

    assert res.returncode == 0, res.stderr
    assert f"{finished} already done" in res.stdout
    samples = check_consistent(out)
    assert sorted(samples) == sorted(tar_samples(reference))
    for tar in sorted(reference.glob("shard-*.tar")):
        assert (out / tar.name).read_bytes() == tar.read_bytes(), tar.name


# ------------------------------------------------------------------------------------------ Ray cluster


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
            return
        time.sleep(0.5)
    raise AssertionError(f"the Ray head node did not listen on port {port} within {timeout} s")


def test_a_build_joins_a_real_ray_cluster_through_address(reference, tmp_path, ray_env):
    port = free_port()
    ray_bin = Path(sys.executable).parent / "ray"
    head = subprocess.Popen([str(ray_bin), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                             "--num-cpus=2", f"--temp-dir={ray_env['RAY_TMPDIR']}",
                             "--include-dashboard=false", "--disable-usage-stats", "--block"],
                            env=ray_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        wait_for_port(port, timeout=90)  # a loaded machine takes a while to bring a head node up
        out = tmp_path / "cluster"
        res = build("--input", *sources(), "--out", str(out), "--address", f"127.0.0.1:{port}", *SETTINGS,
                    env=ray_env)
        assert res.returncode == 0, res.stderr
        assert f"Ray cluster 127.0.0.1:{port}" in res.stdout
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        end_session(head.pid)
        head.wait(30)
    check_consistent(out)
    for tar in sorted(reference.glob("shard-*.tar")):
        assert (out / tar.name).read_bytes() == tar.read_bytes(), tar.name


def test_a_latent_codec_stores_latents_that_decode_to_the_stored_clips(tmp_path):
    import torch

    from cascadevsr.latent import make_codec

    out = tmp_path / "latents"
    res = build("--input", str(clip_path("carphone_pristine.mp4")), "--out", str(out), "--workers", "0",
                "--hr-size", "64x64", "--clip-frames", "9", "--max-clips-per-video", "2",
                "--preset", "one_order", "--latent-codec", "pixel", "--no-progress")
    assert res.returncode == 0, res.stderr
    codec = make_codec("pixel")
    samples = tar_samples(out)
    assert len(samples) == 2
    for sample in samples.values():
        assert set(sample) == {"__shard__", "hr.mp4", "lr.mp4", "params.json", "hr_latent.npy", "lr_latent.npy"}
        # Only presets with a model-guided step say where the LR latent came from; here it is always encoded,
        # and the samples keep the bytes they had before that record existed.
        assert "lr_latent_source" not in json.loads(sample["params.json"])
        hr, lr = (np.load(io.BytesIO(sample[f"{side}_latent.npy"])) for side in ("hr", "lr"))
        assert hr.dtype == lr.dtype == np.float32
        assert hr.shape == (192, 3, 16, 16) and lr.shape == (192, 3, 4, 4)  # (C, (9 - 1) / 4 + 1, h, w)
        # LR is stored losslessly, so its latent decodes back to exactly the stored LR clip.
        back = codec.decode(torch.from_numpy(lr)).permute(0, 2, 3, 1).numpy()  # (T, H, W, 3)
        assert np.array_equal(np.rint(back * 255).astype(np.uint8), decode_clip(sample["lr.mp4"]))
    bad = build("--input", str(clip_path("carphone_pristine.mp4")), "--out", str(tmp_path / "bad"),
                "--workers", "0", "--hr-size", "64x64", "--clip-frames", "8", "--latent-codec", "pixel")
    assert bad.returncode == 2 and "--clip-frames 8 does not fit --latent-codec" in bad.stderr


# ------------------------------------------------------------------------------------------ inspect


def test_inspect_summarises_the_corpus_and_preview_writes_pngs(reference, tmp_path):
    res = subprocess.run([sys.executable, "-m", "cascadevsr", "build-corpus", "--inspect", str(reference),
                          "--preview", "2", "--preview-out", str(tmp_path / "png")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "samples   8 in 8 shard(s)" in res.stdout and "realbasicvsr (8)" in res.stdout
    assert "HR 96x96 / LR 24x24" in res.stdout and "failures  0" in res.stdout
    pngs = sorted((tmp_path / "png").glob("*.png"))
    assert len(pngs) == 2 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


# ------------------------------------------------------------------------------------- sources, filters


def test_scene_cuts_of_bikes_are_found_and_no_clip_spans_one():
    scan = scan_source(str(clip_path("bikes.mp4")), 0.2)
    assert scan.ok and scan.num_frames == 250
    assert scan.cuts == (30, 76, 137, 187, 242)  # the five hard cuts, checked by eye
    cfg = CorpusConfig(inputs=("x",), out="y", clip_frames=17, stride=8, hr_size=(128, 128))
    clips, failures = plan_clips([scan], cfg)
    assert not failures and clips
    for clip in clips:
        assert not any(clip.start < cut < clip.end for cut in scan.cuts)
    assert [c.start for c in clips] == clip_starts(scan.shots, 17, 8)


def test_a_clip_seed_depends_on_corpus_seed_source_and_frames_only():
    scan = scan_source(str(clip_path("carphone_pristine.mp4")), 0.2)
    a, _ = plan_clips([scan], CorpusConfig(inputs=("x",), out="y", seed=1, hr_size=(64, 64)))
    b, _ = plan_clips([scan], CorpusConfig(inputs=("z",), out="w", seed=1, hr_size=(96, 128),
                                           preset="one_order"))
    c, _ = plan_clips([scan], CorpusConfig(inputs=("x",), out="y", seed=2, hr_size=(64, 64)))
    assert len(a) == 7
    assert [x.seed for x in a] == [x.seed for x in b]
    assert len({x.seed for x in a}) == len(a) and all(x.seed != y.seed for x, y in zip(a, c, strict=True))


def test_a_source_smaller_than_the_hr_size_fails_once_unless_upscaling_is_allowed():
    scan = scan_source(str(clip_path("carphone_pristine.mp4")), 0.2)  # 176x144
    clips, failures = plan_clips([scan], CorpusConfig(inputs=("x",), out="y", hr_size=(192, 320)))
    assert not clips and failures[0]["reason"].startswith("too small: 176x144 < --hr-size 320x192")
    clips, failures = plan_clips([scan], CorpusConfig(inputs=("x",), out="y", hr_size=(192, 320),
                                                      allow_upscale=True))
    assert clips and not failures


def test_filters_reject_dark_and_blurry_clips_and_keep_a_sharp_real_clip():
    import cv2

    cfg = CorpusConfig(inputs=("x",), out="y")
    frames = real_crop("cityCC0.mpg", 40, 10, 100, 200, (128, 128))
    sharp = clip_measures(frames, cfg, None)
    assert filter_rejection(sharp, cfg) is None and sharp["laplacian_var"] > 30
    dark = (frames // 16).astype(np.uint8)
    assert filter_rejection(clip_measures(dark, cfg, None), cfg).startswith("brightness: too dark")
    bright = np.clip(frames.astype(int) + 230, 0, 255).astype(np.uint8)
    assert filter_rejection(clip_measures(bright, cfg, None), cfg).startswith("brightness: too bright")
    blurry = np.stack([cv2.GaussianBlur(f, (0, 0), 6) for f in frames])
    assert filter_rejection(clip_measures(blurry, cfg, None), cfg).startswith("laplacian: too blurry")


def test_hr_framing_resizes_to_cover_or_crops_at_native_resolution(carphone_frames):
    rng = np.random.default_rng(0)
    resized, rec = fit_hr(carphone_frames, (64, 96), "resize", False, rng)
    assert resized.shape == (8, 64, 96, 3) and rec["resize_to"] == [79, 96]
    cropped, rec = fit_hr(carphone_frames, (64, 96), "crop", False, rng)
    top, left, h, w = rec["crop"]
    assert np.array_equal(cropped, carphone_frames[:, top : top + h, left : left + w])
    with pytest.raises(ValueError, match="smaller than --hr-size"):
        fit_hr(carphone_frames, (288, 352), "resize", False, rng)


def test_settings_are_validated_all_at_once_naming_each_flag():
    with pytest.raises(UserError) as err:
        CorpusConfig(inputs=("x",), out="y", clip_frames=0, hr_size=(90, 160), scale=4.0, strength=2.0)
    message = str(err.value)
    assert "--clip-frames" in message and "--hr-size 160x90 must be divisible by --scale 4" in message
    assert "--strength" in message


def test_stored_params_regenerate_the_lr_clip(reference):
    from cascadevsr.degrade.pipeline import replay

    sample = next(iter(tar_samples(reference).values()))
    params = json.loads(sample["params.json"])
    source = read_frames(params["source"]["path"], *params["source"]["frames"])
    hr, _ = fit_hr(source, tuple(params["hr_size"]), params["hr_framing"]["mode"], False,
                   np.random.default_rng(0))
    assert np.array_equal(replay(hr, params), decode_clip(sample["lr.mp4"]))
    assert set(params["versions"]) >= {"cascadevsr", "numpy", "opencv", "av"} and params["corpus_seed"] == 3
