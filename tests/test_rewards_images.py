"""JPEG (in)compressibility and classifier-probability rewards, loaded through their public loaders."""

import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rewards import DIGITS_CLASSIFIER, DigitClassifier
from rewards.classifier import ClassifierReward, digits_reward
from rewards.compressibility import JPEGCompressibility, JPEGIncompressibility

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from train_digits import load_digit_splits  # noqa: E402


def _flat_and_noise() -> torch.Tensor:
    flat = torch.full((1, 3, 64, 64), 0.4)
    noise = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    return torch.cat([flat, noise])


def test_jpeg_compressibility_ranks_flat_above_noise_and_incompressibility_the_reverse():
    images = _flat_and_noise()
    compress, incompress = JPEGCompressibility()(images), JPEGIncompressibility()(images)
    assert compress[0] > compress[1] and incompress[1] > incompress[0]
    torch.testing.assert_close(compress, -incompress)


def test_jpeg_size_is_the_file_size_in_kilobytes():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(24, 40, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=80)
    size_kb = buffer.tell() / 1000
    got = JPEGIncompressibility(quality=80)([Image.fromarray(pixels)])
    assert got.item() == pytest.approx(size_kb, abs=1e-6)
    with pytest.raises(ValueError, match="quality"):
        JPEGCompressibility(quality=0)


@pytest.fixture(scope="module")
def held_out() -> tuple[torch.Tensor, torch.Tensor]:
    """Real held-out digits in [0, 1] and their labels (200 of them)."""
    data = load_digit_splits()
    return (data["x_test"][:200] + 1) / 2, data["y_test"][:200]


def test_digits_reward_prefers_the_true_class_on_real_digits(held_out):
    images, labels = held_out
    reward = digits_reward()
    true = reward(images, [str(int(y)) for y in labels])
    wrong = reward(images, [str((int(y) + 1) % 10) for y in labels])
    assert (true > wrong).float().mean() > 0.95
    assert true.max() <= 0
    # the prompt may name the digit, as the digits pipeline accepts
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    torch.testing.assert_close(reward(images[:5], [names[int(y)] for y in labels[:5]]), true[:5])


def test_class_probabilities_sum_to_one(held_out):
    images = held_out[0][:8]
    probs = torch.stack([digits_reward(target=c)(images).exp() for c in range(10)])
    torch.testing.assert_close(probs.sum(0), torch.ones(8), rtol=1e-5, atol=1e-5)


def test_log_odds_is_the_target_logit_against_the_others(held_out):
    """log p / (1 - p) = logit_y - logsumexp(other logits): the same ranking as log p, unbounded above, and
    finite where log p has rounded to 0."""
    images = held_out[0][:32]
    logits = DigitClassifier.from_pretrained(DIGITS_CLASSIFIER).eval()(images * 2 - 1).double()
    expected = logits[:, 3] - torch.cat([logits[:, :3], logits[:, 4:]], 1).logsumexp(1)
    odds = digits_reward(target=3, output="log_odds")(images.double())
    torch.testing.assert_close(odds, expected, rtol=1e-5, atol=1e-5)
    logp = digits_reward(target=3)(images.double())
    assert torch.equal(odds.argsort(), logp.argsort())
    linear = torch.nn.Linear(3, 3, bias=False)  # logits = 100 x: a classifier sure to float precision
    linear.weight.data = 100 * torch.eye(3)
    classifier = torch.nn.Sequential(torch.nn.Flatten(), linear)
    confident = torch.tensor([0.4, 0.0, 0.0]).view(1, 3, 1, 1)
    kw = {"target": 0, "preprocess": torch.nn.Identity()}
    assert float(ClassifierReward(classifier, **kw)(confident)) == 0.0  # log p has rounded to 0
    log_odds = float(ClassifierReward(classifier, output="log_odds", **kw)(confident))
    assert log_odds == pytest.approx(40 - float(torch.tensor([0.0, 0.0]).logsumexp(0)), rel=1e-6)
    with pytest.raises(ValueError, match="output"):
        digits_reward(output="prob")


def test_generic_loader_equals_the_bundled_classifier(held_out):
    images, labels = held_out
    classifier = DigitClassifier.from_pretrained(DIGITS_CLASSIFIER).eval()
    expected = classifier(images[:16] * 2 - 1).log_softmax(-1)[:, 3]
    torch.testing.assert_close(ClassifierReward(str(DIGITS_CLASSIFIER), target=3)(images[:16]), expected)


def test_classifier_reward_gradcheck():
    classifier = DigitClassifier.from_pretrained(DIGITS_CLASSIFIER).double()
    reward = digits_reward(target=4)
    reward.classifier = classifier.eval().requires_grad_(False)
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: reward(v), (x,), eps=1e-6, atol=1e-5)


def test_classifier_reward_errors():
    reward = digits_reward()
    with pytest.raises(ValueError, match="needs one prompt"):
        reward(torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match="not a digit"):
        reward(torch.rand(1, 1, 8, 8), ["a cat"])
    with pytest.raises(ValueError, match="out of range"):
        digits_reward(target=12)(torch.rand(1, 1, 8, 8))
    with pytest.raises(FileNotFoundError, match="could not load an image classifier"):
        ClassifierReward("/nonexistent/classifier", target=0)


@pytest.fixture(scope="module")
def tiny_vit_dir(tmp_path_factory) -> Path:
    """A tiny random transformers ViT classifier with named labels, saved with its image processor."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=16,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=3,
        id2label={0: "cat", 1: "dog", 2: "bird"},
        label2id={"cat": 0, "dog": 1, "bird": 2},
    )
    path = tmp_path_factory.mktemp("tiny-vit")
    ViTForImageClassification(config).save_pretrained(path)
    processor = ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor.save_pretrained(path)
    return path


def test_transformers_classifier_matches_its_own_processor(tiny_vit_dir):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(tiny_vit_dir).eval()
    processor = AutoImageProcessor.from_pretrained(tiny_vit_dir)
    rng = np.random.default_rng(1)
    for side in (16, 40):  # at the model's resolution (exact) and resized
        pixels = rng.integers(0, 256, size=(2, side, side, 3), dtype=np.uint8)
        pils = [Image.fromarray(p) for p in pixels]
        with torch.no_grad():
            inputs = processor(images=pils, return_tensors="pt")
            expected = model(**inputs).logits.log_softmax(-1)[:, 1]
        got = ClassifierReward(str(tiny_vit_dir), target="dog")(pils)
        tol = 1e-5 if side == 16 else 2e-2
        torch.testing.assert_close(got, expected, rtol=tol, atol=tol)
    by_index = ClassifierReward(str(tiny_vit_dir), target=1)(pils)
    torch.testing.assert_close(by_index, got)
    by_prompt = ClassifierReward(str(tiny_vit_dir))(pils, ["dog", "dog"])
    torch.testing.assert_close(by_prompt, got)
    with pytest.raises(ValueError, match="bird, cat, dog"):
        ClassifierReward(str(tiny_vit_dir), target="horse")
