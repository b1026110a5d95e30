"""Latent codecs: the pixel codec's exact round trip and lengths, the diffusers adapters on tiny VAEs."""

from __future__ import annotations

import pytest
import torch

from cascadevsr.errors import UserError
from cascadevsr.latent import (
    LatentCodec,
    PixelCodec,
    latent_frames,
    make_codec,
    pixel_frames,
    valid_length,
)


def test_pixel_codec_gives_the_papers_latent_lengths():
    assert latent_frames(17, 4) == 5
    assert latent_frames(77, 4) == 20
    codec = PixelCodec(space_factor=2)
    for frames, latent in ((17, 5), (77, 20)):
        z = codec.encode(torch.rand(frames, 3, 4, 6))
        assert z.shape == (codec.channels, latent, 2, 3)
        assert pixel_frames(latent, 4) == frames


def test_pixel_codec_round_trips_a_real_clip_exactly(city_frames):
    codec = PixelCodec(space_factor=4)
    frames = torch.from_numpy(city_frames[:5].copy()).permute(0, 3, 1, 2)  # (5, 3, 128, 128) uint8
    x = frames.float() / 255
    z = codec.encode(x[None])
    assert z.shape == (1, 3 * 4 * 16, 2, 32, 32)
    assert z.min() >= -2 and z.max() <= 2
    back = codec.decode(z)[0]
    assert torch.equal((back * 255).round().to(torch.uint8), frames)  # uint8 survives bit for bit
    assert (back - x).abs().max() <= 2**-24  # and floats within one ulp


def test_pixel_codec_round_trip_is_bit_exact_on_the_float_grid():
    codec = PixelCodec(space_factor=2, time_factor=4)
    x = torch.rand(2, 9, 3, 8, 10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(codec.decode(codec.encode(x)), x)


def test_pixel_codec_rejects_lengths_and_sizes_that_do_not_fit():
    codec = PixelCodec(space_factor=4)
    with pytest.raises(ValueError, match="next valid: 9"):
        codec.encode(torch.rand(8, 3, 8, 8))
    with pytest.raises(ValueError, match="multiple of the codec's space factor 4"):
        codec.encode(torch.rand(5, 3, 8, 10))
    assert valid_length(8, 4) == 9 and valid_length(9, 4) == 9 and valid_length(1, 4) == 1


def test_codecs_come_from_specs_and_unknown_names_are_refused():
    codec = make_codec({"name": "pixel", "space_factor": 2, "time_factor": 4})
    assert isinstance(codec, LatentCodec)
    assert make_codec(codec.spec()).channels == codec.channels == 48
    with pytest.raises(UserError, match="unknown codec 'nope'"):
        make_codec("nope")
    with pytest.raises(UserError, match="needs a 'path'"):
        make_codec({"name": "wan"})


def _tiny_wan():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    return diffusers.AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 1, 1], num_res_blocks=1,
                                      temperal_downsample=[True, True], latents_mean=[0.1, -0.2, 0.0, 0.3],
                                      latents_std=[1.5, 2.0, 1.0, 0.5])


def test_wan_adapter_loads_a_local_folder_and_follows_the_vae_shapes(tmp_path, carphone_frames):
    from cascadevsr.latent import DiffusersVideoCodec

    vae = _tiny_wan()
    folder = tmp_path / "wan-vae"
    vae.save_pretrained(folder)
    codec = make_codec({"name": "wan", "path": str(folder)})
    assert isinstance(codec, DiffusersVideoCodec)
    assert (codec.time_factor, codec.space_factor, codec.channels) == (4, 4, 4)
    frames = torch.from_numpy(carphone_frames[:5, :32, :48].copy()).permute(0, 3, 1, 2).float() / 255
    z = codec.encode(frames)
    assert z.shape == (4, 2, 8, 12)
    # the adapter normalises exactly like the Wan pipeline: (mode - mean) / std
    raw = vae.encode((frames * 2 - 1).permute(1, 0, 2, 3)[None]).latent_dist.mode()[0]
    mean, std = torch.tensor([0.1, -0.2, 0.0, 0.3]), torch.tensor([1.5, 2.0, 1.0, 0.5])
    torch.testing.assert_close(z, (raw - mean.view(-1, 1, 1, 1)) / std.view(-1, 1, 1, 1))
    out = codec.decode(z)
    assert out.shape == frames.shape and out.min() >= 0 and out.max() <= 1
    assert codec.spec() == {"name": "wan", "path": str(folder)}
    sample = codec.encode(frames, generator=torch.Generator().manual_seed(0))
    assert sample.shape == z.shape and not torch.equal(sample, z)


@pytest.mark.parametrize("kind", ["cogvideox", "hunyuanvideo"])
def test_other_video_vae_adapters_follow_their_compression(kind):
    diffusers = pytest.importorskip("diffusers")
    from cascadevsr.latent import DiffusersVideoCodec

    torch.manual_seed(0)
    if kind == "cogvideox":
        vae = diffusers.AutoencoderKLCogVideoX(
            block_out_channels=(8, 8, 8), down_block_types=("CogVideoXDownBlock3D",) * 3,
            up_block_types=("CogVideoXUpBlock3D",) * 3, latent_channels=4, layers_per_block=1,
            norm_num_groups=4)
    else:
        vae = diffusers.AutoencoderKLHunyuanVideo(
            block_out_channels=(8, 8, 8), down_block_types=("HunyuanVideoDownBlock3D",) * 3,
            up_block_types=("HunyuanVideoUpBlock3D",) * 3, latent_channels=4, layers_per_block=1,
            norm_num_groups=4, spatial_compression_ratio=4)
    codec = DiffusersVideoCodec(kind, vae)
    z = codec.encode(torch.rand(1, 9, 3, 16, 16))
    assert z.shape == (1, 4, 3, 16 // codec.space_factor, 16 // codec.space_factor)
    assert codec.time_factor == 4 and codec.decode(z).shape == (1, 9, 3, 16, 16)


def test_missing_vae_folder_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="no diffusers VAE"):
        make_codec({"name": "wan", "path": str(tmp_path / "absent")})
