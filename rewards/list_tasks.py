"""A synthetic, verifiable text-task family (ParallelBench-style list operations) and its verifier reward.

Every prompt is a line of space-separated tokens, ``<task> : <operands> =``, and every answer a line of
space-separated tokens; digits are single tokens ``0``-``9``. The tasks (:data:`TASKS`):

* ``copy``: ``"copy : 3 1 2 ="`` -> ``"3 1 2"``;
* ``reverse``: ``"reverse : 3 1 2 ="`` -> ``"2 1 3"``;
* ``sort``: ``"sort : 3 1 2 ="`` -> ``"1 2 3"`` (ascending, repeats kept);
* ``add``: two non-negative integers written digit by digit, most significant digit first, separated by
  ``+``: ``"add : 4 7 + 5 ="`` means 47 + 5 and its answer is ``"5 2"`` (the sum, digit by digit, no
  leading zeros);
* ``shuffle``: ``"shuffle : 3 1 2 ="`` -> any ordering of ``3 1 2`` (ParallelBench's shuffle): the one task
  with several correct answers (:data:`ANY_ORDER_TASKS`). Its tokens must agree with each other -- every
  position's marginal is uniform over the operands, so committing several positions at once from their
  marginals repeats operands -- which is what makes parallel decoding cost accuracy (Kang et al. 2025,
  "ParallelBench").

:func:`make_prompt` writes a prompt, :func:`solve` gives the expected answer of any well-formed prompt
(``ValueError`` otherwise; for ``shuffle`` the operands in prompt order, one correct answer of many),
:func:`is_correct` checks an answer, and :func:`random_example` draws a (prompt, answer) pair from the
training distribution: lists of :data:`LIST_LENGTHS` digits (a uniformly random ordering as the ``shuffle``
answer), summands of :data:`ADD_DIGITS` digits.

:class:`ListTaskVerifier` is the reward: 1.0 where a generated text's answer is correct (:func:`is_correct`).
It reads generated text the way a masked-diffusion model writes it (the bundled ``pipelines/assets/text``
model, ``scripts/train_tiny_text.py``): an answer followed by ``[EOS]`` padding, possibly preceded by the
prompt itself and by ``[PAD]`` tokens.
"""

from __future__ import annotations

import random
from typing import Any

import torch

from .text import VerifierReward

__all__ = [
    "ADD_DIGITS",
    "ANY_ORDER_TASKS",
    "EOS",
    "LIST_LENGTHS",
    "MASK",
    "PAD",
    "SPECIAL_TOKENS",
    "TASKS",
    "UNK",
    "VOCAB",
    "ListTaskVerifier",
    "extract_answer",
    "is_correct",
    "make_prompt",
    "random_example",
    "solve",
]

TASKS = ("copy", "reverse", "sort", "add", "shuffle")
#: Tasks whose answer may list the operands in any order.
ANY_ORDER_TASKS = ("shuffle",)
#: Inclusive range of list lengths drawn by :func:`random_example` for copy / reverse / sort.
LIST_LENGTHS = (2, 8)
#: Inclusive range of the number of digits of each summand drawn by :func:`random_example` for add.
ADD_DIGITS = (1, 4)

PAD, UNK, MASK, EOS = "[PAD]", "[UNK]", "[MASK]", "[EOS]"
SPECIAL_TOKENS = (PAD, UNK, MASK, EOS)
DIGITS = tuple(str(d) for d in range(10))
#: The whole word-level vocabulary, in id order (special tokens first, so ``[PAD]`` is id 0).
VOCAB = (*SPECIAL_TOKENS, *DIGITS, ":", "=", "+", *TASKS)  # new tasks go last: earlier ids never change


def _digits_of(number: int) -> list[str]:
    if isinstance(number, bool) or not isinstance(number, int) or number < 0:
        raise ValueError(f"add takes non-negative integers, got {number!r}")
    return list(str(number))


def make_prompt(task: str, numbers: list[int]) -> str:
    """The prompt of ``task`` on ``numbers``: digits 0-9 for copy / reverse / sort, two non-negative
    integers for add. ``make_prompt("sort", [3, 1, 2]) == "sort : 3 1 2 ="``,
    ``make_prompt("add", [47, 5]) == "add : 4 7 + 5 ="``."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; tasks are {TASKS}")
    numbers = list(numbers)
    if task == "add":
        if len(numbers) != 2:
            raise ValueError(f"add takes two numbers, got {len(numbers)}")
        body = [*_digits_of(numbers[0]), "+", *_digits_of(numbers[1])]
    else:
        if not numbers:
            raise ValueError(f"{task} needs at least one digit")
        for n in numbers:
            if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= 9:
                raise ValueError(f"{task} takes digits 0-9, got {n!r}")
        body = [str(n) for n in numbers]
    return " ".join([task, ":", *body, "="])


def _parse_digits(tokens: list[str], prompt: str) -> list[int]:
    if not tokens or any(t not in DIGITS for t in tokens):
        raise ValueError(f"malformed prompt {prompt!r}: expected one or more digits 0-9 between ':' and '='")
    return [int(t) for t in tokens]


def parse_prompt(prompt: str) -> tuple[str, list[int]]:
    """``(task, numbers)`` of a well-formed prompt (the inverse of :func:`make_prompt`); ValueError if not."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
    tokens = prompt.split()
    if len(tokens) < 4 or tokens[1] != ":" or tokens[-1] != "=" or tokens[0] not in TASKS:
        raise ValueError(
            f"malformed prompt {prompt!r}: expected '<task> : <operands> =' with task in {TASKS}"
        )
    task, body = tokens[0], tokens[2:-1]
    if task != "add":
        return task, _parse_digits(body, prompt)
    if body.count("+") != 1:
        raise ValueError(f"malformed prompt {prompt!r}: add needs '<digits> + <digits>'")
    plus = body.index("+")
    left, right = _parse_digits(body[:plus], prompt), _parse_digits(body[plus + 1 :], prompt)
    as_int = lambda digits: int("".join(map(str, digits)))  # noqa: E731
    return task, [as_int(left), as_int(right)]


def solve(prompt: str) -> str:
    """The expected answer of ``prompt``: space-separated tokens, e.g. ``"1 2 3"`` (for ``shuffle`` the
    operands in prompt order, one of its correct answers); ValueError for a malformed prompt."""
    task, numbers = parse_prompt(prompt)
    if task in ("copy", "shuffle"):
        answer = numbers
    elif task == "reverse":
        answer = numbers[::-1]
    elif task == "sort":
        answer = sorted(numbers)
    else:
        answer = [int(d) for d in str(numbers[0] + numbers[1])]
    return " ".join(map(str, answer))


def is_correct(prompt: str, answer: str) -> bool:
    """Whether ``answer`` (space-separated tokens, whitespace-insensitive) is a correct answer of ``prompt``:
    equal to :func:`solve`'s, or for :data:`ANY_ORDER_TASKS` any ordering of it."""
    return _matches(parse_prompt(prompt)[0], solve(prompt), answer)


def _matches(task: str, expected: str, answer: str) -> bool:
    if task in ANY_ORDER_TASKS:
        return sorted(answer.split()) == sorted(expected.split())
    return answer.split() == expected.split()


def _randint(generator: torch.Generator | random.Random, low: int, high: int) -> int:
    """A uniform integer in [low, high] from either kind of generator."""
    if isinstance(generator, random.Random):
        return generator.randint(low, high)
    if isinstance(generator, torch.Generator):
        return int(torch.randint(low, high + 1, (1,), generator=generator).item())
    raise TypeError(f"generator must be a torch.Generator or random.Random, got {type(generator).__name__}")


def random_example(generator: torch.Generator | random.Random, task: str | None = None) -> tuple[str, str]:
    """A random ``(prompt, answer)``; the task is uniform over :data:`TASKS` when ``task`` is None.

    copy / reverse / sort / shuffle: a list of uniform digits, its length uniform in :data:`LIST_LENGTHS`
    (shuffle's answer: a uniformly random ordering of it, Fisher-Yates with the same generator). add: two
    summands, each with a number of digits uniform in :data:`ADD_DIGITS` and then uniform among the
    integers of that many digits (0-9 for one digit)."""
    if task is None:
        task = TASKS[_randint(generator, 0, len(TASKS) - 1)]
    elif task not in TASKS:
        raise ValueError(f"unknown task {task!r}; tasks are {TASKS}")
    if task == "add":
        numbers = []
        for _ in range(2):
            n_digits = _randint(generator, *ADD_DIGITS)
            low = 0 if n_digits == 1 else 10 ** (n_digits - 1)
            numbers.append(_randint(generator, low, 10**n_digits - 1))
    else:
        numbers = [_randint(generator, 0, 9) for _ in range(_randint(generator, *LIST_LENGTHS))]
    prompt = make_prompt(task, numbers)
    if task == "shuffle":
        for i in range(len(numbers) - 1, 0, -1):
            j = _randint(generator, 0, i)
            numbers[i], numbers[j] = numbers[j], numbers[i]
        return prompt, " ".join(map(str, numbers))
    return prompt, solve(prompt)


def extract_answer(text: str) -> str:
    """The answer part of a generated text, whitespace-normalised: the text after the last ``=`` (so a
    sample that repeats its prompt is read correctly), cut at the first ``[EOS]``, without ``[PAD]``
    tokens. ``[MASK]`` and ``[UNK]`` are kept, so an unfinished answer never matches."""
    if "=" in text:
        text = text[text.rindex("=") + 1 :]
    text = text.split(EOS, 1)[0].replace(PAD, " ")
    return " ".join(text.split())


class ListTaskVerifier(VerifierReward):
    """1.0 where the generated text's answer is correct (:func:`is_correct`: equal to ``solve(prompt)``, or
    any ordering of it for ``shuffle``), else 0.0.

    Args:
        prompt: a fixed task prompt for every sample; ``None`` (default) takes each sample's prompt from the
            call's ``prompts`` (one per sample, or one string for all). A malformed prompt raises
            ``ValueError``.
        batch_size: samples per chunk (checking is pure Python, so this only bounds chunking).

    The sample is read with :func:`extract_answer` (text after the last ``=``, cut at the first ``[EOS]``,
    ``[PAD]`` dropped, whitespace normalised), so ``"1 2 3 [EOS] [EOS]"``, ``" 1  2 3"`` and
    ``"sort : 3 1 2 = 1 2 3"`` all match the prompt ``"sort : 3 1 2 ="``.
    """

    scale = "1.0 where the answer (cut at [EOS]) is correct (exact; any order for shuffle), else 0.0"
    reference_kind = "prompt"

    def __init__(self, prompt: str | None = None, *, batch_size: int = 256):
        super().__init__(prompt, batch_size=batch_size)

    def prepare(self, reference: str) -> tuple[str, str]:
        return parse_prompt(reference)[0], solve(reference)

    def check(self, sample: str, prepared: Any) -> bool:
        task, expected = prepared
        return _matches(task, expected, extract_answer(sample))
