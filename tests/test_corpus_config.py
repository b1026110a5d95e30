"""`cascadevsr build-corpus --config FILE [--set key=value]`: a YAML file of CorpusConfig keys builds a corpus,
explicit flags override the file and --set overrides both, every bad key or value is named with where it came
from, and the config.json a build saves rebuilds the same bytes."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest
import yaml
from conftest import clip_path

from cascadevsr.cli import main
from cascadevsr.datasets.command import add_arguments, config_from_args
from cascadevsr.datasets.config import CorpusConfig, load_corpus_config, to_yaml
from cascadevsr.errors import UserError

EXAMPLE = Path(__file__).resolve().parents[1] / "datasets" / "configs" / "example.yaml"


def tiny_settings(out: Path) -> dict:
    """One real clip, two 5-frame clips at 64x64, one per shard, in this process: a build of ~2 s."""
    return {"inputs": [str(clip_path("carphone_pristine.mp4"))], "out": str(out), "clip_frames": 5,
            "hr_size": "64x64", "max_clips_per_video": 2, "samples_per_shard": 1, "workers": 0, "seed": 3}


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def resolve(*argv: str) -> CorpusConfig:
    """The config `build-corpus ARGV` would build, resolved in this process."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return config_from_args(parser.parse_args(list(argv)))


def error_of(capsys, *argv: str) -> str:
    """The one-line error of a `build-corpus` command that must fail as bad input (exit code 2)."""
    assert main(["build-corpus", *argv]) == 2
    return capsys.readouterr().err.strip()


def shard_bytes(corpus: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(corpus.glob("shard-*.tar"))}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    """A corpus built from a config file alone, and that file."""
    folder = tmp_path_factory.mktemp("cfg")
    config = write_yaml(folder / "corpus.yaml", tiny_settings(folder / "corpus"))
    assert main(["build-corpus", "--config", str(config), "--no-progress"]) == 0
    return folder / "corpus", config


# ---------------------------------------------------------------------------------------------- building


def test_a_config_file_alone_builds_the_corpus_and_saves_the_resolved_settings(built):
    corpus, config = built
    assert len(shard_bytes(corpus)) == 2 and (corpus / "manifest.parquet").exists()
    saved = json.loads((corpus / "config.json").read_text())
    assert saved == load_corpus_config(config).to_dict()
    assert saved["hr_size"] == [64, 64] and saved["clip_frames"] == 5 and saved["out"] == str(corpus)


def test_the_saved_config_rebuilds_the_same_bytes_elsewhere_and_resumes_in_place(built, tmp_path, capsys):
    corpus, _ = built
    saved = corpus / "config.json"
    again = tmp_path / "again"
    assert main(["build-corpus", "--config", str(saved), "--out", str(again), "--no-progress"]) == 0
    assert shard_bytes(again) == shard_bytes(corpus)

    capsys.readouterr()
    assert main(["build-corpus", "--config", str(saved), "--no-progress"]) == 0
    assert "2 clips in 2 shards (2 already done)" in capsys.readouterr().out


def test_resuming_with_other_content_settings_is_refused_and_run_settings_may_change(built, capsys):
    corpus, _ = built
    saved = str(corpus / "config.json")
    message = error_of(capsys, "--config", saved, "--set", "seed=4", "--no-progress")
    assert "built with other settings (seed differ)" in message
    assert main(["build-corpus", "--config", saved, "--set", "shard_retries=3", "--no-progress"]) == 0


# -------------------------------------------------------------------------------------------- precedence


def test_a_flag_overrides_the_file_and_set_overrides_both(tmp_path):
    config = write_yaml(tmp_path / "corpus.yaml", tiny_settings(tmp_path / "corpus"))
    assert resolve("--config", str(config)).seed == 3
    assert resolve("--config", str(config), "--seed", "4").seed == 4
    cfg = resolve("--config", str(config), "--seed", "4", "--set", "seed=5", "--hr-size", "96x64")
    assert cfg.seed == 5 and cfg.hr_size == (64, 96)
    cfg = resolve("--config", str(config), "--hr-size", "96x64", "--set", "hr_size=[128, 128]")
    assert cfg.hr_size == (128, 128)
    # unmentioned keys keep the file's value, and keys the file lacks keep the defaults
    assert cfg.clip_frames == 5 and cfg.preset == CorpusConfig.preset


def test_a_later_layer_giving_lr_size_or_scale_replaces_the_other(tmp_path):
    config = write_yaml(tmp_path / "corpus.yaml", {**tiny_settings(tmp_path / "c"), "scale": 2})
    cfg = resolve("--config", str(config), "--lr-size", "32x16")
    assert cfg.scale is None and cfg.lr_size == (16, 32)
    cfg = resolve("--config", str(config), "--lr-size", "32x16", "--set", "scale=4")
    assert cfg.scale == 4.0 and cfg.lr_size is None


def test_relative_paths_are_taken_from_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write_yaml(tmp_path / "corpus.yaml", {"inputs": "videos", "out": "corpus"})
    cfg = resolve("--config", "corpus.yaml", "--set", "preset=presets/mine.yaml")
    assert cfg.inputs == (str(tmp_path / "videos"),) and cfg.out == str(tmp_path / "corpus")
    assert cfg.preset == str(tmp_path / "presets" / "mine.yaml")
    assert config.exists()
    # a VAE folder too, in both spellings of --latent-codec; the weightless pixel codec has none
    assert resolve("--config", "corpus.yaml", "--latent-codec", "wan:models/vae").latent_codec == (
        f"wan:{tmp_path / 'models' / 'vae'}")
    as_json = resolve("--config", "corpus.yaml", "--set", "latent_codec={name: wan, path: vae}").latent_codec
    assert json.loads(as_json) == {"name": "wan", "path": str(tmp_path / "vae")}
    assert resolve("--config", "corpus.yaml", "--latent-codec", "pixel").latent_codec == "pixel"


def test_dry_run_prints_yaml_that_loads_back_to_the_same_config(tmp_path, capsys):
    config = write_yaml(tmp_path / "corpus.yaml", tiny_settings(tmp_path / "corpus"))
    set_codec = "latent_codec={name: pixel}"
    assert main(["build-corpus", "--config", str(config), "--set", set_codec, "--dry-run"]) == 0
    printed = tmp_path / "printed.yaml"
    printed.write_text(capsys.readouterr().out)
    cfg = load_corpus_config(printed)
    assert cfg == load_corpus_config(config, overrides=[set_codec]) and to_yaml(cfg) == printed.read_text()
    assert json.loads(cfg.latent_codec) == {"name": "pixel"}
    assert not (tmp_path / "corpus").exists()


def test_the_example_config_lists_every_setting_at_its_default():
    data = yaml.safe_load(EXAMPLE.read_text())
    assert list(data) != [] and set(data) == {f.name for f in dataclasses.fields(CorpusConfig)}
    cfg = load_corpus_config(EXAMPLE)
    defaults = CorpusConfig(inputs=cfg.inputs, out=cfg.out)
    assert cfg == defaults


# -------------------------------------------------------------------------------------------- bad input


def test_an_unknown_key_is_named_with_its_layer_and_the_closest_key(tmp_path, capsys):
    config = write_yaml(tmp_path / "corpus.yaml", {**tiny_settings(tmp_path / "c"), "clip_frame": 9})
    message = error_of(capsys, "--config", str(config))
    assert message.endswith(f"unknown key 'clip_frame' in {config} (did you mean 'clip_frames'?).")
    good = write_yaml(tmp_path / "good.yaml", tiny_settings(tmp_path / "c"))
    assert "unknown key 'sead' in --set sead=1 (did you mean 'seed'?)" in error_of(
        capsys, "--config", str(good), "--set", "sead=1")


def test_a_bad_value_is_named_by_key_with_the_layer_that_gave_it(tmp_path, capsys):
    settings = tiny_settings(tmp_path / "c")
    config = write_yaml(tmp_path / "corpus.yaml", {**settings, "clip_frames": "five"})
    assert f"clip_frames must be an integer, got 'five' (in {config})" in error_of(capsys, "--config", str(config))

    config = write_yaml(tmp_path / "corpus.yaml", {**settings, "clip_frames": 0, "hr_size": [90, 160]})
    message = error_of(capsys, "--config", str(config))
    assert f"clip_frames must be >= 1, got 0 (in {config})" in message
    assert f"hr_size 160x90 must be divisible by scale 4 so that HR = scale x LR exactly (in {config})" in message

    good = write_yaml(tmp_path / "good.yaml", settings)
    assert "strength must be in [0, 1], got 2.0 (in --set strength=2)" in error_of(
        capsys, "--config", str(good), "--set", "strength=2")
    assert "hr_size must be a size WxH" in error_of(capsys, "--config", str(good), "--set", "hr_size=big")
    # values given as flags keep their flag's name
    assert "--strength must be in [0, 1], got 2.0" in error_of(capsys, "--config", str(good), "--strength", "2")


def test_a_config_file_that_is_missing_or_not_a_mapping_is_refused(tmp_path, capsys):
    assert "config file" in error_of(capsys, "--config", str(tmp_path / "none.yaml"))
    listing = tmp_path / "list.yaml"
    listing.write_text("- clip_frames: 5\n")
    assert "must hold a mapping of settings" in error_of(capsys, "--config", str(listing))
    with pytest.raises(UserError, match="give --input PATHS and --out DIR"):
        load_corpus_config(write_yaml(tmp_path / "half.yaml", {"seed": 1}))
