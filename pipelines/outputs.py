"""Crash-safe outputs of a batch run: PNGs with their parameters, a manifest, and per-prompt grids.

* Every file is written to a temporary name in its final directory and moved into place with
  ``os.replace`` (atomic on POSIX), so a killed run never leaves a half-written image under a final name.
* ``manifest.jsonl`` gets one line per image, appended with a single ``write`` on an ``O_APPEND``
  descriptor *after* the image is in place; concurrent processes can append to it safely.
* :func:`read_manifest` drops a torn last line and entries whose file is gone, so a rerun redoes exactly
  the images that were not finished.
"""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

__all__ = [
    "atomic_write_bytes",
    "png_bytes",
    "a1111_parameters",
    "Manifest",
    "read_manifest",
    "rewrite_manifest",
    "image_grid",
    "remove_stale_temporaries",
]

TMP_MARK = ".tmp-"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary sibling and ``os.replace``."""
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def remove_stale_temporaries(directory: Path) -> int:
    """Delete temporaries left by killed runs; returns how many."""
    stale = [p for p in directory.glob(f".*{TMP_MARK}*") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def png_bytes(image: Image.Image, text: dict[str, str]) -> bytes:
    """PNG-encode ``image`` with ``text`` as PNG text chunks (UTF-8 iTXt where needed)."""
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        if value.isascii():
            info.add_text(key, value)
        else:
            info.add_itxt(key, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def a1111_parameters(prompt: str, settings: dict[str, Any], extra: dict[str, Any]) -> str:
    """The ``parameters`` text AUTOMATIC1111's web UI writes (and its "PNG Info" tab reads)."""
    lines = [prompt]
    if settings.get("negative_prompt"):
        lines.append(f"Negative prompt: {settings['negative_prompt']}")
    fields = {"Steps": settings["steps"], "Sampler": extra["sampler_label"]}
    if extra.get("schedule_type"):
        fields["Schedule type"] = extra["schedule_type"]
    if settings.get("guidance") is not None:
        fields["CFG scale"] = f"{settings['guidance']:g}"
    fields["Seed"] = extra["image_seed"]
    fields["Size"] = f"{extra['width']}x{extra['height']}"
    fields["Model"] = extra["model"]
    if extra.get("search"):  # an image found by inference-time search
        fields["Search"] = f"{extra['search']} ({extra['particles']} particles)"
        fields["Reward"] = f"{extra['reward_name']} {extra['reward']:.4g}"
        fields["NFE"] = extra["nfe"]
    fields["Version"] = "dsample"
    lines.append(", ".join(f"{k}: {v}" for k, v in fields.items()))
    return "\n".join(lines)


class Manifest:
    """Append-only ``manifest.jsonl``: one JSON object per finished image."""

    def __init__(self, path: Path):
        self.path = path

    def append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, sort_keys=True) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


def _files_exist(root: Path, record: dict[str, Any]) -> bool:
    """Whether a record's files are all in place: its image, and a video's every file (GIF, MP4, and each
    of its ``num_frames`` PNG frames)."""
    if not (root / record["image"]).is_file():
        return False
    video = record.get("video")
    if video is None:
        return True
    for fmt, relpath in video.items():
        if fmt == "frames":
            names = [f"frame_{i:04d}.png" for i in range(int(record["num_frames"]))]
            if not all((root / relpath / name).is_file() for name in names):
                return False
        elif not (root / relpath).is_file():
            return False
    return True


def read_manifest(path: Path, root: Path) -> tuple[dict[tuple[int, int], dict], bool]:
    """Finished images by (prompt index, sample index), and whether ``path`` lists exactly these.

    Torn or invalid lines, duplicates and entries whose image file (a video: any of its files) is missing
    are dropped; when any were,
    the flag is False and :func:`rewrite_manifest` makes every image listed exactly once."""
    if not path.exists():
        return {}, True
    entries: dict[tuple[int, int], dict] = {}
    lines = [raw for raw in path.read_bytes().split(b"\n") if raw.strip()]
    for raw in lines:
        try:
            record = json.loads(raw)
            key = (int(record["prompt_index"]), int(record["sample_index"]))
            file_ok = _files_exist(root, record)
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
        if file_ok and key not in entries:
            entries[key] = record
    return entries, len(entries) == len(lines)


def run_records(root: Path) -> list[dict]:
    """The manifest records of a finished ``dsample generate`` run at ``root``, in (prompt, sample) order;
    ``UsageError`` when ``root`` is not a run or lists no existing image."""
    from .prompts import UsageError

    manifest = root / "manifest.jsonl"
    if not root.is_dir() or not manifest.is_file():
        raise UsageError(f"{root} has no manifest.jsonl: is it a `dsample generate` output directory?")
    entries, _ = read_manifest(manifest, root)
    if not entries:
        raise UsageError(f"{manifest} lists no existing images")
    return [entries[key] for key in sorted(entries)]


def rewrite_manifest(path: Path, entries: dict[tuple[int, int], dict]) -> None:
    """Replace the manifest (atomically) by one line per entry."""
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in entries.values())
    atomic_write_bytes(path, text.encode())


def image_grid(images: list[Image.Image], min_tile: int = 64) -> Image.Image:
    """Tile images in a near-square grid; tiles smaller than ``min_tile`` pixels are enlarged (nearest)."""
    columns = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    w, h = images[0].size
    scale = max(1, math.ceil(min_tile / max(min(w, h), 1)))
    tw, th = w * scale, h * scale
    grid = Image.new(images[0].mode, (columns * tw, rows * th))
    for i, im in enumerate(images):
        tile = im.resize((tw, th), Image.NEAREST) if scale > 1 else im
        grid.paste(tile, ((i % columns) * tw, (i // columns) * th))
    return grid
