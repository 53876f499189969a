"""pipelines/video.py: PNG frames, GIF and MP4 from one video in diffusers' np / pt / pil layouts."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.image_processor import VaeImageProcessor
from PIL import Image

from pipelines.video import VIDEO_EXTRA_HINT, gif_delay_ms, write_video

F, H, W = 5, 16, 24
HAS_IMAGEIO = importlib.util.find_spec("imageio") is not None and importlib.util.find_spec("imageio_ffmpeg")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _video(seed: int = 0, frames: int = F, height: int = H, width: int = W) -> np.ndarray:
    """Float32 (F, H, W, 3) in [0, 1], including the exact ends and values on the rounding boundaries."""
    x = np.random.default_rng(seed).random((frames, height, width, 3), dtype=np.float32)
    x[0, 0, :3, 0] = [0.0, 1.0, 0.5]
    x[0, 1, :4, 0] = (np.array([0.5, 1.5, 2.5, 254.5], dtype=np.float32) / 255).astype(np.float32)
    return x


def _smooth_video(frames: int = 6, height: int = 32, width: int = 48) -> np.ndarray:
    """Moving colour gradients: something H.264 compresses well, so decoded frames stay close."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    out = np.empty((frames, height, width, 3), dtype=np.float32)
    for t in range(frames):
        out[t, ..., 0] = x / (width - 1)
        out[t, ..., 1] = y / (height - 1)
        out[t, ..., 2] = 0.5 + 0.4 * np.sin((x + 4 * t) / 6)
    return out


def _read_frames(directory: Path) -> np.ndarray:
    paths = sorted(directory.glob("frame_*.png"))
    assert [p.name for p in paths] == [f"frame_{i:04d}.png" for i in range(len(paths))]
    return np.stack([np.asarray(Image.open(p)) for p in paths])


def _layouts(video: np.ndarray) -> dict[str, object]:
    return {
        "np": video,
        "pt": torch.from_numpy(video).permute(0, 3, 1, 2).contiguous(),
        "pil": VaeImageProcessor.numpy_to_pil(video),
    }


def test_frames_round_trip_like_the_image_processor_in_every_layout(tmp_path):
    video = _video()
    expected = np.round(video * 255).astype(np.uint8)
    # the pipelines' own quantisation gives the same bytes
    processed = np.stack([np.asarray(im) for im in VaeImageProcessor.numpy_to_pil(video)])
    assert np.array_equal(processed, expected)
    assert list(expected[0, 1, :4, 0]) == [0, 2, 2, 254]  # round half to even, as np.round
    for name, frames in _layouts(video).items():
        written = write_video(frames, tmp_path / name, formats=("frames",))
        assert written == {"frames": tmp_path / name}
        assert np.array_equal(_read_frames(tmp_path / name), expected), name
        assert not list((tmp_path / name).glob(".*")), "no temporaries left behind"


def test_grayscale_frames_stay_single_channel(tmp_path):
    video = _video()[..., :1]
    expected = np.round(video[..., 0] * 255).astype(np.uint8)
    for name, frames in _layouts(video).items():
        written = write_video(frames, tmp_path / name, fps=10)
        assert np.array_equal(_read_frames(written["frames"]), expected), name
        with Image.open(written["gif"]) as gif:  # 8-bit grey fits GIF's palette exactly
            assert gif.n_frames == F
            for i in range(F):
                gif.seek(i)
                assert np.array_equal(np.asarray(gif.convert("L")), expected[i]), (name, i)


@pytest.mark.parametrize("fps", [8, 10, 24])
def test_gif_frame_count_duration_and_loop(tmp_path, fps):
    written = write_video(_video(), tmp_path / "clip", fps=fps)
    assert set(written) == {"gif", "frames"}
    assert written["gif"] == tmp_path / "clip.gif"
    assert gif_delay_ms(fps) == 10 * round(100 / fps)
    with Image.open(written["gif"]) as gif:
        assert gif.n_frames == F
        assert gif.info["loop"] == 0
        for i in range(F):
            gif.seek(i)
            assert gif.info["duration"] == gif_delay_ms(fps)
            assert gif.size == (W, H)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip", "clip.gif"]


def test_gif_is_identical_from_every_layout(tmp_path):
    payloads = {
        name: write_video(frames, tmp_path / name, formats=("gif",))["gif"].read_bytes()
        for name, frames in _layouts(_video(seed=3)).items()
    }
    assert payloads["np"] == payloads["pt"] == payloads["pil"]


def test_mp4_without_the_extra_names_it_and_writes_nothing(tmp_path, monkeypatch):
    for module in ("imageio", "imageio.v2", "imageio_ffmpeg"):
        monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(ValueError, match=r"pip install -e '\.\[video\]'") as err:
        write_video(_smooth_video(), tmp_path / "clip", formats=("frames", "gif", "mp4"))
    assert VIDEO_EXTRA_HINT in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_mp4_written_and_readable_or_the_extra_named(tmp_path):
    video = _smooth_video()
    if not HAS_IMAGEIO:  # CI installs only `.[test]`: then the error path is what must hold
        with pytest.raises(ValueError, match=r"pip install -e '\.\[video\]'"):
            write_video(video, tmp_path / "clip", formats=("mp4",))
        assert list(tmp_path.iterdir()) == []
        return
    import imageio.v2 as imageio

    written = write_video(video, tmp_path / "clip.mp4", fps=12, formats=("mp4", "gif"))
    assert written == {"mp4": tmp_path / "clip.mp4", "gif": tmp_path / "clip.gif"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.gif", "clip.mp4"]
    reader = imageio.get_reader(written["mp4"], format="FFMPEG")
    try:
        assert reader.get_meta_data()["fps"] == pytest.approx(12)
        assert reader.count_frames() == len(video)
        decoded = np.stack(list(reader.iter_data()))
    finally:
        reader.close()
    assert decoded.shape == (len(video), 32, 48, 3)
    error = np.abs(decoded.astype(np.float64) - np.round(video * 255)).mean()
    assert error < 6, error  # lossy H.264 with chroma subsampling, but the same picture


def test_invalid_inputs_raise_before_writing(tmp_path):
    video = _video()
    cases = [
        (video[0], "must be \\(F, H, W, C\\)"),
        (video[None], "output.frames\\[0\\]"),
        (torch.from_numpy(video[None]).permute(0, 1, 4, 2, 3), "output.frames\\[0\\]"),
        (video[:0], "at least one frame"),
        ([], "at least one frame"),
        (["frame"], "PIL images"),
        (video * 1.1, "must lie in \\[0, 1\\]"),
        (video - 0.1, "must lie in \\[0, 1\\]"),
        (np.full_like(video, np.nan), "NaN"),
        (np.concatenate([video, video[..., :1]], axis=-1), "1 or 3 channels"),
        (torch.from_numpy(video), "1 or 3 channels"),  # (F, H, W, C) passed as a tensor
        (video.astype(np.int64), "dtype"),
        ("video.mp4", "numpy array"),
    ]
    for frames, message in cases:
        with pytest.raises(ValueError, match=message):
            write_video(frames, tmp_path / "clip")
    for kwargs, message in [
        ({"fps": 0}, "fps"),
        ({"fps": -8}, "fps"),
        ({"fps": float("nan")}, "fps"),
        ({"formats": ("webm",)}, "formats"),
        ({"formats": ()}, "formats"),
        ({"formats": "gif"}, "formats"),  # a bare string is not a selection of formats
        ({"quality": 11}, "quality"),
    ]:
        with pytest.raises(ValueError, match=message):
            write_video(video, tmp_path / "clip", **kwargs)
    with pytest.raises(ValueError, match="even height and width"):
        write_video(_video(height=15), tmp_path / "clip", formats=("frames", "mp4"))
    with pytest.raises(ValueError, match="same size"):
        write_video([Image.new("RGB", (8, 8)), Image.new("RGB", (8, 10))], tmp_path / "clip")
    assert list(tmp_path.iterdir()) == []


def test_small_overshoot_is_clipped_and_uint8_taken_as_is(tmp_path):
    video = _video()
    nudged = video.copy()
    nudged[0, 0, 0, 0] = -5e-4
    nudged[0, 0, 1, 0] = 1 + 5e-4
    expected = np.round(video * 255).astype(np.uint8)
    written = write_video(nudged, tmp_path / "a", formats=("frames",))
    assert np.array_equal(_read_frames(written["frames"]), expected)
    written = write_video(expected, tmp_path / "b", formats=("frames",))
    assert np.array_equal(_read_frames(written["frames"]), expected)
