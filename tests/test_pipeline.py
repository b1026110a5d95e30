"""Degradation pipelines: presets are validated data; a seed and a record each reproduce a clip exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cascadevsr.degrade.pipeline import (
    degrade_clip,
    derive_seed,
    list_presets,
    load_preset,
    lr_size_for,
    replay,
)
from cascadevsr.errors import UserError

SHIPPED = ["flow", "one_order", "realbasicvsr", "realesrgan", "simplegvr_mix"]


def test_every_required_preset_ships():
    assert set(SHIPPED) <= set(list_presets())


@pytest.mark.parametrize("name", SHIPPED)
def test_each_preset_turns_a_real_clip_into_a_pair_of_the_requested_size(name, bikes_frames):
    pair = degrade_clip(bikes_frames, load_preset(name), seed=3, scale=4)
    assert pair.lr.shape == (8, 32, 48, 3) and pair.lr.dtype == np.uint8
    assert pair.hr.shape == (8, 128, 192, 3)
    json.dumps(pair.record)  # the record is plain JSON
    assert not np.array_equal(pair.lr, replay(bikes_frames, {**pair.record, "steps": []}))


@pytest.mark.parametrize("name", SHIPPED)
def test_same_seed_gives_identical_lr_and_other_seed_differs(name, city_frames):
    preset = load_preset(name)
    a = degrade_clip(city_frames, preset, seed=11, scale=2)
    b = degrade_clip(city_frames, preset, seed=11, scale=2)
    c = degrade_clip(city_frames, preset, seed=12, scale=2)
    assert a.lr.tobytes() == b.lr.tobytes()
    assert a.record == b.record
    assert a.record["steps"] != c.record["steps"]


@pytest.mark.parametrize("name", SHIPPED)
def test_replaying_a_saved_record_regenerates_the_clip_bit_for_bit(name, bikes_frames):
    pair = degrade_clip(bikes_frames, load_preset(name), seed=5, scale=4)
    saved = json.loads(json.dumps(pair.record))
    assert replay(bikes_frames, saved).tobytes() == pair.lr.tobytes()


def test_strength_zero_degrades_less_than_strength_one(city_frames):
    preset = load_preset("realbasicvsr")
    hr = city_frames.astype(np.float32)
    errs = {}
    for s in (0.0, 1.0):
        vals = []
        for seed in range(4):
            pair = degrade_clip(city_frames, preset, seed=seed, strength=s, scale=2)
            import cv2

            up = np.stack([cv2.resize(f, (128, 128), interpolation=cv2.INTER_CUBIC) for f in pair.lr])
            vals.append(np.mean((up.astype(np.float32) - hr) ** 2))
        errs[s] = float(np.mean(vals))
    assert errs[0.0] < errs[1.0]


def test_non_integer_lr_size_is_honoured(city_frames):
    pair = degrade_clip(city_frames, load_preset("one_order"), seed=0, lr_size=(45, 50))
    assert pair.lr.shape[1:3] == (45, 50) and pair.hr.shape[1:3] == (128, 128)


def test_integer_scale_crops_hr_to_an_exact_multiple(carphone_frames):
    pair = degrade_clip(carphone_frames, load_preset("one_order"), seed=0, scale=5)
    assert pair.lr.shape[1:3] == (28, 35) and pair.hr.shape[1:3] == (140, 175)


def test_realesrgan_hr_side_is_unsharp_masked(city_frames):
    pair = degrade_clip(city_frames, load_preset("realesrgan"), seed=0, scale=4)
    assert pair.record["hr_transform"] == "usm"
    # sharpening adds high-frequency energy
    def hf(x):
        return float(np.abs(np.diff(x.astype(np.float32), axis=2)).mean())

    assert hf(pair.hr) > hf(city_frames)


def test_frames_too_small_for_the_scale_are_refused_with_one_sentence():
    with pytest.raises(UserError, match="too small"):
        lr_size_for((40, 60), scale=4)


@pytest.mark.parametrize("bad, message", [
    ({"steps": [{"op": "blurr"}]}, "unknown op 'blurr'"),
    ({"steps": [{"op": "jpeg", "qualty": [95, 30]}]}, r"unknown parameter\(s\) \['qualty'\]"),
    ({"steps": [{"op": "noise", "prob": 1.5}]}, "prob must be a number in"),
    ({"steps": [{"op": "preset", "name": "bad"}]}, "includes itself"),
    ({"steps": "blur"}, "must be a mapping with a 'steps' list"),
    ({"steps": [], "hr_transform": "sharpen"}, "unknown hr_transform"),
])
def test_bad_presets_name_the_problem(tmp_path, bad, message):
    import yaml

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(UserError, match=message):
        load_preset(str(path))


def test_unknown_preset_name_lists_the_choices():
    with pytest.raises(UserError, match="unknown preset 'nope'; choose from"):
        load_preset("nope")


def test_derived_seeds_are_stable_and_distinct():
    assert derive_seed(0, "a.mp4", 0, 17) == derive_seed(0, "a.mp4", 0, 17)
    assert derive_seed(0, "a.mp4", 0, 17) != derive_seed(0, "a.mp4", 17, 34)
    assert 0 <= derive_seed("x") < 2**63
