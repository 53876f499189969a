"""`dsample generate --search`: inference-time search per image, recorded in the manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.cli import main
from pipelines.generate import image_seed
from search.registry import SEARCH_METHODS

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def generate(out: Path, *args: str) -> int:
    return main(["generate", "--out", str(out), "--quiet", *args])


def manifest(out: Path) -> list[dict]:
    lines = (out / "manifest.jsonl").read_text().splitlines()
    return sorted((json.loads(line) for line in lines), key=lambda r: (r["prompt_index"], r["sample_index"]))


def pixels(out: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted((out / "images").glob("*.png"))}


def files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "images").glob("*.png"))}


SMC = ("--prompt", "3", "--num-images", "4", "--steps", "8", "--search", "smc", "--particles", "4")


def test_smc_writes_images_with_reward_and_nfe_resumes_and_refuses_other_settings(tmp_path, capsys):
    out = tmp_path / "run"
    assert generate(out, *SMC, "--reward", "digits") == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith("dsample: search smc (4 particles): mean digits reward")
    records = manifest(out)
    assert [(r["prompt_index"], r["sample_index"]) for r in records] == [(0, s) for s in range(4)]
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"0_{s}.png" for s in range(4)]
    assert (out / "grids/0.png").is_file()
    for r in records:
        assert r["search"] == "smc" and r["particles"] == 4 and r["max_nfe"] is None
        assert r["reward_name"] == "digits" and r["reward_options"] == {}
        assert isinstance(r["reward"], float) and r["reward"] <= 0
        assert r["nfe"] == 4 * 8  # 4 particles x 8 steps (guidance is one batched call)
        curve = r["curve"]  # the anytime curve: NFE increasing, best reward non-decreasing, up to the end
        assert curve[-1][0] == r["nfe"] and curve[-1][1] >= r["reward"] - 1e-6
        assert all(a[0] < b[0] and a[1] <= b[1] for a, b in zip(curve, curve[1:]))
        assert r["image_seed"] == image_seed(0, 0, r["sample_index"])
        assert r["settings"]["sampler"] == "DPM++ 2M SDE" and r["settings"]["guidance"] == 2.0
        image = Image.open(out / r["image"])
        assert json.loads(image.text["dsample"]) == r
        assert "Search: smc (4 particles), Reward: digits" in image.text["parameters"]
    before = files(out), (out / "manifest.jsonl").read_bytes()

    assert generate(out, *SMC, "--reward", "digits") == 0  # the rerun skips every finished image
    assert "0 images in" in capsys.readouterr().out
    assert (files(out), (out / "manifest.jsonl").read_bytes()) == before

    (out / "images/0_2.png").unlink()  # a lost image is redone, bitwise the same (its own seed)
    assert generate(out, *SMC, "--reward", "digits") == 0
    assert "1 images in" in capsys.readouterr().out
    assert files(out) == before[0]
    finished = (out / "manifest.jsonl").read_bytes()

    other = {
        "particles": ("--prompt", "3", "--num-images", "4", "--steps", "8", "--search", "smc",
                      "--particles", "2", "--reward", "digits"),
        "method": ("--prompt", "3", "--num-images", "4", "--steps", "8", "--search", "bon",
                   "--particles", "4", "--reward", "digits"),
        "reward option": (*SMC, "--reward", "digits", "--reward-option", "output=log_odds"),
        "no search": ("--prompt", "3", "--num-images", "4", "--steps", "8"),
    }  # fmt: skip
    for why, args in other.items():
        assert generate(out, *args) == 2, why
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "was made with other settings" in err[0], (why, err)
    assert (out / "manifest.jsonl").read_bytes() == finished


def _scores(run: Path) -> list[float]:
    assert main(["score", str(run), "--reward", "digits", "--quiet"]) == 0
    return [json.loads(line)["score"] for line in (run / "scores/digits.jsonl").read_text().splitlines()]


def test_smc_images_score_higher_than_plain_ones_for_the_same_prompts_and_seeds(tmp_path, capsys):
    """The acceptance check: at guidance 1 (room to improve) SMC raises the classifier's log-probability."""
    common = ("--prompt", "3", "--prompt", "8", "--prompt", "nine", "--num-images", "6", "--guidance", "1")
    assert generate(tmp_path / "plain", *common) == 0
    searched = ("--search", "smc", "--particles", "4", "--reward", "digits")
    assert generate(tmp_path / "smc", *common, *searched) == 0
    plain, smc = np.mean(_scores(tmp_path / "plain")), np.mean(_scores(tmp_path / "smc"))
    message = f"mean log p(digit | image): no search {plain:.4g}, smc {smc:.4g}"
    print(message)
    assert smc > plain, message
    recorded = np.mean([r["reward"] for r in manifest(tmp_path / "smc")])  # the search's own scores agree
    assert abs(recorded - smc) < 0.05 + 0.05 * abs(smc), (recorded, smc)


@pytest.mark.parametrize("method", [m for m in SEARCH_METHODS if m != "smc"])
def test_every_search_method_makes_reproducible_images(tmp_path, method):
    args = ("--prompt", "5", "--num-images", "2", "--steps", "4", "--search", method, "--particles", "2",
            "--reward", "rewards.classifier:digits_reward", "--reward-option", "output=log_odds")  # fmt: skip
    assert generate(tmp_path / "a", *args) == 0
    assert generate(tmp_path / "b", *args, "--batch-size", "1") == 0
    a, b = pixels(tmp_path / "a"), pixels(tmp_path / "b")
    assert list(a) == ["0_0.png", "0_1.png"]
    assert all(np.array_equal(a[k], b[k]) for k in a)
    for r in manifest(tmp_path / "a"):
        assert r["search"] == method and r["reward_name"] == "rewards.classifier:digits_reward"
        assert r["reward_options"] == {"output": "log_odds"} and r["nfe"] > 0


def test_a_diffusers_model_with_search(tmp_path, capsys):
    from tiny_pipelines import tiny_sd

    model = tmp_path / "tiny-sd"
    tiny_sd().save_pretrained(model)
    out = tmp_path / "run"
    code = generate(out, "--model", str(model), "--prompt", "a cat", "--num-images", "2", "--steps", "3",
                    "--width", "32", "--height", "32", "--guidance", "3",
                    "--search", "bon", "--particles", "2", "--reward", "jpeg-compressibility")  # fmt: skip
    assert code == 0, capsys.readouterr().err
    records = manifest(out)
    assert len(records) == 2
    for r in records:
        assert r["search"] == "bon" and r["reward_name"] == "jpeg-compressibility" and r["nfe"] == 2 * 3
        assert Image.open(out / r["image"]).size == (32, 32)


@pytest.mark.parametrize(
    "args, message",
    [
        (("--search", "smc"), "--search smc needs --reward"),
        (("--reward", "digits"), "--reward given without --search"),
        (("--particles", "4"), "--particles given without --search"),
        (("--search", "annealing", "--reward", "digits"), "unknown search method 'annealing'"),
        (("--search", "smc", "--reward", "beauty"), "unknown reward 'beauty'"),
        (("--search", "smc", "--reward", "no_such_module:Reward"), "cannot import reward"),
        (("--search", "smc", "--reward", "digits", "--particles", "0"), "--particles must be >= 1"),
        (("--search", "smc", "--reward", "digits", "--max-nfe", "0"), "--max-nfe must be >= 1"),
        (("--search", "smc", "--reward", "digits", "--reward-option", "x"), "is not key=value"),
        (("--search", "smc", "--reward", "digits", "--reward-option", "colour=1"), "reward 'digits'"),
        (("--search", "smc", "--reward", "digits", "--sampler", "DDIM"), "solves with its own sampler"),
    ],
)
def test_bad_search_input_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert generate(out, "--prompt", "1", *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dsample: error: ") and message in err[0], err
    assert not out.exists()
