"""Write one generated video as PNG frames, an animated GIF and/or an H.264 MP4.

:func:`write_video` takes the frames of ONE video in any of the layouts diffusers' video pipelines return
(``pipe(...).frames[0]``, which is also what :class:`pipelines.search_pipeline.SearchPipeline` returns):

* ``output_type="np"``: a float array ``(F, H, W, C)`` in [0, 1];
* ``output_type="pt"``: a float tensor ``(F, C, H, W)`` in [0, 1];
* ``output_type="pil"``: a list of PIL images.

Float frames are quantised as the pipelines' image processor does (``round(x * 255)``), so the three
layouts give identical 8-bit frames. PNG frames and the GIF need only Pillow; the MP4 needs the optional
``video`` extra (``pip install -e '.[video]'``: imageio + imageio-ffmpeg). Every file is written to a
temporary name in its final directory and moved into place with ``os.replace``.
"""

from __future__ import annotations

import io
import numbers
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipelines.outputs import TMP_MARK, atomic_write_bytes

__all__ = ["FORMATS", "VIDEO_EXTRA_HINT", "gif_bytes", "gif_delay_ms", "to_uint8_frames", "write_video"]

FORMATS = ("frames", "gif", "mp4")
VIDEO_EXTRA_HINT = "pip install -e '.[video]'"
RANGE_TOLERANCE = 1e-3  # float frames may overshoot [0, 1] by this much (then clipped), e.g. from fp16


def _from_pil(frames: Sequence[Any]) -> np.ndarray:
    modes = {im.mode for im in frames}
    mode = "L" if modes == {"L"} else "RGB"
    arrays = [np.asarray(im.convert(mode)) for im in frames]
    sizes = {a.shape for a in arrays}
    if len(sizes) != 1:
        raise ValueError(f"all frames must have the same size, got {sorted(im.size for im in frames)}")
    stacked = np.stack(arrays)
    return stacked[..., None] if mode == "L" else stacked


def _from_float(array: np.ndarray) -> np.ndarray:
    if not np.isfinite(array).all():
        raise ValueError("frames contain NaN or infinite values")
    low, high = float(array.min()), float(array.max())
    if low < -RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
        raise ValueError(
            f"float frames must lie in [0, 1] (diffusers output_type='np' or 'pt'), got values in "
            f"[{low:.4g}, {high:.4g}]"
        )
    if array.dtype.itemsize < 4:  # float16: compute in float32, as diffusers does after .float()
        array = array.astype(np.float32)
    return np.clip(np.round(array * 255), 0, 255).astype(np.uint8)


def to_uint8_frames(frames: Any) -> np.ndarray:
    """The frames of one video as a uint8 array ``(F, H, W, C)`` with ``C`` 1 or 3.

    Accepts a numpy array ``(F, H, W, C)`` (float in [0, 1] or uint8), a torch tensor ``(F, C, H, W)`` in
    [0, 1], or a sequence of PIL images.
    """
    if isinstance(frames, (list, tuple)):
        if not frames:
            raise ValueError("a video needs at least one frame, got an empty list")
        if not all(isinstance(im, Image.Image) for im in frames):
            kinds = sorted({type(im).__name__ for im in frames})
            raise ValueError(f"a list of frames must hold PIL images, got {kinds}")
        return _from_pil(frames)
    if type(frames).__module__.split(".")[0] == "torch":  # a tensor (F, C, H, W), without importing torch
        if frames.ndim != 4:
            raise ValueError(
                f"a tensor video must be (F, C, H, W), got shape {tuple(frames.shape)}; "
                "for a batch (B, F, C, H, W) pass one video, e.g. output.frames[0]"
            )
        if frames.dtype.is_floating_point:
            frames = frames.detach().cpu().float()
        array = frames.detach().cpu().permute(0, 2, 3, 1).numpy()
        layout = "(F, C, H, W)"
    elif isinstance(frames, np.ndarray):
        if frames.ndim != 4:
            raise ValueError(
                f"an array video must be (F, H, W, C), got shape {frames.shape}; "
                "for a batch (B, F, H, W, C) pass one video, e.g. output.frames[0]"
            )
        array = frames
        layout = "(F, H, W, C)"
    else:
        raise ValueError(
            "frames must be a numpy array (F, H, W, C), a torch tensor (F, C, H, W) or a list of PIL "
            f"images, got {type(frames).__name__}"
        )
    if array.shape[0] == 0:
        raise ValueError("a video needs at least one frame, got 0")
    if array.shape[-1] not in (1, 3):
        raise ValueError(f"frames {layout} must have 1 or 3 channels, got shape {tuple(array.shape)}")
    if array.shape[1] == 0 or array.shape[2] == 0:
        raise ValueError(f"frames must not be empty, got shape {tuple(array.shape)}")
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"frames must be float in [0, 1] or uint8, got dtype {array.dtype}")
    return _from_float(array)


def _images(pixels: np.ndarray) -> list[Image.Image]:
    if pixels.shape[-1] == 1:
        return [Image.fromarray(frame[..., 0], mode="L") for frame in pixels]
    return [Image.fromarray(frame, mode="RGB") for frame in pixels]


def gif_delay_ms(fps: float) -> int:
    """The per-frame delay a GIF stores for ``fps``: ``1000 / fps`` ms rounded to GIF's 10 ms unit (>= 10)."""
    return 10 * max(1, round(100 / fps))


def _import_imageio() -> Any:
    """``imageio.v2`` with its ffmpeg plugin; a clear error naming the extra when either is missing."""
    try:
        import imageio.v2 as imageio
        import imageio_ffmpeg  # noqa: F401  (the ffmpeg binary and plugin imageio uses for MP4)
    except ImportError as err:
        raise ValueError(
            f"writing MP4 needs imageio and imageio-ffmpeg: install the video extra ({VIDEO_EXTRA_HINT}), "
            "or write formats=('gif', 'frames') only"
        ) from err
    return imageio


def _stem(out: str | os.PathLike[str]) -> Path:
    path = Path(out)
    return path.with_suffix("") if path.suffix.lower() in (".gif", ".mp4") else path


def gif_bytes(frames: Sequence[Image.Image], duration: int | Sequence[int], loop: int = 0) -> bytes:
    """An animated GIF of PIL ``frames``, each shown ``duration`` ms (one value, or one per frame)."""
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=list(frames[1:]), duration=duration,
                   loop=loop)  # fmt: skip
    return buffer.getvalue()


def write_video(
    frames: Any,
    out_dir_or_stem: str | os.PathLike[str],
    *,
    fps: float = 8,
    formats: Iterable[str] = ("gif", "frames"),
    quality: float | None = 8,
) -> dict[str, Path]:
    """Write one video; returns the written paths by format.

    With ``out_dir_or_stem = STEM`` (a trailing ``.gif`` / ``.mp4`` is dropped):

    * ``"frames"``: ``STEM/frame_0000.png``, ``STEM/frame_0001.png``, ... (returns the directory ``STEM``);
    * ``"gif"``: ``STEM.gif``, looping, each frame shown ``1000 / fps`` ms (GIF stores delays in 1/100 s,
      so the delay is rounded to 10 ms, :func:`gif_delay_ms`; Pillow merges identical consecutive frames,
      adding their delays);
    * ``"mp4"``: ``STEM.mp4``, H.264 (yuv420p, so height and width must be even) via imageio-ffmpeg;
      ``quality`` is imageio's 0 (worst) to 10 (best) scale, ``None`` for ffmpeg's default bitrate.

    ``frames``: a numpy array ``(F, H, W, C)`` in [0, 1] (diffusers ``output_type="np"``), a torch
    tensor ``(F, C, H, W)`` in [0, 1] (``output_type="pt"``) or a list of PIL images (``"pil"``); uint8
    arrays are taken as they are. Everything is validated, and the MP4 writer imported, before any file is
    written.
    """
    if isinstance(formats, str):
        raise ValueError(f"formats must be a selection of {FORMATS} such as ('gif',), not {formats!r}")
    formats = tuple(formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"formats must be a non-empty selection of {FORMATS}, got {formats!r}")
    if isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not np.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    if quality is not None and not 0 <= quality <= 10:
        raise ValueError(f"quality must be in [0, 10] (imageio's scale) or None, got {quality!r}")
    pixels = to_uint8_frames(frames)
    imageio = None
    if "mp4" in formats:
        height, width = pixels.shape[1:3]
        if height % 2 or width % 2:
            raise ValueError(f"H.264 MP4 (yuv420p) needs an even height and width, got {height}x{width}")
        imageio = _import_imageio()

    stem = _stem(out_dir_or_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    images = _images(pixels)
    written: dict[str, Path] = {}
    for fmt in dict.fromkeys(formats):
        if fmt == "frames":
            stem.mkdir(parents=True, exist_ok=True)
            for i, image in enumerate(images):
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
                atomic_write_bytes(stem / f"frame_{i:04d}.png", buffer.getvalue())
            written["frames"] = stem
        elif fmt == "gif":
            path = stem.with_name(stem.name + ".gif")
            atomic_write_bytes(path, gif_bytes(images, gif_delay_ms(fps)))
            written["gif"] = path
        else:  # mp4
            path = stem.with_name(stem.name + ".mp4")
            tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}.mp4")  # ffmpeg needs the extension
            rgb = np.repeat(pixels, 3, axis=-1) if pixels.shape[-1] == 1 else pixels
            try:
                with imageio.get_writer(
                    tmp,
                    format="FFMPEG",
                    mode="I",
                    fps=fps,
                    codec="libx264",
                    quality=quality,
                    pixelformat="yuv420p",
                    macro_block_size=1,  # never rescale: sizes are checked to be even above
                ) as writer:
                    for frame in rgb:
                        writer.append_data(frame)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            written["mp4"] = path
    return written
