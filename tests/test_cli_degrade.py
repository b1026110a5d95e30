"""`cascadevsr degrade` on real clips: the files it promises, exact reproducibility, and clean refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import clip_path

from cascadevsr.degrade.pipeline import replay
from cascadevsr.video import probe, read_frames


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cascadevsr", *args], capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def bikes_pair(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "pair"
    res = cli("degrade", str(clip_path("bikes.mp4")), "--preset", "simplegvr_mix", "--seed", "7",
              "--frames", "20:29", "--out", str(out), "--preview")
    assert res.returncode == 0, res.stderr
    return out


def test_degrade_writes_hr_lr_params_and_preview(bikes_pair):
    assert sorted(p.name for p in bikes_pair.iterdir()) == ["hr.mp4", "lr.mp4", "params.json", "preview.png"]
    hr, lr = probe(bikes_pair / "hr.mp4"), probe(bikes_pair / "lr.mp4")
    assert (hr.num_frames, hr.width, hr.height) == (9, 640, 272)
    assert (lr.num_frames, lr.width, lr.height) == (9, 160, 68)
    params = json.loads((bikes_pair / "params.json").read_text())
    assert params["seed"] == 7 and params["preset"] == "simplegvr_mix"
    assert params["source"]["frames"] == [20, 29]
    assert {s["op"] for s in params["steps"]} >= {"blur", "flow"}


def test_stored_lr_is_lossless_and_replays_from_params(bikes_pair):
    params = json.loads((bikes_pair / "params.json").read_text())
    source = read_frames(clip_path("bikes.mp4"), 20, 29)
    assert np.array_equal(read_frames(bikes_pair / "lr.mp4"), replay(source, params))


def test_hr_is_near_lossless(bikes_pair):
    source = read_frames(clip_path("bikes.mp4"), 20, 29).astype(np.float64)
    hr = read_frames(bikes_pair / "hr.mp4").astype(np.float64)
    psnr = 10 * np.log10(255**2 / np.mean((hr - source) ** 2))
    assert psnr > 45


def test_same_seed_writes_identical_lr_bytes(bikes_pair, tmp_path):
    res = cli("degrade", str(clip_path("bikes.mp4")), "--preset", "simplegvr_mix", "--seed", "7",
              "--frames", "20:29", "--out", str(tmp_path / "again"))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "again" / "lr.mp4").read_bytes() == (bikes_pair / "lr.mp4").read_bytes()


def test_list_presets_names_every_preset():
    res = cli("degrade", "--list-presets")
    assert res.returncode == 0
    names = {line.split()[0] for line in res.stdout.splitlines()}
    assert {"realesrgan", "realbasicvsr", "one_order", "flow", "simplegvr_mix"} <= names


def _bad_inputs(tmp: Path) -> dict[str, tuple[list[str], str]]:
    empty = tmp / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    bikes = str(clip_path("bikes.mp4"))
    carphone = str(clip_path("carphone_pristine.mp4"))
    return {
        "missing": ([str(tmp / "nope.mp4")], "nope.mp4"),
        "zero-byte": ([str(empty)], "empty"),
        "not a video": ([str(text)], "notes.mp4"),
        "too short": ([bikes, "--frames", "200:300"], "250 frames"),
        "too small": ([carphone, "--scale", "16"], "too small"),
        "unknown preset": ([bikes, "--preset", "nope"], "unknown preset 'nope'"),
        "bad strength": ([bikes, "--frames", "0:4", "--strength", "2"], "strength must be in"),
        "bad size": ([bikes, "--lr-size", "160by68"], "WxH"),
    }


@pytest.mark.parametrize("case", ["missing", "zero-byte", "not a video", "too short", "too small",
                                  "unknown preset", "bad strength", "bad size"])
def test_bad_input_exits_2_with_one_sentence_and_writes_nothing(case, tmp_path):
    args, needle = _bad_inputs(tmp_path)[case]
    out = tmp_path / "out"
    res = cli("degrade", *args, "--out", str(out))
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert needle in lines[0]
    assert not out.exists() or not any(out.iterdir())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
