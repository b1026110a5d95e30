"""A device the machine lacks is one clear sentence and exit code 2, in every command that takes one."""

from __future__ import annotations

import pytest
import torch

from cascadevsr.cli import main
from cascadevsr.devices import resolve_device
from cascadevsr.errors import UserError

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")


def test_auto_and_cpu_resolve_and_bad_names_are_refused():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError, match="'gpu' is not a device; use cpu, cuda, cuda:N or auto"):
        resolve_device("gpu")


@no_cuda
@pytest.mark.parametrize("command", [
    ["evaluate", "--pred", "a={tmp}", "--gt", "{tmp}", "--metrics", "psnr", "--out", "{tmp}/r.parquet"],
    ["analyze", "timesteps", "--checkpoint", "{tmp}/ckpt.pt", "--lr", "{tmp}", "--out", "{tmp}/ts"],
    ["analyze", "noise-aug", "--checkpoint", "a={tmp}/ckpt.pt", "--lr", "{tmp}", "--out", "{tmp}/na.parquet"],
    ["upscale", "{tmp}/in.mp4", "--checkpoint", "{tmp}/ckpt.pt", "--out", "{tmp}/out.mp4"],
])
def test_cuda_on_a_machine_without_it_is_one_sentence(command, tmp_path, capsys):
    (tmp_path / "in.mp4").write_bytes(b"not read before the device is checked")
    args = [a.replace("{tmp}", str(tmp_path)) for a in command]
    assert main([*args, "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "--device cuda asked for" in err and "use --device cpu" in err and err.count("\n") == 1
    assert not (tmp_path / "out.mp4").exists() and not (tmp_path / "ts").exists()


@no_cuda
def test_training_on_cuda_without_it_is_one_sentence(tmp_path, capsys):
    assert main(["train", "--preset", "tiny", "--data", str(tmp_path), "--out", str(tmp_path / "run"),
                 "--set", "device=cuda"]) == 2
    err = capsys.readouterr().err
    assert "device cuda asked for" in err and err.count("\n") == 1
