"""``dsample report``: a self-contained HTML gallery of a ``dsample generate`` run.

The page (``RUN/report.html`` by default) embeds every image of ``RUN/manifest.jsonl`` as a PNG data URI, with
inline CSS and no scripts, so it can be mailed or attached as one file. It shows

* the run's parameters (model, sampler, steps, guidance, seed, search settings where the run used search),
* every image, best reward first, with its prompt, seed, reward and NFE,
* a per-prompt summary (count, mean / min / max reward, mean NFE),
* for search runs whose manifest lines carry a ``curve`` ([[nfe, best], ...]: the best look-ahead reward
  seen after spending ``nfe`` model evaluations), every image's curve as a step line and each search
  configuration's mean curve; records without a valid curve are left out of that plot,
* for search runs, whose manifest lines carry ``reward`` and ``nfe``, a scatter of reward against NFE per
  image. Both plots are inline SVG.

The reward is the manifest's own ``reward`` (search runs) or a ``RUN/scores/<name>.jsonl`` written by
``dsample score`` (``reward=`` picks one; by default the manifest's, else the only scores file). With none the
images keep their manifest order and the page says so.
"""

from __future__ import annotations

import base64
import bisect
import html
import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from .outputs import atomic_write_bytes, run_records
from .prompts import UsageError

__all__ = ["write_report", "MAX_EMBED_SIDE"]

MAX_EMBED_SIDE = 512  # larger images are embedded as thumbnails of this size, to keep the page small
MANIFEST_REWARD = "manifest"  # reward= value that selects the manifest's own (search) reward
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


@dataclass
class _Item:
    record: dict[str, Any]
    reward: float | None
    nfe: int | None
    data_uri: str


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _fmt(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}g}"


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _key(name: str) -> str:
    return name.strip().lower().replace("_", "-")


# ------------------------------------------------------------------------------------------ reading the run
def _score_files(root: Path) -> dict[str, Path]:
    folder = root / "scores"
    return {p.stem: p for p in sorted(folder.glob("*.jsonl"))} if folder.is_dir() else {}


def _read_scores(path: Path) -> dict[str, float]:
    scores: dict[str, float] = {}
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
            value = _number(entry["score"])
        except (ValueError, KeyError, TypeError):
            continue
        if value is not None and isinstance(entry.get("image"), str):
            scores[entry["image"]] = value
    return scores


def _choose_reward(
    root: Path, records: list[dict[str, Any]], reward: str | None
) -> tuple[dict[str, float], str, str, str | None]:
    """Rewards by image path, the reward's name, where it comes from, and a note when there is none."""
    in_manifest = {r["image"]: v for r in records if (v := _number(r.get("reward"))) is not None}
    manifest_names = sorted({str(r["reward_name"]) for r in records if r.get("reward_name")})
    manifest_name = ", ".join(manifest_names) or "reward"
    manifest_source = f"search reward {manifest_name} (manifest.jsonl)"
    files = _score_files(root)
    if reward is None:
        if in_manifest:
            return in_manifest, manifest_name, manifest_source, None
        if len(files) == 1:
            (name, path), *_ = files.items()
            return _read_scores(path), name, f"{name} ({path.relative_to(root).as_posix()})", None
        if files:
            note = (
                f"several score files ({', '.join(files)}): choose one with --reward NAME; "
                "images are in manifest order"
            )
        else:
            note = "no rewards: run `dsample score RUN` to sort by one; images are in manifest order"
        return {}, "reward", "none (manifest order)", note
    wanted = _key(reward)
    if in_manifest and wanted == MANIFEST_REWARD:
        return in_manifest, manifest_name, manifest_source, None
    for name, path in files.items():  # a scores file wins over a search reward of the same name
        if _key(name) == wanted:
            return _read_scores(path), name, f"{name} ({path.relative_to(root).as_posix()})", None
    if in_manifest and wanted in {_key(n) for n in manifest_names}:
        return in_manifest, manifest_name, manifest_source, None
    known = list(files) + ([MANIFEST_REWARD] + manifest_names if in_manifest else [])
    available = ", ".join(known) if known else "none (run `dsample score` first)"
    raise UsageError(f"no reward {reward!r} in {root}; available: {available}")


def _data_uri(path: Path) -> str:
    """The file as a data URI: PNGs as they are, animated GIFs (videos) as GIFs, keeping the animation;
    either as a thumbnail (every frame) when larger than MAX_EMBED_SIDE; other images as PNG thumbnails."""
    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as image:
        if image.format == "GIF" and getattr(image, "n_frames", 1) > 1:
            if max(image.size) > MAX_EMBED_SIDE:
                from PIL import ImageSequence

                from .video import gif_bytes

                frames, durations = [], []
                for frame in ImageSequence.Iterator(image):
                    durations.append(frame.info.get("duration", 100))
                    thumb = frame.convert("RGB")
                    thumb.thumbnail((MAX_EMBED_SIDE, MAX_EMBED_SIDE), Image.LANCZOS)
                    frames.append(thumb)
                data = gif_bytes(frames, durations, image.info.get("loop", 0))
            return "data:image/gif;base64," + base64.b64encode(data).decode("ascii")
        if image.format != "PNG" or max(image.size) > MAX_EMBED_SIDE:
            image.load()
            thumb = image.convert("RGBA" if "A" in image.getbands() else "RGB")
            thumb.thumbnail((MAX_EMBED_SIDE, MAX_EMBED_SIDE), Image.LANCZOS)
            buffer = io.BytesIO()
            thumb.save(buffer, format="PNG")
            data = buffer.getvalue()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


# ------------------------------------------------------------------------------------------ page parts
def _distinct(values: Iterable[Any]) -> str:
    seen: list[str] = []
    for v in values:
        text = "—" if v is None else (f"{v:g}" if isinstance(v, float) else str(v))
        if text not in seen:
            seen.append(text)
    return ", ".join(seen)


def _parameters(records: list[dict[str, Any]], reward_source: str, root: Path) -> list[tuple[str, str]]:
    settings = [r.get("settings") or {} for r in records]
    rows = [
        ("run", str(root.resolve())),
        ("model", _distinct(r.get("model") for r in records)),
        ("sampler", _distinct(s.get("sampler") for s in settings)),
        ("steps", _distinct(s.get("steps") for s in settings)),
        ("guidance", _distinct(s.get("guidance") for s in settings)),
        ("seed", _distinct(s.get("seed") for s in settings)),
    ]
    if any(s.get("negative_prompt") for s in settings):
        rows.append(("negative prompt", _distinct(s.get("negative_prompt") for s in settings)))
    rows.append(("size", _distinct(f"{r.get('width')}x{r.get('height')}" for r in records)))
    if any(r.get("search") for r in records):
        rows.append(("search", _distinct(r.get("search") for r in records)))
        rows.append(("particles", _distinct(r.get("particles") for r in records)))
        if any(r.get("max_nfe") is not None for r in records):
            rows.append(("max NFE", _distinct(r.get("max_nfe") for r in records)))
        rows.append(("search reward", _distinct(r.get("reward_name") for r in records)))
        if any(r.get("reward_options") for r in records):
            options = (json.dumps(r.get("reward_options"), sort_keys=True) for r in records)
            rows.append(("reward options", _distinct(options)))
    prompts = {r.get("prompt_index") for r in records}
    rows.append(("images", f"{len(records)} ({len(prompts)} prompt{'s' * (len(prompts) != 1)})"))
    rows.append(("sorted by", reward_source))
    return rows


def _summary_rows(items: list[_Item]) -> list[dict[str, Any]]:
    groups: dict[int, list[_Item]] = {}
    for item in sorted(items, key=lambda i: i.record["prompt_index"]):
        groups.setdefault(item.record["prompt_index"], []).append(item)
    rows = []
    for group in groups.values():
        rewards = [i.reward for i in group if _finite(i.reward)]
        nfes = [i.nfe for i in group if i.nfe is not None]
        rows.append(
            {
                "prompt": group[0].record.get("prompt", ""),
                "count": len(group),
                "mean": sum(rewards) / len(rewards) if rewards else None,
                "min": min(rewards) if rewards else None,
                "max": max(rewards) if rewards else None,
                "nfe": sum(nfes) / len(nfes) if nfes else None,
            }
        )
    return rows


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering [lo, hi] (which must satisfy lo < hi)."""
    raw = (hi - lo) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(lo / step - 1e-9)
    return [round(k * step, 12) for k in range(first, math.floor(hi / step + 1e-9) + 1)]


def _padded(values: Sequence[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if hi - lo <= 1e-12 * max(abs(lo), abs(hi), 1e-300):
        pad = abs(lo) * 0.1 if lo else 1.0
        return lo - pad, hi + pad
    pad = (hi - lo) * 0.05
    return lo - pad, hi + pad


_SVG_SIZE = (720, 380)  # width, height
_SVG_MARGIN = (78, 170, 16, 48)  # left, right (room for the legend), top, bottom
_LEGEND_MAX = 16


@dataclass(frozen=True)
class _Axes:
    """The data ranges of one plot and their mapping to SVG coordinates (y grows upwards)."""

    x_lo: float
    x_hi: float
    y_lo: float
    y_hi: float

    @classmethod
    def around(cls, xs: Sequence[float], ys: Sequence[float]) -> _Axes:
        return cls(*_padded(xs), *_padded(ys))

    @property
    def box(self) -> tuple[int, int, int, int]:
        """left, top, width, height of the plot area."""
        (width, height), (left, right, top, bottom) = _SVG_SIZE, _SVG_MARGIN
        return left, top, width - left - right, height - top - bottom

    def sx(self, x: float) -> float:
        left, _, plot_w, _ = self.box
        return left + (x - self.x_lo) / (self.x_hi - self.x_lo) * plot_w

    def sy(self, y: float) -> float:
        _, top, _, plot_h = self.box
        return top + (self.y_hi - y) / (self.y_hi - self.y_lo) * plot_h


def _colours(series: Iterable[str]) -> dict[str, str]:
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(dict.fromkeys(series))}


def _svg_frame(axes: _Axes, x_label: str, y_label: str) -> list[str]:
    """The opening of an SVG plot: the plot area, grid lines, tick values and axis labels."""
    width, height = _SVG_SIZE
    left, top, plot_w, plot_h = axes.box
    out = [
        f'<svg class="curves" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_esc(y_label)} against {_esc(x_label)}">',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fff" stroke="#888"/>',
    ]
    for t in _ticks(axes.x_lo, axes.x_hi):
        x = axes.sx(t)
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + plot_h}" stroke="#eee"/>')
        out.append(
            f'<text x="{x:.1f}" y="{top + plot_h + 16}" text-anchor="middle" font-size="11">{t:g}</text>'
        )
    for t in _ticks(axes.y_lo, axes.y_hi):
        y = axes.sy(t)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{t:.4g}</text>')
    out.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 8}" text-anchor="middle" font-size="12">'
        f"{_esc(x_label)}</text>"
    )
    out.append(
        f'<text transform="translate(16 {top + plot_h / 2:.1f}) rotate(-90)" text-anchor="middle" '
        f'font-size="12">{_esc(y_label)}</text>'
    )
    return out


def _svg_legend(axes: _Axes, colour: dict[str, str], marker: str) -> list[str]:
    """A legend right of the plot area: one ``marker`` ("dot" or "line") and name per series."""
    left, top, plot_w, _ = axes.box
    x = left + plot_w + 16
    out = []
    for i, (name, fill) in enumerate(list(colour.items())[:_LEGEND_MAX]):
        y = top + 10 + 18 * i
        if marker == "line":
            out.append(
                f'<line x1="{x - 7}" y1="{y}" x2="{x + 5}" y2="{y}" stroke="{fill}" stroke-width="3"/>'
            )
        else:
            out.append(f'<circle cx="{x}" cy="{y}" r="4" fill="{fill}"/>')
        label = name if len(name) <= 20 else name[:19] + "…"
        out.append(f'<text x="{x + 10}" y="{y + 4}" font-size="11">{_esc(label)}</text>')
    if len(colour) > _LEGEND_MAX:
        out.append(
            f'<text x="{x + 10}" y="{top + 10 + 18 * _LEGEND_MAX + 4}" font-size="11">'
            f"… {len(colour) - _LEGEND_MAX} more</text>"
        )
    return out


def _scatter_svg(points: list[tuple[float, float, str, str]], x_label: str, y_label: str) -> str:
    """An SVG scatter plot of (x, y, series, tooltip) points, one colour per series, with a legend."""
    axes = _Axes.around([p[0] for p in points], [p[1] for p in points])
    colour = _colours(p[2] for p in points)
    out = _svg_frame(axes, x_label, y_label)
    for x, y, name, tip in points:
        out.append(
            f'<circle class="point" cx="{axes.sx(x):.1f}" cy="{axes.sy(y):.1f}" r="4" fill="{colour[name]}" '
            f'fill-opacity="0.75" stroke="#333" stroke-width="0.5"><title>{_esc(tip)}</title></circle>'
        )
    out += _svg_legend(axes, colour, "dot")
    out.append("</svg>")
    return "\n".join(out)


@dataclass
class _Line:
    """One line of ``_line_svg``: its (x, y) vertices, series (colour), tooltip, CSS class and width."""

    points: list[tuple[float, float]]
    series: str
    tip: str
    kind: str = "line"
    width: float = 1.0
    opacity: float = 1.0


def _steps(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The vertices of the step function through ``points`` (each value holds until the next x)."""
    out: list[tuple[float, float]] = []
    for x, y in points:
        if out:
            out.append((x, out[-1][1]))
        out.append((x, y))
    return out


def _line_svg(lines: list[_Line], x_label: str, y_label: str, step: bool = False) -> str:
    """An SVG line plot of ``lines`` (drawn in order), one colour per series, with a legend; ``step`` draws
    each line as a step function (horizontal, then vertical) instead of straight segments."""
    axes = _Axes.around([x for ln in lines for x, _ in ln.points], [y for ln in lines for _, y in ln.points])
    colour = _colours(ln.series for ln in lines)
    out = _svg_frame(axes, x_label, y_label)
    for ln in lines:
        vertices = _steps(ln.points) if step else ln.points
        if len(vertices) == 1:
            vertices = vertices * 2  # a zero-length line, drawn as a dot by its round caps
        coords = " ".join(f"{axes.sx(x):.1f},{axes.sy(y):.1f}" for x, y in vertices)
        out.append(
            f'<polyline class="{_esc(ln.kind)}" points="{coords}" fill="none" stroke="{colour[ln.series]}" '
            f'stroke-width="{ln.width:g}" stroke-opacity="{ln.opacity:g}" stroke-linecap="round" '
            f'stroke-linejoin="round"><title>{_esc(ln.tip)}</title></polyline>'
        )
    out += _svg_legend(axes, colour, "line")
    out.append("</svg>")
    return "\n".join(out)


def _curve(record: dict[str, Any]) -> list[tuple[float, float]] | None:
    """The record's anytime search curve as (nfe, best) pairs, or None when it has none or it is malformed
    (not a list of [nfe, best] pairs of finite numbers, nfe >= 0 strictly increasing, best non-decreasing)."""
    raw = record.get("curve")
    if not isinstance(raw, list) or not raw:
        return None
    curve: list[tuple[float, float]] = []
    for pair in raw:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            return None
        nfe, best = _number(pair[0]), _number(pair[1])
        if nfe is None or best is None or not (math.isfinite(nfe) and math.isfinite(best)) or nfe < 0:
            return None
        if curve and (nfe <= curve[-1][0] or best < curve[-1][1]):
            return None
        curve.append((nfe, best))
    return curve


def _step_value(curve: Sequence[tuple[float, float]], x: float) -> float:
    """The value at ``x`` (not before the curve's first x) of the step function through ``curve``."""
    return curve[bisect.bisect_right([p[0] for p in curve], x) - 1][1]


def _mean_curve(curves: Sequence[Sequence[tuple[float, float]]]) -> list[tuple[float, float]]:
    """The mean of the step functions ``curves`` at every x of theirs from the largest first x (where every
    curve has a value); each curve keeps its last value after its last x."""
    start = max(c[0][0] for c in curves)
    xs = sorted({x for c in curves for x, _ in c if x >= start})
    return [(x, sum(_step_value(c, x) for c in curves) / len(curves)) for x in xs]


def _curve_lines(items: list[_Item]) -> list[_Line]:
    """Thin step lines of every image's valid curve, then one thick mean line per search configuration."""
    groups: dict[str, list[tuple[_Item, list[tuple[float, float]]]]] = {}
    for item in items:
        if (curve := _curve(item.record)) is not None:
            groups.setdefault(_search_label(item.record), []).append((item, curve))
    lines: list[_Line] = []
    for label, group in groups.items():
        for item, curve in group:
            r = item.record
            tip = (
                f"{label}: {r.get('prompt', '')} (seed {r.get('image_seed')}): best {_fmt(curve[-1][1])} "
                f"after {curve[-1][0]:g} NFE"
            )
            lines.append(_Line(curve, label, tip, kind="curve", width=1.2, opacity=0.45))
    for label, group in groups.items():
        mean = _mean_curve([curve for _, curve in group])
        tip = f"{label}: mean of {len(group)} image{'s' * (len(group) != 1)} from {mean[0][0]:g} NFE"
        lines.append(_Line(mean, label, tip, kind="mean", width=3.0))
    return lines


def _search_label(record: dict[str, Any]) -> str:
    search = record.get("search")
    if not search:
        return "no search"
    particles = record.get("particles")
    return f"{search} ×{particles}" if particles is not None else str(search)


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 24px; color: #222;
       background: #fafafa; }
h1 { font-size: 22px; margin: 0 0 12px; } h2 { font-size: 17px; margin: 28px 0 10px; }
table { border-collapse: collapse; font-size: 13px; background: #fff; }
th, td { border: 1px solid #ddd; padding: 4px 10px; text-align: left; vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
table.params th { background: #f0f0f0; font-weight: 600; }
.muted { color: #777; font-size: 13px; }
.note { background: #fff7d6; border: 1px solid #e6d28a; padding: 6px 10px; display: inline-block;
        font-size: 13px; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 10px; }
figure.card { margin: 0; background: #fff; border: 1px solid #ddd; border-radius: 4px; padding: 6px;
              font-size: 12px; }
figure.card img { display: block; width: 100%; height: auto; background: #000; }
figure.card img.tiny { image-rendering: pixelated; }
figcaption { margin-top: 4px; line-height: 1.35; overflow-wrap: anywhere; }
.rank { color: #888; } .seed { font-size: 11px; color: #555; }
.prompt { font-weight: 600; } .reward { font-variant-numeric: tabular-nums; }
svg.curves { background: #fff; border: 1px solid #ddd; max-width: 100%; height: auto; }
"""


def _render(
    root: Path,
    items: list[_Item],
    params: list[tuple[str, str]],
    reward_label: str,
    note: str | None,
) -> str:
    has_nfe = any(i.nfe is not None for i in items)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>dsample report: {_esc(root.resolve().name)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>dsample report: {_esc(root.resolve().name)}</h1>",
        '<table class="params">',
    ]
    parts += [f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in params]
    parts.append("</table>")
    if note:
        parts.append(f'<p class="note">{_esc(note)}</p>')

    # per-prompt summary
    parts.append("<h2>Per prompt</h2>")
    head = ["prompt", "count", f"mean {reward_label}", "min", "max"] + (["mean NFE"] if has_nfe else [])
    parts.append('<table class="summary"><tr>')
    parts += [f"<th{'' if i == 0 else ' class=num'}>{_esc(h)}</th>" for i, h in enumerate(head)]
    parts.append("</tr>")
    for row in _summary_rows(items):
        cells = [
            f"<td>{_esc(row['prompt'])}</td>",
            f'<td class="num">{row["count"]}</td>',
            f'<td class="num">{_fmt(row["mean"])}</td>',
            f'<td class="num">{_fmt(row["min"])}</td>',
            f'<td class="num">{_fmt(row["max"])}</td>',
        ]
        if has_nfe:
            cells.append(f'<td class="num">{_fmt(row["nfe"], 6)}</td>')
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</table>")

    # search curves
    points = [
        (
            float(i.nfe),
            i.reward,
            _search_label(i.record),
            f"{i.record.get('prompt', '')} (seed {i.record.get('image_seed')}): "
            f"{reward_label} {_fmt(i.reward)} at {i.nfe} NFE",
        )
        for i in items
        if i.nfe is not None and _finite(i.reward)
    ]
    lines = _curve_lines(items)
    if lines:
        curve_records = [i.record for i in items if _curve(i.record) is not None]
        search_reward = _distinct(r.get("reward_name") or "reward" for r in curve_records)
        parts.append("<h2>Search curves: best reward against NFE</h2>")
        parts.append(
            _line_svg(lines, "NFE (model evaluations per image)", f"best {search_reward} seen", step=True)
        )
        parts.append(
            '<p class="muted">Thin steps: the best (look-ahead) search reward each image\'s search had seen '
            "after spending that many NFE. Thick: the mean of its configuration's images, drawn from the "
            "largest of their first NFE values, where every image of the configuration has started.</p>"
        )
    elif has_nfe or points:
        parts.append("<h2>Search curves</h2>")
        parts.append(
            '<p class="muted">No anytime curves: no manifest record has a valid <code>curve</code> '
            "(best reward against NFE; runs made before it was recorded have none).</p>"
        )
    if points:
        parts.append("<h2>Final reward against NFE</h2>")
        parts.append(_scatter_svg(points, "NFE (model evaluations per image)", reward_label))
    elif not has_nfe:
        parts.append(
            '<p class="muted">No search curves: the manifest gives no NFE per image (not a search run).</p>'
        )

    # gallery
    sorted_note = " (best first)" if any(i.reward is not None for i in items) else " (manifest order)"
    parts.append(f"<h2>Images{sorted_note}</h2>")
    parts.append('<div class="gallery">')
    for rank, item in enumerate(items, 1):
        r = item.record
        tiny = max(int(r.get("width") or 0), int(r.get("height") or 0)) < 128
        lines = [
            f'<span class="rank">#{rank}</span> <span class="prompt">{_esc(r.get("prompt", ""))}</span>',
            f'<span class="seed">seed {_esc(r.get("image_seed", "—"))}</span>',
            f'{_esc(reward_label)} <span class="reward">{_fmt(item.reward)}</span>',
        ]
        if item.nfe is not None:
            lines.append(f"NFE {item.nfe}")
        alt = f"{r.get('prompt', '')} #{r.get('sample_index', '')}"
        parts.append(
            f'<figure class="card"><img{" class=tiny" if tiny else ""} src="{item.data_uri}" '
            f'alt="{_esc(alt)}" title="{_esc(r["image"])}">'
            f"<figcaption>{'<br>'.join(lines)}</figcaption></figure>"
        )
    parts.append("</div></body></html>")
    return "\n".join(parts) + "\n"


def write_report(run_dir: str | Path, out: str | Path | None = None, reward: str | None = None) -> Path:
    """Write the HTML report of the ``dsample generate`` run ``run_dir``; returns the path written.

    ``out`` defaults to ``run_dir/report.html``. ``reward`` names the reward to sort by: a scores file
    (``scores/<reward>.jsonl``), or ``"manifest"`` (or the search reward's name) for the manifest's own
    ``reward`` field. ``UsageError`` when ``run_dir`` is not a run or the reward is not there."""
    root = Path(run_dir)
    records = run_records(root)
    rewards, reward_label, source, note = _choose_reward(root, records, reward)
    missing = sum(1 for r in records if r["image"] not in rewards)
    if rewards and missing:
        note = f"{missing} of {len(records)} images have no reward and are listed last"
    items = [
        _Item(
            record=r,
            reward=rewards.get(r["image"]),
            nfe=int(n) if (n := _number(r.get("nfe"))) is not None else None,
            data_uri=_data_uri(root / r["image"]),
        )
        for r in records
    ]

    def order(item: _Item) -> tuple[int, float]:
        if item.reward is None:
            return (2, 0.0)
        if math.isnan(item.reward):
            return (1, 0.0)
        return (0, -item.reward)

    items.sort(key=order)  # stable: ties keep manifest order
    page = _render(root, items, _parameters(records, source, root), reward_label, note)
    target = Path(out) if out is not None else root / "report.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, page.encode("utf-8"))
    return target
