"""Prompt lists for batch generation: ``--prompt`` values, a text file (one per line) or JSONL with overrides.

A JSONL line is ``{"prompt": "7", "steps": 30, "guidance": 3.0, "seed": 5, "num_images": 2,
"sampler": "DDIM", "negative_prompt": "...", "width": 512, "height": 512}``; every key but ``prompt`` is
optional and overrides the command-line value for that prompt only.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["PromptSpec", "UsageError", "load_prompts", "check_settings", "OVERRIDABLE"]


class UsageError(ValueError):
    """Bad input from the user: reported as one line, exit code 2, nothing written."""


@dataclass(frozen=True)
class PromptSpec:
    text: str
    overrides: dict[str, Any] = field(default_factory=dict)


# key -> (type, lower bound or None); checked for command-line values and JSONL overrides alike
OVERRIDABLE: dict[str, tuple[type, float | None]] = {
    "steps": (int, 1),
    "guidance": (float, 0.0),
    "seed": (int, 0),
    "num_images": (int, 1),
    "sampler": (str, None),
    "negative_prompt": (str, None),
    "width": (int, 8),
    "height": (int, 8),
}


def check_settings(values: dict[str, Any], where: str) -> dict[str, Any]:
    """Type- and range-check settings (``None`` means "not set"); ``UsageError`` names the first bad one."""
    out = {}
    for key, value in values.items():
        if key not in OVERRIDABLE:
            raise UsageError(f"{where}: unknown setting {key!r} (allowed: prompt, {', '.join(OVERRIDABLE)})")
        if value is None:
            continue
        kind, low = OVERRIDABLE[key]
        if kind is str:
            if not isinstance(value, str):
                raise UsageError(f"{where}: {key} must be a string, got {value!r}")
        elif kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise UsageError(f"{where}: {key} must be an integer, got {value!r}")
        else:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise UsageError(f"{where}: {key} must be a finite number, got {value!r}")
            value = float(value)
        if low is not None and value < low:
            raise UsageError(f"{where}: {key} must be >= {low:g}, got {value!r}")
        out[key] = value
    return out


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"prompt file {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise UsageError(f"prompt file {str(path)!r} is a directory") from None
    except OSError as err:
        raise UsageError(f"cannot read prompt file {str(path)!r}: {err.strerror}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise UsageError(f"prompt file {str(path)!r} is not UTF-8 (byte {err.start})") from None


def _parse_jsonl_line(line: str, where: str) -> PromptSpec:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise UsageError(f"{where}: not valid JSON ({err.msg})") from None
    if not isinstance(record, dict):
        raise UsageError(f"{where}: expected a JSON object with a 'prompt' key")
    if not isinstance(record.get("prompt"), str) or not record["prompt"].strip():
        raise UsageError(f"{where}: 'prompt' must be a non-empty string")
    overrides = {k: v for k, v in record.items() if k != "prompt"}
    return PromptSpec(record["prompt"].strip(), check_settings(overrides, where))


def load_prompts(prompts: list[str] | None, prompt_file: str | None) -> list[PromptSpec]:
    """Prompts from ``--prompt`` values and/or a ``--prompts`` file, in that order; blank lines skipped.

    A file ending in ``.jsonl`` (or whose first non-blank line starts with ``{``) is read as JSONL."""
    specs = [PromptSpec(p.strip()) for p in prompts or []]
    if any(not s.text for s in specs):
        raise UsageError("--prompt must not be empty")
    if prompt_file is not None:
        path = Path(prompt_file)
        lines = _read_text(path).splitlines()
        numbered = [(n, line.strip()) for n, line in enumerate(lines, 1) if line.strip()]
        if not numbered:
            raise UsageError(f"prompt file {str(path)!r} has no prompts")
        as_jsonl = path.suffix.lower() == ".jsonl" or numbered[0][1].startswith("{")
        for n, line in numbered:
            where = f"{path}:{n}"
            specs.append(_parse_jsonl_line(line, where) if as_jsonl else PromptSpec(line))
    if not specs:
        raise UsageError("no prompts: give --prompt TEXT (repeatable) or --prompts FILE")
    return specs
