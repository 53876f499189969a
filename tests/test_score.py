"""`dsample score`: rewards applied to the images of a `dsample generate` run."""

import json
import math

import pytest
from PIL import Image

from pipelines.cli import main
from rewards import JPEGCompressibility, digits_reward


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["generate", "--num-images", "2", "--steps", "10", "--out", str(out), "--quiet"]) == 0
    return out


def _score_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_digits_scores_equal_the_reward_on_the_saved_images(run_dir, capsys):
    assert main(["score", str(run_dir), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "20 images scored with digits" in printed and "'7': mean" in printed
    lines = _score_lines(run_dir / "scores" / "digits.jsonl")
    assert len(lines) == 20 and {line["reward"] for line in lines} == {"digits"}
    reward = digits_reward()
    for line in lines[:6]:
        with Image.open(run_dir / line["image"]) as image:
            expected = reward([image.copy()], [line["prompt"]]).item()
        assert line["score"] == pytest.approx(expected, abs=1e-6)
    # the bundled model draws the digit it is asked for: the classifier agrees with high probability
    assert sum(math.exp(line["score"]) for line in lines) / len(lines) > 0.9


def test_other_rewards_and_options(run_dir):
    assert main(["score", str(run_dir), "--reward", "jpeg_compressibility", "--option", "quality=80",
                 "--batch-size", "7", "--quiet"]) == 0  # fmt: skip
    lines = _score_lines(run_dir / "scores" / "jpeg-compressibility.jsonl")
    with Image.open(run_dir / lines[0]["image"]) as image:
        expected = JPEGCompressibility(quality=80)([image.copy()]).item()
    assert lines[0]["score"] == pytest.approx(expected) and len(lines) == 20


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--reward", "nope"], "unknown reward 'nope'; known rewards: aesthetic"),
        (["--reward", "regex"], "scores text, not images"),
        (["--option", "novalue"], "not key=value"),
        (["--option", "nonsense=1"], "reward 'digits':"),
        (["--batch-size", "0"], "--batch-size must be positive"),
    ],
)
def test_errors_are_one_line_and_write_nothing(run_dir, capsys, args, message):
    before = sorted(p.name for p in (run_dir / "scores").glob("*")) if (run_dir / "scores").exists() else []
    assert main(["score", str(run_dir), "--quiet", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    after = sorted(p.name for p in (run_dir / "scores").glob("*")) if (run_dir / "scores").exists() else []
    assert after == before


def test_missing_run_is_an_error(tmp_path, capsys):
    assert main(["score", str(tmp_path / "nowhere")]) == 2
    assert "no manifest.jsonl" in capsys.readouterr().err


def test_rewards_command_lists_every_name(capsys):
    from rewards import REWARD_NAMES

    assert main(["rewards"]) == 0
    printed = capsys.readouterr().out
    assert all(name in printed for name in REWARD_NAMES)
