"""Video I/O on the fetched real clips: counts, backend agreement, exact writers, one-sentence errors."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import clip_path, real_crop

from cascadevsr.errors import UserError
from cascadevsr.video import (
    VideoInfo,
    decode_video,
    encode_video,
    iter_frames,
    probe,
    read_frames,
    write_video,
)

# name -> (frames, width, height, codec), from reference/data-and-weights.md (decoded-frame counts).
CLIPS = {
    "cityCC0.mpg": (190, 720, 405, "mpeg2video"),
    "carphone_pristine.mp4": (120, 176, 144, "h264"),
    "carphone_distorted.mp4": (120, 176, 144, "h264"),
    "bikes.mp4": (250, 640, 272, "h264"),
    "bigbuckbunny.mp4": (132, 1280, 720, "h264"),
    "testMovie.mp4": (237, 352, 288, "mpeg4"),
    "jwpIntro.mp4": (173, 640, 480, "h264"),
    "earth.mp4": (901, 480, 270, "h264"),
}
H264_CLIPS = [name for name, spec in CLIPS.items() if spec[3] == "h264"]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.fixture(scope="module")
def odd_frames() -> np.ndarray:
    """6 frames of cityCC0 cropped to an odd 93×127 (H×W), uint8 (T, H, W, 3)."""
    return real_crop("cityCC0.mpg", 60, 6, 150, 290, (93, 127))


# ------------------------------------------------------------------------------------------ reading


@pytest.mark.parametrize("name", list(CLIPS))
def test_probe_reports_decoded_frame_count_size_and_codec(name):
    frames, width, height, codec = CLIPS[name]
    info = probe(clip_path(name))
    assert isinstance(info, VideoInfo)
    assert (info.num_frames, info.width, info.height, info.codec) == (frames, width, height, codec)
    assert info.fps > 0 and info.duration == pytest.approx(frames / info.fps)
    assert info.pix_fmt == "yuv420p"


@pytest.mark.parametrize("name", list(CLIPS))
def test_auto_and_pyav_give_the_same_frames_at_the_end_of_every_clip(name):
    n, width, height, _ = CLIPS[name]
    auto = read_frames(clip_path(name), n - 3, n)
    pyav = read_frames(clip_path(name), n - 3, n, backend="pyav")
    assert auto.shape == (3, height, width, 3) and auto.dtype == np.uint8
    assert np.array_equal(auto, pyav)
    assert read_frames(clip_path(name), n - 1).shape[0] == 1  # end=None reads to the last frame


@pytest.mark.parametrize("name", H264_CLIPS)
def test_decord_and_pyav_decode_h264_identically_in_the_middle_of_a_clip(name):
    n = CLIPS[name][0]
    start = n // 2
    decord = read_frames(clip_path(name), start, start + 4, backend="decord")
    pyav = read_frames(clip_path(name), start, start + 4, backend="pyav")
    assert np.array_equal(decord, pyav)


def test_decord_differs_from_pyav_by_at_most_one_level_on_mpeg4_part2():
    # Different IDCTs in the two FFmpeg builds; this is why auto reads MPEG-4 Part 2 with PyAV.
    decord = read_frames(clip_path("testMovie.mp4"), 100, 104, backend="decord")
    pyav = read_frames(clip_path("testMovie.mp4"), 100, 104, backend="pyav")
    assert np.abs(decord.astype(int) - pyav.astype(int)).max() <= 1


def test_decord_misreads_the_mpeg2_clip_so_auto_uses_pyav_and_forced_decord_is_refused():
    import decord

    path = clip_path("cityCC0.mpg")
    pyav = read_frames(path, 0, 2, backend="pyav")
    raw = decord.VideoReader(str(path), ctx=decord.cpu(0)).get_batch([0, 1]).asnumpy()
    assert np.abs(raw.astype(int) - pyav.astype(int)).mean() > 10  # a GOP late, not a rounding issue
    assert np.array_equal(read_frames(path, 0, 2), pyav)
    with pytest.raises(UserError, match="decord misreads mpeg2video"):
        read_frames(path, 0, 2, backend="decord")


def test_iter_frames_yields_bounded_chunks_that_concatenate_to_read_frames():
    for name, backend in [("earth.mp4", "auto"), ("cityCC0.mpg", "pyav")]:
        chunks = list(iter_frames(clip_path(name), 10, 47, chunk=16, backend=backend))
        assert [len(c) for c in chunks] == [16, 16, 5]
        assert np.array_equal(np.concatenate(chunks), read_frames(clip_path(name), 10, 47, backend=backend))


@pytest.mark.parametrize("backend", ["auto", "decord", "pyav"])
def test_reading_past_the_end_names_the_available_frame_count(backend):
    with pytest.raises(UserError, match=r"cannot read frames \[240, 260\) of .*bikes.mp4.*it has 250 frames"):
        read_frames(clip_path("bikes.mp4"), 240, 260, backend=backend)
    with pytest.raises(UserError, match="it has 250 frames"):
        read_frames(clip_path("bikes.mp4"), 251, backend=backend)


def test_reading_past_the_end_of_an_uncounted_mpeg2_stream_names_the_decoded_count():
    with pytest.raises(UserError, match="it has 190 frames"):
        read_frames(clip_path("cityCC0.mpg"), 185, 200)


def test_an_empty_range_gives_zero_frames_of_the_right_size():
    assert read_frames(clip_path("bikes.mp4"), 7, 7).shape == (0, 272, 640, 3)


def _bad_files(tmp_path) -> dict[str, tuple[str, str]]:
    """name -> (path, expected message part). Truncations cut real clips in half."""
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp4"
    text.write_text("these are meeting notes, not a video\n" * 20)
    carphone = clip_path("carphone_pristine.mp4").read_bytes()  # index (moov) at the end
    cut_tail = tmp_path / "carphone_half.mp4"
    cut_tail.write_bytes(carphone[: len(carphone) // 2])
    earth = clip_path("earth.mp4").read_bytes()  # index at the start, frames cut away
    cut_frames = tmp_path / "earth_half.mp4"
    cut_frames.write_bytes(earth[: len(earth) // 2])
    return {
        "missing": (str(tmp_path / "nowhere.mp4"), "no such file"),
        "directory": (str(tmp_path), "it is a directory"),
        "empty": (str(empty), "file is empty"),
        "text": (str(text), "FFmpeg cannot open it"),
        "truncated, index lost": (str(cut_tail), "FFmpeg cannot open it"),
        "truncated, frames lost": (str(cut_frames), "truncated (its index lists 901 frames"),
    }


@pytest.mark.parametrize("backend", ["auto", "decord", "pyav"])
def test_bad_files_raise_one_clear_sentence_never_a_decoder_exception(tmp_path, backend):
    for kind, (path, why) in _bad_files(tmp_path).items():
        for call in (lambda p: probe(p), lambda p: read_frames(p, backend=backend)):
            with pytest.raises(UserError) as err:
                call(path)
            message = str(err.value)
            assert message.startswith(f"cannot read video '{path}': "), kind
            assert why in message, (kind, message)
            assert "\n" not in message


def test_unknown_backend_is_a_user_error():
    with pytest.raises(UserError, match="unknown video backend 'opencv'"):
        read_frames(clip_path("bikes.mp4"), 0, 1, backend="opencv")


# ------------------------------------------------------------------------------------------ writing


def test_ffv1_mp4_round_trip_is_bit_exact_at_an_odd_size_with_both_readers(tmp_path, odd_frames):
    path = tmp_path / "exact.mp4"
    write_video(path, odd_frames, 25, codec="ffv1")
    info = probe(path)
    assert (info.codec, info.pix_fmt, info.num_frames) == ("ffv1", "bgr0", 6)
    assert (info.width, info.height) == (127, 93)
    assert np.array_equal(read_frames(path, backend="pyav"), odd_frames)
    assert np.array_equal(read_frames(path, backend="decord"), odd_frames)
    assert np.array_equal(read_frames(path, 2, 5), odd_frames[2:5])  # random access from a middle frame


def test_auto_reads_ffv1_that_decord_opens_but_cannot_convert(tmp_path, odd_frames):
    # decord opens a 48-px-wide FFV1 stream and then fails to copy its frames out; auto finishes with PyAV.
    frames = np.ascontiguousarray(odd_frames[:, :40, :48])
    path = tmp_path / "narrow.mp4"
    write_video(path, frames, 25, codec="ffv1")
    with pytest.raises(UserError, match="decord failed"):
        read_frames(path, backend="decord")
    assert np.array_equal(read_frames(path), frames)
    assert np.array_equal(decode_video(path.read_bytes()), frames)


def test_libx264rgb_at_crf0_is_also_bit_exact(odd_frames):
    data = encode_video(odd_frames, 25, codec="libx264rgb", crf=0)
    assert np.array_equal(decode_video(data, backend="pyav"), odd_frames)
    assert np.array_equal(decode_video(data, backend="decord"), odd_frames)


def test_default_h264_is_yuv444_near_lossless_and_read_the_same_by_both_readers(odd_frames):
    data = encode_video(odd_frames, 25)
    assert probe(data).pix_fmt == "yuv444p"  # odd sizes work: no chroma subsampling
    pyav, decord = decode_video(data, backend="pyav"), decode_video(data, backend="decord")
    assert np.array_equal(pyav, decord)
    assert psnr(pyav, odd_frames) > 32  # crf 18 on a noisy night scene
    high = decode_video(encode_video(odd_frames, 25, crf=4))
    assert psnr(high, odd_frames) > 40
    lossless_yuv = decode_video(encode_video(odd_frames, 25, crf=0))
    assert np.abs(lossless_yuv.astype(int) - odd_frames).max() <= 2  # YUV rounding, not exact in RGB


@pytest.mark.parametrize("codec", ["libx264", "ffv1"])
def test_same_frames_give_identical_bytes(codec, odd_frames):
    assert encode_video(odd_frames, 25, codec=codec) == encode_video(list(odd_frames), 25, codec=codec)


def test_yuv420p_at_an_odd_size_is_refused_with_the_fix(odd_frames):
    with pytest.raises(UserError, match=r"yuv420p needs an even width and height, got 127x93"):
        encode_video(odd_frames, 25, pix_fmt="yuv420p")


def test_unknown_codec_and_suffix_are_user_errors(tmp_path, odd_frames):
    with pytest.raises(UserError, match="unknown video codec 'h265'"):
        encode_video(odd_frames, 25, codec="h265")
    with pytest.raises(UserError, match="unknown suffix"):
        write_video(tmp_path / "clip.gif", odd_frames, 25)


def test_write_video_streams_chunks_and_leaves_no_temporary_file(tmp_path):
    frames = real_crop("bikes.mp4", 0, 20, 0, 0, (128, 160))
    path = tmp_path / "streamed.mp4"
    write_video(path, (frames[i : i + 8] for i in range(0, 20, 8)), 25, codec="ffv1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["streamed.mp4"]
    assert np.array_equal(read_frames(path), frames)


def test_vp8_webm_reads_identically_with_both_backends(tmp_path):
    frames = real_crop("bikes.mp4", 30, 12, 60, 100, (96, 128))
    path = tmp_path / "clip.webm"
    write_video(path, frames, 25, codec="libvpx", bit_rate=2_000_000)
    info = probe(path)  # WebM keeps no frame count: counted by decoding
    assert (info.codec, info.num_frames) == ("vp8", 12)
    pyav = read_frames(path, backend="pyav")
    assert np.array_equal(read_frames(path, backend="decord"), pyav)
    assert psnr(pyav, frames) > 30


def test_decode_video_of_bytes_matches_the_file(tmp_path, odd_frames):
    data = encode_video(odd_frames, 30000 / 1001, codec="ffv1")
    (tmp_path / "a.mp4").write_bytes(data)
    assert np.array_equal(decode_video(data), read_frames(tmp_path / "a.mp4"))
    assert probe(data).fps == pytest.approx(30000 / 1001)
    with pytest.raises(UserError, match="cannot read video '<bytes>': it is empty"):
        decode_video(b"")
