"""The list-task family (rewards.list_tasks), its verifier reward, and the bundled tiny masked-diffusion text
model in pipelines/assets/text (scripts/train_tiny_text.py)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from rewards.base import RewardProtocol
from rewards.list_tasks import (
    ADD_DIGITS,
    ANY_ORDER_TASKS,
    EOS,
    LIST_LENGTHS,
    MASK,
    PAD,
    TASKS,
    UNK,
    VOCAB,
    ListTaskVerifier,
    extract_answer,
    is_correct,
    make_prompt,
    parse_prompt,
    random_example,
    solve,
)
from rewards.registry import load_reward
from rewards.text import VerifierReward

TEXT_MODEL = Path(__file__).resolve().parents[1] / "pipelines" / "assets" / "text"

# --------------------------------------------------------------------------------------------------------
# Task family
# --------------------------------------------------------------------------------------------------------


def test_tasks_and_vocabulary() -> None:
    assert TASKS == ("copy", "reverse", "sort", "add", "shuffle") and ANY_ORDER_TASKS == ("shuffle",)
    assert VOCAB.index("shuffle") == len(VOCAB) - 1  # a new task's word is appended: earlier ids stay
    assert VOCAB[:4] == (PAD, UNK, MASK, EOS)
    assert len(set(VOCAB)) == len(VOCAB)
    assert all(str(d) in VOCAB for d in range(10)) and all(t in VOCAB for t in TASKS)


@pytest.mark.parametrize(
    "task, numbers, prompt, answer",
    [
        ("copy", [3, 1, 2], "copy : 3 1 2 =", "3 1 2"),
        ("reverse", [3, 1, 2], "reverse : 3 1 2 =", "2 1 3"),
        ("sort", [3, 1, 2, 1, 0], "sort : 3 1 2 1 0 =", "0 1 1 2 3"),
        ("sort", [7], "sort : 7 =", "7"),
        ("add", [47, 5], "add : 4 7 + 5 =", "5 2"),
        ("add", [9999, 1], "add : 9 9 9 9 + 1 =", "1 0 0 0 0"),
        ("add", [0, 0], "add : 0 + 0 =", "0"),
        ("add", [123, 4560], "add : 1 2 3 + 4 5 6 0 =", "4 6 8 3"),
        ("shuffle", [3, 1, 2], "shuffle : 3 1 2 =", "3 1 2"),  # one correct answer of six
    ],
)
def test_make_prompt_and_solve(task: str, numbers: list[int], prompt: str, answer: str) -> None:
    assert make_prompt(task, numbers) == prompt
    assert solve(prompt) == answer
    assert parse_prompt(prompt) == (task, numbers)


def test_solve_tolerates_whitespace_and_leading_zeros() -> None:
    assert solve("  sort :   3 1\t2 = ") == "1 2 3"
    assert solve("add : 0 4 7 + 0 5 =") == "5 2"


@pytest.mark.parametrize(
    "prompt",
    [
        "",
        "sort 3 1 2 =",  # no colon
        "sort : 3 1 2",  # no '='
        "sort : =",  # no digits
        "mul : 3 1 =",  # unknown task
        "sort : 3 12 =",  # a multi-digit token
        "copy : 3 + 1 =",  # '+' outside add
        "add : 4 7 =",  # no '+'
        "add : 4 + =",  # empty summand
        "add : 1 + 2 + 3 =",  # two '+'
        "sort : 3 [MASK] 2 =",
    ],
)
def test_solve_rejects_malformed_prompts(prompt: str) -> None:
    with pytest.raises(ValueError):
        solve(prompt)


@pytest.mark.parametrize(
    "task, numbers",
    [("nope", [1]), ("sort", []), ("sort", [10]), ("copy", [-1]), ("add", [1]), ("add", [1, -2])],
)
def test_make_prompt_rejects_bad_input(task: str, numbers: list) -> None:
    with pytest.raises(ValueError):
        make_prompt(task, numbers)


GENERATORS = [lambda s: random.Random(s), lambda s: torch.Generator().manual_seed(s)]


@pytest.mark.parametrize("make_generator", GENERATORS)
def test_random_example_distribution(make_generator) -> None:
    examples = [random_example(make_generator(7)) for _ in range(2)]
    assert examples[0] == examples[1]  # reproducible from the seed
    gen = make_generator(0)
    seen = set()
    for _ in range(400):
        prompt, answer = random_example(gen)
        task, numbers = parse_prompt(prompt)
        seen.add(task)
        assert is_correct(prompt, answer)
        assert solve(prompt) == answer or task == "shuffle"
        assert set(prompt.split()) | set(answer.split()) <= set(VOCAB)
        if task == "add":
            assert all(ADD_DIGITS[0] <= len(str(n)) <= ADD_DIGITS[1] for n in numbers)
        else:
            assert LIST_LENGTHS[0] <= len(numbers) <= LIST_LENGTHS[1]
    assert seen == set(TASKS)
    for task in TASKS:
        assert parse_prompt(random_example(gen, task)[0])[0] == task
    with pytest.raises(ValueError):
        random_example(gen, "nope")
    with pytest.raises(TypeError):
        random_example(0)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------------
# Verifier reward
# --------------------------------------------------------------------------------------------------------


def test_extract_answer() -> None:
    assert extract_answer(" 1  2 3 [EOS] [EOS] 4") == "1 2 3"
    assert extract_answer("[PAD] sort : 3 1 2 = 1 2 3 [EOS]") == "1 2 3"
    assert extract_answer("1 2[EOS]") == "1 2"
    assert extract_answer("1 [MASK] 3") == "1 [MASK] 3"
    assert extract_answer("[EOS] 1 2") == ""


@pytest.mark.parametrize("make_generator", GENERATORS)
def test_shuffle_answers_are_uniform_orderings(make_generator) -> None:
    gen = make_generator(5)
    counts: dict[str, int] = {}
    draws = 1200
    while sum(counts.values()) < draws:
        prompt, answer = random_example(gen, "shuffle")
        numbers = parse_prompt(prompt)[1]
        assert sorted(answer.split()) == sorted(prompt.split()[2:-1])
        if len(numbers) == 3 and len(set(numbers)) == 3:  # which of the 6 orderings of 3 distinct digits
            order = "".join(str(numbers.index(int(t))) for t in answer.split())
            counts[order] = counts.get(order, 0) + 1
    sd = (draws * (1 / 6) * (5 / 6)) ** 0.5
    assert len(counts) == 6 and all(abs(c - draws / 6) < 4 * sd for c in counts.values()), counts


def test_is_correct_accepts_every_ordering_for_shuffle_only() -> None:
    assert is_correct("shuffle : 3 1 2 1 =", "1 1 2 3") and is_correct("shuffle : 3 1 2 1 =", " 2 1 3  1")
    assert not is_correct("shuffle : 3 1 2 1 =", "1 2 3")  # a repeat dropped
    assert not is_correct("shuffle : 3 1 2 1 =", "1 1 2 3 3")
    assert not is_correct("shuffle : 3 1 2 =", "1 1 2")  # a repeat instead of an operand
    assert is_correct("sort : 3 1 2 =", "1 2 3") and not is_correct("sort : 3 1 2 =", "2 1 3")
    with pytest.raises(ValueError):
        is_correct("shuffle 3 1 =", "1 3")


def test_verifier_scores_per_sample_prompts() -> None:
    verifier = ListTaskVerifier()
    assert isinstance(verifier, VerifierReward) and isinstance(verifier, RewardProtocol)
    assert verifier.modality == "text" and not verifier.differentiable and verifier.needs_prompts
    samples = [
        "1 2 3 [EOS] [EOS] [EOS]",  # right, EOS padding
        " 1  2\t3 ",  # right, odd whitespace
        "sort : 3 1 2 = 1 2 3 [EOS]",  # right, the prompt repeated
        "1 2 [MASK] [EOS]",  # unfinished
        "1 2 3 4 [EOS]",  # too long
        "1 2 [EOS] 3",  # cut at the first EOS
        "5 2 [EOS] [PAD]",  # add, right
        "5 3",  # add, wrong
    ]
    samples += ["2 3 1 [EOS]", "1 2 [EOS]", "3 3 1 [EOS]"]  # shuffle: an ordering; one short; a repeat
    prompts = ["sort : 3 1 2 ="] * 6 + ["add : 4 7 + 5 ="] * 2 + ["shuffle : 3 1 2 ="] * 3
    scores = verifier(samples, prompts)
    assert scores.dtype == torch.float32 and scores.shape == (11,)
    assert scores.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0]


def test_verifier_prompt_forms_and_errors() -> None:
    verifier = ListTaskVerifier(batch_size=2)
    samples = ["2 1 3 [EOS]", "3 1 2", "2 1 3", "1"]
    assert verifier(samples, "reverse : 3 1 2 =").tolist() == [1.0, 0.0, 1.0, 0.0]  # one prompt for all
    fixed = ListTaskVerifier("reverse : 3 1 2 =")
    assert not fixed.needs_prompts
    assert fixed(samples).tolist() == [1.0, 0.0, 1.0, 0.0]
    assert fixed(samples, ["copy : 3 1 2 ="] * 4).tolist() == [1.0, 0.0, 1.0, 0.0]  # fixed prompt wins
    assert verifier("1 2 [EOS]", "sort : 2 1 =").tolist() == [1.0]  # one sample as a string
    with pytest.raises(ValueError, match="prompt"):
        verifier(samples)
    with pytest.raises(ValueError):
        verifier(samples, ["sort : 1 ="] * 3)
    with pytest.raises(ValueError, match="malformed"):
        verifier(["1"], ["sort 1 ="])
    with pytest.raises(ValueError, match="malformed"):
        ListTaskVerifier("nonsense")


def test_verifier_from_registry_agrees_with_solve() -> None:
    verifier = load_reward("list-task")
    assert isinstance(verifier, ListTaskVerifier)
    rng = random.Random(3)
    prompts, answers = zip(*(random_example(rng) for _ in range(50)))
    right = [f"{a} {EOS} {EOS}" for a in answers]
    wrong = [f"{a} 0" for a in answers]
    assert verifier(right, list(prompts)).sum().item() == 50
    assert verifier(wrong, list(prompts)).sum().item() == 0


# --------------------------------------------------------------------------------------------------------
# The bundled model
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def text_model():
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    if not (TEXT_MODEL / "model.safetensors").is_file():
        pytest.skip("pipelines/assets/text has not been trained (scripts/train_tiny_text.py)")
    tokenizer = AutoTokenizer.from_pretrained(TEXT_MODEL, local_files_only=True)
    model = AutoModelForMaskedLM.from_pretrained(TEXT_MODEL, local_files_only=True).eval()
    return tokenizer, model


def test_bundled_tokenizer(text_model) -> None:
    tokenizer, model = text_model
    assert len(tokenizer) == len(VOCAB) == model.config.vocab_size
    assert tokenizer.convert_ids_to_tokens(list(range(len(VOCAB)))) == list(VOCAB)
    assert (tokenizer.pad_token, tokenizer.mask_token, tokenizer.eos_token, tokenizer.unk_token) == (
        PAD,
        MASK,
        EOS,
        UNK,
    )
    assert (tokenizer.pad_token_id, tokenizer.mask_token_id, tokenizer.eos_token_id) == (0, 2, 3)
    assert tokenizer.bos_token is None
    prompt = "add : 4 7 + 5 ="
    ids = tokenizer(prompt)["input_ids"]
    assert ids == [VOCAB.index(t) for t in prompt.split()]  # no special tokens added
    assert tokenizer.decode(ids + [tokenizer.eos_token_id], skip_special_tokens=True) == prompt
    batch = tokenizer(["sort : 1 =", prompt], padding=True, return_tensors="pt")
    assert batch["input_ids"][0, 0].item() == tokenizer.pad_token_id  # left padding
    assert batch["attention_mask"][0].tolist() == [0, 0, 0, 1, 1, 1, 1]


def test_bundled_model_forward_and_record(text_model) -> None:
    tokenizer, model = text_model
    assert type(model).__name__ == "BertForMaskedLM"
    record = json.loads((TEXT_MODEL / "training.json").read_text())
    gen_length = record["layout"]["gen_length"]
    assert model.config.gen_length == gen_length
    assert (model.config.mask_token_id, model.config.eos_token_id) == (2, 3)
    assert set(TASKS) <= set(record["accuracy"]["1_per_step"])
    ids = torch.tensor([tokenizer("sort : 3 1 2 =")["input_ids"] + [tokenizer.mask_token_id] * gen_length])
    length = ids.shape[1]
    with torch.no_grad():
        positions = torch.arange(length)[None]
        logits = model(ids, attention_mask=torch.ones_like(ids), position_ids=positions).logits
    assert logits.shape == (1, length, len(VOCAB))
    assert torch.isfinite(logits).all()
    total = sum(f.stat().st_size for f in TEXT_MODEL.iterdir())
    assert total < 5 * 2**20


def test_bundled_model_solves_easy_prompts(text_model) -> None:
    """Greedy one-token-per-step unmasking by confidence gets short copy / sort / reverse / shuffle prompts
    right."""
    tokenizer, model = text_model
    gen_length = model.config.gen_length
    prompts = [
        "copy : 3 1 4 1 5 =",
        "sort : 3 1 4 1 5 =",
        "reverse : 3 1 4 1 5 =",
        "copy : 9 0 =",
        "sort : 8 2 =",
        "shuffle : 3 1 4 1 5 =",
        "shuffle : 7 2 9 =",
    ]
    batch = tokenizer(prompts, padding=True, return_tensors="pt")
    n, p = batch["input_ids"].shape
    x = torch.cat([batch["input_ids"], torch.full((n, gen_length), tokenizer.mask_token_id)], 1)
    attention = torch.cat([batch["attention_mask"], torch.ones(n, gen_length, dtype=torch.long)], 1)
    positions = (attention.cumsum(1) - 1).clamp(min=0)
    banned = [tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.mask_token_id]
    with torch.no_grad():
        for _ in range(gen_length):
            logits = model(x, attention_mask=attention, position_ids=positions).logits[:, p:]
            logits[..., banned] = -torch.inf
            confidence, tokens = logits.softmax(-1).max(-1)
            still = x[:, p:] == tokenizer.mask_token_id
            pick = torch.where(still, confidence, -1.0).argmax(1)
            rows = torch.arange(n)
            x[rows, p + pick] = torch.where(still[rows, pick], tokens[rows, pick], x[rows, p + pick])
    texts = tokenizer.batch_decode(x[:, p:])
    scores = ListTaskVerifier()(texts, prompts)
    assert scores.sum().item() >= 6, list(zip(prompts, texts))
