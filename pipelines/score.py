"""``dsample score``: score the images of a ``dsample generate`` run with a reward.

The run's ``manifest.jsonl`` says which images exist and their prompts; each image is scored with its
prompt (rewards that take no prompt ignore it). Scores go to ``scores/<reward>.jsonl`` in the run directory,
one line per image, written atomically once every image is scored, so an interrupted scoring leaves the
previous file intact. A summary (mean, min, max, per prompt) is returned and printed by the CLI.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from rewards.registry import canonical_reward_name, load_reward

from .outputs import atomic_write_bytes, run_records
from .prompts import UsageError

__all__ = ["ScoreOptions", "parse_option", "score_run"]


@dataclass
class ScoreOptions:
    run: str
    reward: str = "digits"
    options: dict[str, Any] = field(default_factory=dict)
    batch_size: int | None = None
    device: str | None = None
    quiet: bool = False


def parse_option(text: str) -> tuple[str, Any]:
    """``key=value`` with value read as JSON where it parses (numbers, true/false, lists), else as text."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"reward option {text!r} is not key=value")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key.strip(), parsed


def _load_rgb_or_grey(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        return image if image.mode in ("L", "RGB") else image.convert("RGB")


def build_reward(opts: ScoreOptions, modality: str = "image"):
    """(canonical name, reward) of ``opts``: a registered reward or a ``module:attribute`` path, built
    with its options, checked to score ``modality`` (images, or ``"video"``), moved to the device;
    ``UsageError`` if any of it fails."""
    try:
        key = canonical_reward_name(opts.reward)
    except ValueError as error:
        raise UsageError(str(error)) from error
    try:
        reward = load_reward(key, **opts.options)
    except TypeError as error:  # an option the constructor does not take
        raise UsageError(f"reward {key!r}: {error}") from error
    except (FileNotFoundError, ValueError, OSError, ImportError) as error:
        raise UsageError(f"reward {key!r} could not be loaded: {error}") from error
    scores = getattr(reward, "modality", "image")
    if not callable(reward) or scores != modality:
        examples = " (e.g. motion, temporal-consistency)" if modality == "video" else ""
        raise UsageError(
            f"reward {key!r} scores {scores}, not {modality}s; this needs a {modality} reward{examples}"
        )
    if opts.batch_size is not None:
        if opts.batch_size < 1:
            raise UsageError("--batch-size must be positive")
        reward.batch_size = opts.batch_size
    if opts.device and hasattr(reward, "to"):
        reward.to(opts.device)
    return key, reward


def score_run(opts: ScoreOptions) -> dict[str, Any]:
    """Score every image of the run ``opts.run``; returns the summary and writes ``scores/<reward>.jsonl``."""
    root = Path(opts.run)
    records = run_records(root)
    name, reward = build_reward(opts)
    scores: list[float] = []
    step = reward.batch_size
    bar = tqdm(total=len(records), desc=f"scoring ({name})", unit="image", disable=opts.quiet)
    for start in range(0, len(records), step):
        chunk = records[start : start + step]
        images = [_load_rgb_or_grey(root / r["image"]) for r in chunk]
        prompts = [str(r["prompt"]) for r in chunk]
        # PIL batches must share one size and mode: score runs of equal images together
        groups: dict[tuple, list[int]] = {}
        for i, image in enumerate(images):
            groups.setdefault((image.size, image.mode), []).append(i)
        chunk_scores = [0.0] * len(chunk)
        for index in groups.values():
            values = reward([images[i] for i in index], [prompts[i] for i in index])
            for i, value in zip(index, values.tolist()):
                chunk_scores[i] = value
        scores.extend(chunk_scores)
        bar.update(len(chunk))
    bar.close()
    kept = ("image", "prompt_index", "sample_index", "prompt")
    lines = [{k: r[k] for k in kept} | {"reward": name, "score": s} for r, s in zip(records, scores)]
    out = root / "scores" / f"{name}.jsonl"
    out.parent.mkdir(exist_ok=True)
    atomic_write_bytes(out, "".join(json.dumps(line, sort_keys=True) + "\n" for line in lines).encode())
    values = torch.tensor(scores, dtype=torch.float64)
    per_prompt: dict[str, list[float]] = {}
    for r, s in zip(records, scores):
        per_prompt.setdefault(str(r["prompt"]), []).append(s)
    return {
        "reward": name,
        "scale": reward.scale,
        "images": len(scores),
        "mean": float(values.mean()),
        "min": float(values.min()),
        "max": float(values.max()),
        "per_prompt": {p: sum(v) / len(v) for p, v in per_prompt.items()},
        "file": str(out),
    }
