"""The training config: presets, YAML and --set overrides, one sentence naming every bad key; checkpoints'
atomic folders; the train command's errors."""

from __future__ import annotations

import pytest
import torch

from cascadevsr.cli import main
from cascadevsr.errors import UserError
from cascadevsr.train import checkpoint
from cascadevsr.train.config import PRESETS, TrainConfig, config_differences, load_config
from cascadevsr.train.trainer import lr_factor


def test_presets_follow_the_paper_and_chain_their_stages():
    cfgs = {name: load_config(name) for name in PRESETS}
    for cfg in cfgs.values():
        assert TrainConfig.from_dict(cfg.to_dict()) == cfg  # a round trip through config.json
    s1, s2, s3 = cfgs["stage1"], cfgs["stage2"], cfgs["stage3"]
    assert (s1.optim.lr, s1.global_batch, s1.model.noise_aug, s1.model.text_dropout) == (5e-5, 32, (0.3, 0.6), 0.1)
    assert (s1.data.num_frames, s1.steps, s1.data.expect_presets) == (17, 20000, ["one_order"])
    assert (s2.steps, s2.init_from, s2.data.num_frames) == (5000, "stage1", 17)
    assert (s3.data.num_frames, s3.model.attention, s3.model.unit, s3.init_from) == (77, "sparse_local", 5, "stage2")
    assert cfgs["tiny"].model.hidden < cfgs["small"].model.hidden < s1.model.hidden


def test_yaml_files_and_set_overrides_load_into_the_tree(tmp_path):
    file = tmp_path / "run.yaml"
    file.write_text("preset: tiny\noptim:\n  lr: 3.0e-4\nmodel:\n  depth: 3\n  codec: {name: pixel, space_factor: 4}\n")
    cfg = load_config(file=file, overrides=["optim.betas=[0.9, 0.95]", "data.latents=cache", "steps=7",
                                             "optim.warmup=0"])
    assert (cfg.optim.lr, cfg.model.depth, cfg.optim.betas, cfg.steps) == (3e-4, 3, (0.9, 0.95), 7)
    assert cfg.model.latent_channels == 3 * 4 * 16  # derived again from the overridden codec
    assert cfg.data.num_frames == 9  # the rest comes from the named base
    assert load_config("tiny", overrides=["optim.lr=1e-4"]).optim.lr == 1e-4  # YAML would read "1e-4" as text


def test_a_vae_codec_sets_the_models_latent_channels_from_its_folder(tmp_path):
    import diffusers

    folder = tmp_path / "wan-vae"
    diffusers.AutoencoderKLWan(base_dim=8, z_dim=6, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                               attn_scales=[], temperal_downsample=[False, True, True]).save_pretrained(folder)
    cfg = load_config("tiny", overrides=[f"model.codec={{name: wan, path: {folder}}}", "data.crop_size=16"])
    # The tiny preset's 48 pixel-codec channels must not survive: the model is built for the VAE's latents.
    assert cfg.model.latent_channels == 6


@pytest.mark.parametrize(("overrides", "named"), [
    (["optim.lrr=1"], ["optim.lrr: unknown key (did you mean 'lr'?)"]),
    (["model.foo=2"], ["model.foo: unknown key"]),
    (["steps=abc"], ["steps: expected int, got str 'abc'"]),
    (["optim.lr=-1", "data.num_frames=8", "model.heads=3", "precision=fp8", "val.best=ssim"],
     ["optim.lr: must be > 0", "data.num_frames: 8 is not 1 + 4·k", "model.heads:", "precision: unknown 'fp8'",
      "val.best: unknown 'ssim'"]),
    (["global_batch=6", "micro_batch=4"], ["global_batch: 6 is not a multiple of micro_batch 4"]),
    (["data.crop_size=7"], ["data.crop_size: 7 is not a positive multiple"]),
])
def test_a_bad_config_is_one_sentence_naming_every_bad_key(overrides, named):
    with pytest.raises(UserError) as err:
        load_config("tiny", overrides=overrides)
    message = str(err.value)
    assert message.startswith("invalid training config: ") and "\n" not in message
    for part in named:
        assert part in message


def test_resume_compares_configs_except_run_length_and_logging():
    a = load_config("tiny").to_dict()
    b = load_config("tiny", overrides=["steps=999", "log_every=1", "data.num_workers=0", "optim.lr=2e-3",
                                       "model.depth=3"]).to_dict()
    assert config_differences(a, b) == ["model.depth: 2 -> 3", "optim.lr: 0.001 -> 0.002"]


def test_learning_rate_warms_up_then_follows_the_schedule():
    assert lr_factor(0, 10, "constant", 100, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 10, "constant", 100, 0.1) == lr_factor(50, 10, "constant", 100, 0.1) == 1.0
    assert lr_factor(10, 10, "cosine", 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(100, 10, "cosine", 100, 0.1) == pytest.approx(0.1)


def test_a_checkpoint_folder_appears_only_when_complete_and_old_ones_are_pruned(tmp_path, monkeypatch):
    for step in (1, 2, 3):
        assert checkpoint.save(tmp_path, {"model": {}, "step": step}, step, keep_last=2, best=step == 2)
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path)] == [2, 3]
    assert checkpoint.load(tmp_path / "best")["step"] == 2
    assert checkpoint.load(tmp_path)["step"] == 3

    def crash(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", crash)
    assert checkpoint.save(tmp_path, {"model": {}, "step": 4}, 4, keep_last=2) is None
    assert checkpoint.load(tmp_path)["step"] == 3 and not list(tmp_path.glob(".step-*"))
    # A leftover temporary folder (a process killed mid-save) is never taken for a checkpoint.
    (tmp_path / ".step-00000005.tmp").mkdir()
    (tmp_path / ".step-00000005.tmp" / "checkpoint.pt").write_bytes(b"partial")
    assert checkpoint.latest_checkpoint(tmp_path).parent.name == "step-00000003"


def test_train_command_errors_are_one_sentence(tmp_path, capsys):
    assert main(["train", "--preset", "tiny", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r"),
                 "--set", "val.every=0"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "--preset", "tiny", "--data", "x", "--out", "y", "--set", "optim.lrr=1"]) == 2
    assert "optim.lrr: unknown key" in capsys.readouterr().err
    assert main(["train", "--plot", str(tmp_path)]) == 2
    assert main(["train", "--preset", "small", "--dry-run", "--set", "steps=5"]) == 0
    assert "  steps: 5\n" in capsys.readouterr().out
