"""`dsample report`: a self-contained HTML gallery of a `generate` run, sorted by reward."""

from __future__ import annotations

import base64
import html
import io
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from pipelines.cli import main
from pipelines.report import MAX_EMBED_SIDE, write_report

IMG = re.compile(r'<img[^>]*\ssrc="data:image/png;base64,([A-Za-z0-9+/=]+)"')
POINT = re.compile(r'<circle class="point" cx="([\d.]+)" cy="([\d.]+)"[^>]*><title>([^<]*)</title>')


@pytest.fixture(scope="module")
def scored_run(tmp_path_factory) -> Path:
    """A real run: 4 images of the bundled digits model (few steps, so rewards differ), scored."""
    out = tmp_path_factory.mktemp("run")
    args = ["--prompt", "3", "--prompt", "eight", "--num-images", "2", "--steps", "4", "--quiet"]
    assert main(["generate", "--out", str(out), *args]) == 0
    assert main(["score", str(out), "--reward", "digits", "--quiet"]) == 0
    return out


def _embedded(page: str) -> list[bytes]:
    return [base64.b64decode(data) for data in IMG.findall(page)]


def _scores(run: Path, name: str) -> dict[str, float]:
    lines = (run / "scores" / f"{name}.jsonl").read_text().splitlines()
    return {entry["image"]: entry["score"] for entry in map(json.loads, lines)}


def _png(colour: int, size: tuple[int, int] = (8, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _hand_run(root: Path, records: list[dict], sizes: dict[str, tuple[int, int]] | None = None) -> Path:
    """A run directory written by hand: one PNG per record and the manifest."""
    (root / "images").mkdir(parents=True)
    for i, record in enumerate(records):
        size = (sizes or {}).get(record["image"], (8, 8))
        (root / record["image"]).write_bytes(_png(20 * i, size))
    with open(root / "manifest.jsonl", "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    return root


def _record(p: int, s: int, prompt: str, **extra) -> dict:
    settings = {"steps": 10, "guidance": 2.0, "seed": 0, "sampler": "DPM++ 2M", "negative_prompt": None}
    return {
        "image": f"images/{p}_{s}.png",
        "prompt_index": p,
        "sample_index": s,
        "prompt": prompt,
        "settings": settings | {"width": None, "height": None},
        "image_seed": 1000 * p + s,
        "model": "dsample-digits",
        "width": 8,
        "height": 8,
        **extra,
    }


def test_report_of_a_scored_run_embeds_every_image_best_first(scored_run, capsys):
    assert main(["report", str(scored_run)]) == 0
    path = scored_run / "report.html"
    assert capsys.readouterr().out.strip() == str(path)
    page = path.read_text()
    files = {
        p.relative_to(scored_run).as_posix(): p.read_bytes() for p in (scored_run / "images").glob("*.png")
    }
    by_bytes = {data: name for name, data in files.items()}
    order = [by_bytes[data] for data in _embedded(page)]  # each data URI is exactly one image's PNG
    assert sorted(order) == sorted(files) and len(files) == 4
    scores = _scores(scored_run, "digits")
    rewards = [scores[name] for name in order]
    assert rewards == sorted(rewards, reverse=True) and len(set(rewards)) > 1
    # self-contained: nothing fetched from elsewhere, no script needed
    assert "<script" not in page and not re.search(r'(src|href)="(?!data:)', page)
    assert "DPM++ 2M" in page and "dsample-digits" in page and "scores/digits.jsonl" in page
    assert "Per prompt" in page and "No search curves" in page and "mean NFE" not in page
    for image_seed in (json.loads(line)["image_seed"] for line in open(scored_run / "manifest.jsonl")):
        assert f"seed {image_seed}" in page


def test_search_manifest_gives_curves_nfe_and_escaped_prompts(tmp_path):
    prompt = '<b>bold</b> & "quoted" <script>alert(1)</script>'
    search = {"search": "smc", "particles": 8, "reward_name": "digits"}
    points = [(0, 0, -0.5, 40), (0, 1, -0.1, 80), (1, 0, -2.0, 40), (1, 1, -0.3, 160)]
    records = [_record(p, s, prompt if p == 0 else "7", reward=r, nfe=n, **search) for p, s, r, n in points]
    run = _hand_run(tmp_path / "search", records)
    path = write_report(run)
    page = path.read_text()
    assert prompt not in page and "<b>" not in page and "<script" not in page
    assert html.escape(prompt, quote=True) in page
    # gallery best first: rewards -0.1, -0.3, -0.5, -2.0
    embedded = _embedded(page)
    assert embedded == [(run / f"images/{i}.png").read_bytes() for i in ("0_1", "1_1", "0_0", "1_0")]
    assert "mean NFE" in page and "NFE 160" in page and "smc" in page and "particles" in page
    assert '<svg class="curves"' in page
    drawn = [(float(x), float(y), title) for x, y, title in POINT.findall(page)]
    assert len(drawn) == 4
    # a larger NFE is further right, a larger reward higher up (smaller y)
    by_nfe = sorted(drawn, key=lambda d: d[0])
    assert [t.rsplit(" at ", 1)[1] for _, _, t in by_nfe][:2] == ["40 NFE", "40 NFE"]
    assert by_nfe[-1][2].endswith("at 160 NFE")
    by_height = sorted(drawn, key=lambda d: d[1])
    assert "-0.1 at 80 NFE" in by_height[0][2] and "-2 at 40 NFE" in by_height[-1][2]
    # per-prompt row of prompt 0: mean -0.3, min -0.5, max -0.1, mean NFE 60
    row = re.search(r"<tr><td>&lt;b&gt;bold.*?</tr>", page).group(0)
    assert re.findall(r'<td class="num">([^<]*)</td>', row) == ["2", "-0.3", "-0.5", "-0.1", "60"]


def test_reward_choice_unsorted_note_and_errors(tmp_path, capsys):
    records = [_record(0, s, "1") for s in range(3)]
    run = _hand_run(tmp_path / "plain", records)
    page = write_report(run).read_text()  # no rewards anywhere: manifest order and a note
    assert _embedded(page) == [(run / f"images/0_{s}.png").read_bytes() for s in range(3)]
    assert "manifest order" in page and "dsample score" in page
    (run / "scores").mkdir()
    for name, values in (("digits", [0.1, 0.3, 0.2]), ("jpeg-compressibility", [3.0, 1.0, 2.0])):
        lines = [{"image": f"images/0_{s}.png", "score": v} for s, v in enumerate(values)]
        (run / "scores" / f"{name}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    page = write_report(run).read_text()  # two score files and no choice: a note, manifest order
    assert "several score files" in page
    out = tmp_path / "elsewhere" / "r.html"
    assert main(["report", str(run), "--reward", "jpeg_compressibility", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    order = [(run / f"images/0_{s}.png").read_bytes() for s in (0, 2, 1)]
    assert _embedded(out.read_text()) == order
    assert main(["report", str(run), "--reward", "clip"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no reward 'clip'" in err and "digits, jpeg-compressibility" in err
    assert main(["report", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is it a `dsample generate` output directory?" in err


def test_scores_file_overrides_search_reward_and_partial_scores(tmp_path):
    records = [
        _record(0, s, "2", reward=float(s), nfe=10, search="bon", reward_name="digits") for s in range(3)
    ]
    run = _hand_run(tmp_path / "run", records)
    (run / "scores").mkdir()
    lines = [{"image": f"images/0_{s}.png", "score": -float(s)} for s in (0, 1)]  # image 0_2 unscored
    (run / "scores" / "aesthetic.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    png = [(run / f"images/0_{s}.png").read_bytes() for s in range(3)]
    assert _embedded(write_report(run).read_text()) == png[::-1]  # default: the manifest's search reward
    page = write_report(run, reward="aesthetic").read_text()
    assert _embedded(page) == png  # 0 > -1, and the unscored image last
    assert "1 of 3 images have no reward" in page


def test_large_images_are_embedded_as_thumbnails(tmp_path):
    record = _record(0, 0, "a photo") | {"width": 1200, "height": 600}
    run = _hand_run(tmp_path / "big", [record], sizes={"images/0_0.png": (1200, 600)})
    (data,) = _embedded(write_report(run).read_text())
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG" and image.size == (MAX_EMBED_SIDE, MAX_EMBED_SIDE // 2)


POLYLINE = re.compile(
    r'<polyline class="(curve|mean)" points="([^"]*)"[^>]*stroke="([^"]*)"[^>]*><title>([^<]*)<'
)


def _polylines(page: str) -> list[tuple[str, list[tuple[float, float]], str, str]]:
    """(class, vertices, colour, tooltip) of every polyline of the page."""
    return [
        (kind, [tuple(map(float, xy.split(","))) for xy in points.split()], colour, html.unescape(title))
        for kind, points, colour, title in POLYLINE.findall(page)
    ]


def _curve_record(p: int, s: int, curve, search: str = "smc", particles: int = 4, **extra) -> dict:
    record = _record(p, s, str(p), search=search, particles=particles, reward_name="digits", **extra)
    record.setdefault("reward", 0.0)
    record.setdefault("nfe", 64)
    return record | ({} if curve is None else {"curve": curve})


def test_search_curves_draw_every_image_and_the_mean_per_configuration(tmp_path):
    smc = {  # image seed -> curve: the mean starts at NFE 20, where the last of the three has started
        0: [[10, 0.1], [30, 0.5], [50, 0.6]],
        1: [[20, 0.2], [40, 0.4]],
        2: [[15, 0.3]],
    }
    records = [_curve_record(0, s, curve) for s, curve in smc.items()]
    records.append(_curve_record(1, 0, [[8, 0.05], [16, 0.7]], search="bon", particles=8))
    page = write_report(_hand_run(tmp_path / "curves", records)).read_text()
    assert "Search curves: best reward against NFE" in page and "best digits seen" in page
    assert "Final reward against NFE" in page and len(POINT.findall(page)) == 4  # the scatter stays
    drawn = _polylines(page)
    curves = {title.split("seed ")[1].split(")")[0]: (v, c) for k, v, c, title in drawn if k == "curve"}
    means = {title.split(":")[0]: (v, c) for k, v, c, title in drawn if k == "mean"}
    assert sorted(curves) == ["0", "1", "1000", "2"] and sorted(means) == ["bon ×8", "smc ×4"]
    assert curves["0"][1] == curves["2"][1] == means["smc ×4"][1] != means["bon ×8"][1]
    # pixels back to data, from the first and last vertex of image 0's curve: (10, 0.1) and (50, 0.6)
    (x0, y0), *_, (x1, y1) = curves["0"][0]

    def data(vertices: list[tuple[float, float]]) -> list[float]:  # flat: x, y, x, y, ...
        return [
            c for x, y in vertices for c in (10 + (x - x0) / (x1 - x0) * 40, 0.1 + (y - y0) / (y1 - y0) * 0.5)
        ]

    # image 0 is a step line: 0.1 holds until NFE 30, then 0.5 until 50, then 0.6
    expected = [(10, 0.1), (30, 0.1), (30, 0.5), (50, 0.5), (50, 0.6)]
    assert data(curves["0"][0]) == pytest.approx([c for v in expected for c in v], abs=0.01)
    # the mean from NFE 20: (0.1 + 0.2 + 0.3) / 3, at 30 (0.5 + 0.2 + 0.3) / 3, at 40 (0.5 + 0.4 + 0.3) / 3,
    # at 50 (0.6 + 0.4 + 0.3) / 3, each curve keeping its last value after its last NFE
    steps = [20, 0.2, 30, 0.2, 30, 1 / 3, 40, 1 / 3, 40, 0.4, 50, 0.4, 50, 1.3 / 3]  # x, y, x, y, ...
    assert data(means["smc ×4"][0]) == pytest.approx(steps, abs=0.01)
    # one image only: its mean is its own curve
    assert means["bon ×8"][0] == curves["1000"][0]
    assert "<script" not in page and not re.search(r'(src|href)="(?!data:)', page)


@pytest.mark.parametrize(
    "bad",
    [
        "0.5",
        {"nfe": 10},
        [],
        [[10, 0.1, 3]],
        [[10]],
        [10, 0.1],
        [[10, float("nan")]],
        [[float("inf"), 0.2]],
        [[True, 0.2]],
        [[10, "0.2"]],
        [[-1, 0.2]],
        [[20, 0.1], [10, 0.2]],  # NFE going back
        [[10, 0.1], [10, 0.2]],  # NFE repeated
        [[10, 0.5], [20, 0.2]],  # best going down
        None,  # no curve at all
    ],
)
def test_malformed_or_missing_curves_are_left_out(tmp_path, bad):
    good = [[10, 0.1], [20, 0.3]]
    records = [_curve_record(0, 0, good, reward=0.3, nfe=20), _curve_record(0, 1, bad, reward=0.9, nfe=40)]
    page = write_report(_hand_run(tmp_path / "run", records)).read_text()
    drawn = _polylines(page)
    assert [kind for kind, *_ in drawn] == ["curve", "mean"]
    assert drawn[0][1] == drawn[1][1]  # the mean of the one valid curve is that curve
    assert "seed 0)" in drawn[0][3] and "mean of 1 image from 10 NFE" in drawn[1][3]
    assert len(POINT.findall(page)) == 2 and len(_embedded(page)) == 2


def test_search_run_without_curves_shows_a_note_and_the_scatter(tmp_path):
    records = [_curve_record(0, s, None, reward=0.1 * s, nfe=10 * (s + 1)) for s in range(3)]
    records[1]["curve"] = [[5, "oops"]]
    page = write_report(_hand_run(tmp_path / "run", records)).read_text()
    assert "No anytime curves" in page and "<polyline" not in page
    assert "Final reward against NFE" in page and len(POINT.findall(page)) == 3
