"""``dsample text``: masked-diffusion text generation from the command line, with and without search, on a
tiny random masked LM saved to disk (the bundled model is tested in tests/test_text_model.py)."""

import json

import pytest
from tiny_text import tiny_masked_lm, tiny_tokenizer

from pipelines.cli import main

COMMON = ("--gen-length", "8", "--block-length", "4", "--steps", "4")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-text")
    tiny_masked_lm().save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return str(path)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def text(*args):
    return main(["text", *args])


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_plain_generation_is_seeded_per_sample(model_dir, tmp_path, capsys):
    args = ("--model", model_dir, "--prompt", "a b c", "--prompt", "sort : one", "--num-samples", "2",
            "--temperature", "1", *COMMON)  # fmt: skip
    assert text(*args, "--out", str(tmp_path / "a.jsonl")) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5 and lines[0].startswith("a b c -> ") and lines[-1].startswith("dsample: 4 samples")
    assert text(*args, "--out", str(tmp_path / "b.jsonl")) == 0
    assert text(*args, "--seed", "1", "--out", str(tmp_path / "c.jsonl")) == 0
    a, b, c = (records(tmp_path / f"{n}.jsonl") for n in "abc")
    assert [(r["prompt_index"], r["sample_index"]) for r in a] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [r["text"] for r in a] == [r["text"] for r in b]  # same seed, same texts
    assert [r["text"] for r in a] != [r["text"] for r in c]
    assert a[0]["settings"]["policy"] == "low-confidence" and a[0]["settings"]["gen_length"] == 8


def test_search_records_reward_nfe_and_curve(model_dir, tmp_path, capsys):
    out = tmp_path / "s.jsonl"
    assert text("--model", model_dir, "--prompt", "a b c", "--temperature", "1", *COMMON, "--search", "smc",
                "--particles", "4", "--reward", "tiny_text:WordCount", "--reward-option", "word=f",
                "--out", str(out)) == 0  # fmt: skip
    (r,) = records(out)
    # 3 prompt tokens + 8 generated span 3 blocks of 4, 4 steps each: at most 12 calls on the 4 particles
    # (fewer once every particle has committed its EOS: the steps left make no call)
    assert r["reward"] == float(r["text"].split().count("f"))
    assert 0 < r["nfe"] <= 4 * 12 and r["nfe"] % 4 == 0
    assert r["curve"][-1][0] <= r["nfe"] and r["settings"]["search"] == "smc"
    assert "[reward" in capsys.readouterr().out


def test_adaptive_blocks_sample_from_the_chain_with_adablock(model_dir, tmp_path):
    import torch

    from pipelines.generate import image_seed
    from pipelines.text import adablock_for, load_text_pipeline, run_chains, text_chains

    out = tmp_path / "ada.jsonl"
    ada_args = ("--adaptive-blocks", "--delimiter", "eight", "--delimiter-threshold", "0.5")
    assert text("--model", model_dir, "--prompt", "a b c", "--temperature", "1", *COMMON, *ada_args,
                "--quiet", "--out", str(out)) == 0  # fmt: skip
    (r,) = records(out)
    settings = r["settings"]
    assert settings["adaptive_blocks"] and settings["delimiters"] == ["eight"]
    assert settings["delimiter_threshold"] == 0.5
    pipe = load_text_pipeline(model_dir)
    ada = adablock_for(pipe.tokenizer, ["eight"], 0.5)
    chains = text_chains(pipe, ["a b c"], gen_length=8, block_length=4, num_inference_steps=4,
                         temperature=1.0, adaptive_blocks=ada)  # fmt: skip
    assert chains[0].context == "full" and chains[0].adaptive_blocks == ada
    assert run_chains(chains, [torch.Generator().manual_seed(image_seed(0, 0, 0))]) == [r["text"]]
    searched = tmp_path / "ada-smc.jsonl"
    assert text("--model", model_dir, "--prompt", "a b c", "--temperature", "1", *COMMON, "--adaptive-blocks",
                "--search", "smc", "--particles", "4", "--reward", "tiny_text:WordCount",
                "--quiet", "--out", str(searched)) == 0  # fmt: skip
    (found,) = records(searched)
    assert found["reward"] == float(found["text"].split().count("f")) and found["nfe"] % 4 == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--search", "smc"), "needs --reward"),
        (("--reward", "tiny_text:WordCount"), "need --search"),
        (
            ("--search", "evo", "--reward", "tiny_text:WordCount", "--temperature", "1"),
            "initial Gaussian noise",
        ),
        (("--search", "smc", "--reward", "tiny_text:WordCount"), "random steps"),
        (("--search", "smc", "--reward", "digits", "--temperature", "1"), "scores image, not texts"),
        (("--num-samples", "0"), "--num-samples must be >= 1"),
        (("--temperature", "-1"), "--temperature must be >= 0"),
        (("--delimiter", "eight"), "needs --adaptive-blocks"),
        (("--adaptive-blocks", "--remask-eta", "0.1"), "does not go with --adaptive-blocks"),
        (("--adaptive-blocks", "--delimiter", "nosuchword"), "not a token"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(model_dir, capsys, args, message):
    assert text("--model", model_dir, "--prompt", "a b c", *COMMON, *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_a_missing_model_is_a_usage_error(tmp_path, capsys):
    assert text("--model", str(tmp_path / "nowhere"), "--prompt", "a") == 2
    assert "cannot load model" in capsys.readouterr().err
