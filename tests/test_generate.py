"""`dsample generate`: outputs and metadata, determinism across batch sizes and processes, resuming after
SIGKILL, clean errors, diffusers text-to-image models, and the bundled model's sample quality."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.cli import main
from pipelines.digits import DIGITS_MODEL, DigitsPipeline, fixed_size_calls, parse_digit
from pipelines.generate import image_seed

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))


def generate(out: Path, *args: str) -> int:
    return main(["generate", "--out", str(out), "--quiet", *args])


def pixels(out: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted((out / "images").glob("*.png"))}


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------ building blocks
def test_prompts_name_digits():
    assert [parse_digit(p) for p in ("7", "seven", " Seven ", 3, "0", "nine")] == [7, 7, 7, 3, 0, 9]
    for bad in ("cat", "10", "", "77"):
        with pytest.raises(ValueError, match="not a digit"):
            parse_digit(bad)


def test_image_seed_depends_on_seed_prompt_and_sample():
    seeds = {image_seed(s, p, i) for s in range(3) for p in range(3) for i in range(3)}
    assert len(seeds) == 27 and all(0 <= s < 2**63 for s in seeds)
    assert image_seed(5, 1, 2) == image_seed(5, 1, 2)


def test_fixed_size_calls_make_a_row_independent_of_its_batch():
    """The property batch-size determinism rests on: in a call of fixed size a row's output depends on the
    row alone (not its position or the other rows), while one call on the whole batch does not promise it."""
    unet = DigitsPipeline.from_pretrained(DIGITS_MODEL).unet
    gen = torch.Generator().manual_seed(0)
    probe = torch.randn(1, 1, 8, 8, generator=gen)
    outputs = []
    with torch.no_grad():
        for batch, position in ((1, 0), (7, 3), (140, 137), (129, 128)):
            x = torch.randn(batch, 1, 8, 8, generator=gen)
            x[position] = probe[0]
            labels = torch.randint(0, 11, (batch,), generator=gen)
            labels[position] = 4
            t = torch.full((batch,), 321.5)
            out = fixed_size_calls(unet, x, 128, timestep=t, class_labels=labels)
            assert out.shape == x.shape
            outputs.append(out[position])
    for out in outputs[1:]:
        assert torch.equal(out, outputs[0])


def test_digits_pipeline_with_diffusers_dpmsolver_matches_ours():
    """The pipeline takes any diffusers scheduler; diffusers' DPM-Solver++ 2M with thresholding at 1 (a clamp
    of x0 to [-1, 1]) and ours with the config's clip_sample give the same samples."""
    from diffusers import DPMSolverMultistepScheduler

    from samplers import DPMSolverPPScheduler

    pipe = DigitsPipeline.from_pretrained(DIGITS_MODEL)
    pipe.set_progress_bar_config(disable=True)
    config = pipe.scheduler.config
    outputs = []
    for scheduler in (
        DPMSolverMultistepScheduler.from_config(config, thresholding=True, sample_max_value=1.0),
        DPMSolverPPScheduler.from_config(config),
    ):
        pipe.scheduler = scheduler
        gens = [torch.Generator().manual_seed(i) for i in range(6)]
        outputs.append(pipe(["0", "1", "2", "3", "4", "5"], 10, 2.0, generator=gens, output_type="pt").images)
    assert outputs[0].abs().max() <= 1.0 + 1e-6
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------ outputs
def test_outputs_metadata_manifest_and_grid(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["generate", "--out", str(out), "--prompt", "3", "--prompt", "seven", "--num-images", "4",
                 "--steps", "8", "--seed", "11", "--quiet"]) == 0  # fmt: skip
    summary = capsys.readouterr().out.strip().splitlines()
    assert len(summary) == 1
    assert re.fullmatch(
        rf"dsample: 8 images in [\d.]+ s \([\d.]+ images/s\), 0 already done; images in {out}/images, "
        rf"grids in {out}/grids",
        summary[0],
    )
    names = sorted(p.name for p in (out / "images").iterdir())
    assert names == [f"{p}_{s}.png" for p in range(2) for s in range(4)]
    records = manifest(out)
    assert sorted((r["prompt_index"], r["sample_index"]) for r in records) == [
        (p, s) for p in range(2) for s in range(4)
    ]
    for record in records:
        image = Image.open(out / record["image"])
        assert image.size == (8, 8) and image.mode == "L"
        params = image.text["parameters"].splitlines()
        assert params[0] == record["prompt"]
        assert params[1] == (
            f"Steps: 8, Sampler: DPM++ 2M, CFG scale: 2, Seed: {record['image_seed']}, Size: 8x8, "
            "Model: dsample-digits, Version: dsample"
        )
        assert json.loads(image.text["dsample"]) == record
        assert record["image_seed"] == image_seed(11, record["prompt_index"], record["sample_index"])
        assert record["settings"] == {"steps": 8, "guidance": 2.0, "seed": 11, "sampler": "DPM++ 2M",
                                      "negative_prompt": None, "width": None, "height": None}  # fmt: skip
    for p in range(2):
        grid = Image.open(out / f"grids/{p}.png")
        assert grid.size == (128, 128)  # 2 x 2 tiles of 8 px enlarged to 64
        tile = np.asarray(grid)[64:128, 0:64][::8, ::8]  # third image, bottom-left
        assert np.array_equal(tile, np.asarray(Image.open(out / f"images/{p}_2.png")))


def test_same_seed_same_pixels_for_batch_sizes_1_and_7(tmp_path):
    args = ["--prompt", "2", "--prompt", "eight", "--num-images", "5", "--steps", "12", "--seed", "4"]
    assert generate(tmp_path / "b1", *args, "--batch-size", "1") == 0
    assert generate(tmp_path / "b7", *args, "--batch-size", "7") == 0
    one, seven = pixels(tmp_path / "b1"), pixels(tmp_path / "b7")
    assert len(one) == 10 and one.keys() == seven.keys()
    for name in one:
        assert np.array_equal(one[name], seven[name]), name
    assert len({a.tobytes() for a in one.values()}) == 10  # every image got its own noise


@pytest.mark.parametrize("sampler", ["DPM++ 2M", "DPM++ 2M SDE", "Euler a"])
def test_pipeline_samples_are_bitwise_equal_across_batch_sizes(sampler):
    """Stronger than equal pixels (rounding hides small differences): equal floats, batch 1 vs batch 7.
    Stochastic samplers draw each row's step noise from that row's generator."""
    from pipelines.sampler_names import resolve_sampler

    pipe = DigitsPipeline.from_pretrained(DIGITS_MODEL)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = resolve_sampler(sampler).make_scheduler(pipe.scheduler.config)
    labels = ["0", "1", "2", "3", "7", "8", "9"]

    def run(rows: range) -> torch.Tensor:
        gens = [torch.Generator().manual_seed(image_seed(0, 0, i)) for i in rows]
        return pipe([labels[i] for i in rows], 6, 2.0, generator=gens, output_type="pt").images

    together = run(range(7))
    alone = torch.cat([run(range(i, i + 1)) for i in range(7)])
    assert torch.equal(together, alone)


def test_rerun_skips_finished_images_and_extends_runs(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--prompt", "1", "--num-images", "3", "--steps", "6"]
    assert generate(out, *args) == 0
    before = (out / "manifest.jsonl").read_bytes()
    stamps = {p: p.stat().st_mtime_ns for p in (out / "images").iterdir()}
    capsys.readouterr()
    assert generate(out, *args) == 0
    assert "dsample: 0 images" in capsys.readouterr().out
    assert (out / "manifest.jsonl").read_bytes() == before
    assert {p: p.stat().st_mtime_ns for p in (out / "images").iterdir()} == stamps
    assert generate(out, "--prompt", "1", "--num-images", "5", "--steps", "6") == 0
    assert "dsample: 2 images" in capsys.readouterr().out
    assert sorted((r["prompt_index"], r["sample_index"]) for r in manifest(out)) == [(0, s) for s in range(5)]


def test_torn_manifest_line_and_missing_file_are_redone_once(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--prompt", "5", "--num-images", "3", "--steps", "6"]
    assert generate(out, *args) == 0
    reference = pixels(out)
    lines = (out / "manifest.jsonl").read_text().splitlines(keepends=True)
    (out / "manifest.jsonl").write_text("".join(lines[:2]) + lines[2][:25])  # a write cut short
    (out / "images" / "0_0.png").unlink()  # and an image lost
    (out / "images" / ".0_1.png.tmp-999").write_bytes(b"\x89PNG half")  # a temporary of a killed run
    capsys.readouterr()
    assert generate(out, *args) == 0
    assert "dsample: 2 images" in capsys.readouterr().out
    keys = [(r["prompt_index"], r["sample_index"]) for r in manifest(out)]
    assert sorted(keys) == [(0, 0), (0, 1), (0, 2)]
    assert not list((out / "images").glob(".*"))
    for name, image in pixels(out).items():
        assert np.array_equal(image, reference[name])


def test_other_settings_into_the_same_directory_are_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert generate(out, "--prompt", "1", "--steps", "6") == 0
    before = (out / "manifest.jsonl").read_bytes()
    capsys.readouterr()
    assert generate(out, "--prompt", "1", "--steps", "7") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was made with other settings" in err[0]
    assert (out / "manifest.jsonl").read_bytes() == before


def test_jsonl_overrides_per_prompt(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        '{"prompt": "4", "num_images": 2, "steps": 5}\n\n{"prompt": "six", "sampler": "DDIM", "seed": 9}\n'
    )
    out = tmp_path / "run"
    assert generate(out, "--prompts", str(prompts), "--steps", "7") == 0
    by_key = {(r["prompt_index"], r["sample_index"]): r for r in manifest(out)}
    assert sorted(by_key) == [(0, 0), (0, 1), (1, 0)]
    assert by_key[0, 0]["settings"]["steps"] == 5 and by_key[0, 0]["settings"]["sampler"] == "DPM++ 2M"
    assert by_key[1, 0]["settings"]["steps"] == 7 and by_key[1, 0]["settings"]["sampler"] == "DDIM"
    assert by_key[1, 0]["image_seed"] == image_seed(9, 1, 0)
    assert "Sampler: DDIM" in Image.open(out / "images/1_0.png").text["parameters"]


def test_text_prompt_file_and_every_digit_by_default(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("zero\n\n  9  \n")
    assert generate(tmp_path / "txt", "--prompts", str(prompts), "--steps", "4") == 0
    assert [r["prompt"] for r in sorted(manifest(tmp_path / "txt"), key=lambda r: r["prompt_index"])] == [
        "zero",
        "9",
    ]
    assert generate(tmp_path / "all", "--steps", "2") == 0
    assert sorted(r["prompt"] for r in manifest(tmp_path / "all")) == [str(d) for d in range(10)]


# ------------------------------------------------------------------------------------------ errors
def _bad_file(tmp_path: Path, name: str, content: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda d: ["--prompts", str(d / "missing.txt")], "does not exist"),
        (lambda d: ["--prompts", _bad_file(d, "empty.txt", b"\n  \n")], "has no prompts"),
        (lambda d: ["--prompts", _bad_file(d, "latin1.txt", "caf\xe9\n".encode("latin-1"))], "is not UTF-8"),
        (
            lambda d: ["--prompts", _bad_file(d, "bad.jsonl", b'{"prompt": "1"}\n{"prompt": \n')],
            "bad.jsonl:2: not valid JSON",
        ),
        (
            lambda d: ["--prompts", _bad_file(d, "key.jsonl", b'{"prompt": "1", "stepz": 3}\n')],
            "unknown setting 'stepz'",
        ),
        (
            lambda d: ["--prompts", _bad_file(d, "neg.jsonl", b'{"prompt": "1", "steps": 0}\n')],
            "steps must be >= 1",
        ),
        (lambda d: ["--sampler", "LMS Turbo"], "unknown sampler 'LMS Turbo'; known: DPM++ 2M, "),
        (lambda d: ["--steps", "0"], "steps must be >= 1"),
        (lambda d: ["--steps", "abc"], "argument --steps: invalid int value: 'abc'"),
        (lambda d: ["--guidance", "nan"], "guidance must be a finite number"),
        (lambda d: ["--num-images", "0"], "num_images must be >= 1"),
        (lambda d: ["--batch-size", "0"], "--batch-size must be >= 1"),
        (lambda d: ["--seed", "-1"], "seed must be >= 0"),
        (lambda d: ["--prompt", "cat"], "is not a digit"),
        (lambda d: ["--width", "64"], "draws 8x8 images"),
        (lambda d: ["--model", str(d / "no-such-model"), "--prompt", "a cat"], "cannot load model"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, make_args, message):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) if "invalid int" in message else _no_exit() as info:
        code = main(["generate", "--out", str(out), "--quiet", *make_args(tmp_path)])
    code = info.value.code if info else code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("dsample: error: ") and message in err[0], err
    assert not out.exists()


class _no_exit:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


# ------------------------------------------------------------------------------------------ processes
def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", "generate", *args]


def test_sigkill_midway_then_resume_gives_exactly_the_expected_images(tmp_path):
    args = ["--prompt", "1", "--prompt", "2", "--num-images", "8", "--steps", "8", "--quiet"]
    out = tmp_path / "killed"
    command = _cli(*args, "--batch-size", "1", "--out", str(out))
    proc = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        path = out / "manifest.jsonl"
        if path.exists() and path.read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished_before = (out / "manifest.jsonl").read_bytes().count(b"\n")
    assert 3 <= finished_before < 16, "the run must be killed midway"
    resumed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "already done" in resumed.stdout
    keys = [(r["prompt_index"], r["sample_index"]) for r in manifest(out)]
    assert len(keys) == len(set(keys)) == 16
    assert set(keys) == {(p, s) for p in range(2) for s in range(8)}
    files = sorted(p.name for p in (out / "images").iterdir())
    assert files == sorted(f"{p}_{s}.png" for p in range(2) for s in range(8))  # no temporaries left
    for name in files:
        Image.open(out / "images" / name).load()  # decodable
    assert generate(tmp_path / "clean", *args[:-1]) == 0  # uninterrupted, one batch
    clean, resumed_pixels = pixels(tmp_path / "clean"), pixels(out)
    assert all(np.array_equal(clean[n], resumed_pixels[n]) for n in clean)


def test_two_processes_split_the_prompts_and_match_one_process(tmp_path):
    args = ["--prompt", "0", "--prompt", "1", "--prompt", "two", "--num-images", "3", "--steps", "10",
            "--batch-size", "2", "--quiet"]  # fmt: skip
    # without GPUs, accelerate starts several processes (gloo) only with --multi_gpu; --cpu starts one
    with socket.socket() as probe:  # a free port, not accelerate's default 29500 that another job may hold
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(port), "-m", "pipelines.cli", "generate"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([*launch, *args, "--out", str(tmp_path / "two")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[:3000] + "\n...\n" + run.stderr[-3000:]
    assert run.stdout.count("dsample: 9 images") == 1  # one summary, from the main process
    records = manifest(tmp_path / "two")
    keys = [(r["prompt_index"], r["sample_index"]) for r in records]
    assert len(keys) == len(set(keys)) == 9
    assert all(r["process"] == r["prompt_index"] % 2 for r in records)  # two processes, round-robin
    assert generate(tmp_path / "one", *args[:-1]) == 0
    one, two = pixels(tmp_path / "one"), pixels(tmp_path / "two")
    assert one.keys() == two.keys() and len(one) == 9
    for name in one:
        assert np.array_equal(one[name], two[name]), name
    assert sorted(p.name for p in (tmp_path / "two" / "grids").iterdir()) == ["0.png", "1.png", "2.png"]


# ------------------------------------------------------------------------------------------ diffusers models
def test_a_diffusers_text_to_image_model_by_path(tmp_path, capsys):
    from tiny_pipelines import tiny_sd

    model = tmp_path / "tiny-sd"
    tiny_sd().save_pretrained(model)
    out = tmp_path / "run"
    code = main(
        [
            "generate",
            "--model",
            str(model),
            "--prompt",
            "a photo of a cat",
            "--prompt",
            "a cute dog",
            "--num-images",
            "2",
            "--steps",
            "4",
            "--sampler",
            "DPM++ 2M Karras",
            "--guidance",
            "5",
            "--width",
            "32",
            "--height",
            "32",
            "--negative-prompt",
            "a dog",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0, capsys.readouterr().err
    records = manifest(out)
    assert len(records) == 4
    image = Image.open(out / "images/1_1.png")
    assert image.size == (32, 32) and image.mode == "RGB"
    assert image.text["parameters"].splitlines() == [
        "a cute dog",
        "Negative prompt: a dog",
        f"Steps: 4, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 5, Seed: {image_seed(0, 1, 1)}, "
        "Size: 32x32, Model: tiny-sd, Version: dsample",
    ]


# ------------------------------------------------------------------------------------------ quality
def test_generated_digits_are_recognisable():
    """Acceptance: classifier accuracy on generated digits >= 90% of its accuracy on real held-out digits
    (DPM-Solver++ 2M, 20 NFE, the CLI's default guidance)."""
    from eval_digits import generated_accuracy, load_models, real_accuracy
    from train_digits import load_digit_splits

    from pipelines.generate import DigitsModel

    pipe, classifier = load_models()
    real, _ = real_accuracy(classifier)
    data = load_digit_splits()
    log_p = classifier.log_prob(data["x_test"], data["y_test"])  # the digits reward
    assert log_p.shape == (360,) and (log_p <= 0).all() and log_p.exp().mean() > 0.9
    generated, per_class = generated_accuracy(pipe, classifier, DigitsModel.default_guidance, per_class=20)
    assert real > 0.9
    assert generated >= 0.9 * real, (generated, per_class)
    assert min(per_class) >= 0.7, per_class
