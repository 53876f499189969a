"""Classifier-probability reward: log p(y | x) of an image classifier, the reward of classifier guidance.

Dhariwal & Nichol 2021, "Diffusion Models Beat GANs", Sec. 4 guide with grad log p_phi(y | x); as a search
reward the same quantity ranks samples by how clearly they show class y. Any torch classifier works:
an ``nn.Module`` returning logits (or an output with ``.logits``), a transformers image-classification
checkpoint (hub name or directory, preprocessed as its image processor says), or the bundled digits
classifier (:func:`digits_reward`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn
from torchvision.transforms import InterpolationMode

from .base import Reward
from .digit_classifier import DIGITS_CLASSIFIER, DigitClassifier, parse_digit
from .preprocess import as_pair, fit_to_model, processor_pixel_config

__all__ = ["ClassifierReward", "ImagePreprocess", "digits_reward"]

LabelSpec = int | str


class ImagePreprocess(nn.Module):
    """[0, 1] images -> classifier input: channels, size, (x - mean) / std, then a map onto ``value_range``.

    ``resize_mode="squash"`` resizes to exactly ``size`` (ViT processors, the digits classifier);
    ``"shortest"`` resizes the shorter side to ``resize`` (default ``size``) and centre-crops ``size``
    (CLIP, ConvNeXt processors); see :func:`rewards.preprocess.fit_to_model`.
    """

    def __init__(
        self,
        channels: int | None = None,
        size: int | tuple[int, int] | None = None,
        resize_mode: str = "squash",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        value_range: tuple[float, float] = (0.0, 1.0),
        interpolation: InterpolationMode = InterpolationMode.BICUBIC,
        resize: int | tuple[int, int] | None = None,
    ):
        super().__init__()
        if resize_mode not in ("shortest", "squash"):
            raise ValueError(f"resize_mode must be 'shortest' or 'squash', got {resize_mode!r}")
        self.channels, self.resize_mode, self.value_range = channels, resize_mode, value_range
        self.interpolation = interpolation
        self.size = None if size is None else as_pair(size)
        self.resize = self.size if resize is None else as_pair(resize)
        self.mean = None if mean is None else tuple(float(m) for m in mean)
        self.std = None if std is None else tuple(float(s) for s in std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels == 1 and images.shape[1] == 3:
            images = images.mean(1, keepdim=True)
        elif self.channels == 3 and images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        if self.size is not None:
            images = fit_to_model(images, self.size, self.resize, self.resize_mode, self.interpolation)
        if self.mean is not None:
            mean = torch.as_tensor(self.mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
            std = torch.as_tensor(self.std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
            images = (images - mean) / std
        low, high = self.value_range
        return images * (high - low) + low

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, size={self.size}, resize={self.resize}, mode={self.resize_mode}, "
            f"range={self.value_range}"
        )


def _load_classifier(spec: str | Path) -> tuple[nn.Module, ImagePreprocess]:
    """A digits-classifier directory, or a transformers image-classification checkpoint (name or dir)."""
    config = Path(spec) / "config.json"
    if config.is_file() and json.loads(config.read_text()).get("_class_name") == DigitClassifier.__name__:
        model = DigitClassifier.from_pretrained(spec)
        cfg = model.config
        return model, ImagePreprocess(cfg.in_channels, cfg.sample_size, value_range=(-1.0, 1.0))
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    try:
        model = AutoModelForImageClassification.from_pretrained(str(spec))
        processor = AutoImageProcessor.from_pretrained(str(spec))
    except OSError as error:
        raise FileNotFoundError(f"could not load an image classifier from {str(spec)!r}: {error}") from error
    return model, _processor_preprocess(processor)


def _processor_preprocess(processor) -> ImagePreprocess:
    """The resize/crop/normalise a transformers image processor applies, as a torch module (a resampling
    filter torch lacks falls back to bicubic)."""
    pixels = processor_pixel_config(processor, fallback_interpolation="bicubic")
    return ImagePreprocess(
        channels=3,
        size=pixels["crop"],
        resize=pixels["resize"],
        resize_mode=pixels["resize_mode"],
        mean=pixels["mean"],
        std=pixels["std"],
        interpolation=InterpolationMode(pixels["interpolation"]),
    )


OUTPUTS = ("log_prob", "log_odds")


class ClassifierReward(Reward):
    """``log p(target | image)`` under ``classifier``; the target is fixed or read from each prompt.

    ``output="log_odds"`` scores ``log p / (1 - p) = logit_target - logsumexp(other logits)`` instead: the
    same ranking, but unbounded above, so it keeps separating samples the classifier is already sure of
    (log p saturates at 0 and stops telling a clear digit from a perfect one).

    Args:
        classifier: an ``nn.Module`` (logits out), a digits-classifier directory, or a transformers image
            classification checkpoint (hub name or directory).
        target: the class, as an index or (with a transformers checkpoint) a label name; ``None`` reads it
            from each prompt with ``labels``.
        labels: maps a prompt to a class index (a callable or a dict); by default a prompt that is a label
            name of the checkpoint, or an integer, is used.
        preprocess: how [0, 1] images become classifier inputs; a loaded checkpoint brings its own.
        output: ``"log_prob"`` (default) or ``"log_odds"``.
    """

    modality = "image"
    differentiable = True
    scale = "log-probability of the target class, in (-inf, 0]; 0 is certainty"

    def __init__(
        self,
        classifier: nn.Module | str | Path,
        target: LabelSpec | None = None,
        *,
        labels: Callable[[str], int] | Mapping[str, int] | None = None,
        preprocess: ImagePreprocess | None = None,
        batch_size: int = 64,
        device: str | torch.device | None = None,
        output: str = "log_prob",
    ):
        super().__init__(batch_size=batch_size)
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        self.output = output
        if output == "log_odds":
            self.scale = "log-odds of the target class, log p / (1 - p), in (-inf, inf); 0 is p = 1/2"
        if isinstance(classifier, (str, Path)):
            classifier, loaded_preprocess = _load_classifier(classifier)
            preprocess = preprocess or loaded_preprocess
        self.classifier = classifier.eval().requires_grad_(False)
        self.preprocess = preprocess or ImagePreprocess()
        config = getattr(classifier, "config", None)
        self.label2id = {str(k): int(v) for k, v in (getattr(config, "label2id", None) or {}).items()}
        self.labels = labels
        self.target = None if target is None else self._class_index(target)
        self.needs_prompts = self.target is None
        if device is not None:
            self.to(device)

    def _class_index(self, label: LabelSpec) -> int:
        if isinstance(label, int) and not isinstance(label, bool):
            return label
        if isinstance(label, str) and label in self.label2id:
            return self.label2id[label]
        if isinstance(label, str) and label.strip().lstrip("-").isdigit():
            return int(label)
        known = ", ".join(sorted(self.label2id)) or "none (give class indices)"
        raise ValueError(f"unknown class {label!r}; the classifier's labels are: {known}")

    def _prompt_class(self, prompt: str) -> int:
        if self.labels is None:
            return self._class_index(prompt)
        if isinstance(self.labels, Mapping):
            if prompt not in self.labels:
                raise ValueError(f"prompt {prompt!r} is not in the labels mapping")
            return int(self.labels[prompt])
        return int(self.labels(prompt))

    def log_probs(self, images: torch.Tensor) -> torch.Tensor:
        """(n, classes) log-probabilities of [0, 1] images."""
        inputs = self.preprocess(images.to(next(self.classifier.parameters()).dtype))
        out = self.classifier(inputs)
        logits = out.logits if hasattr(out, "logits") else out
        return logits.log_softmax(-1)

    def score(self, samples: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        logp = self.log_probs(samples)
        if self.target is not None:
            classes = [self.target] * len(samples)
        else:
            classes = [self._prompt_class(p) for p in prompts]
        n_classes = logp.shape[-1]
        bad = [c for c in classes if not 0 <= c < n_classes]
        if bad:
            raise ValueError(f"class {bad[0]} is out of range for a {n_classes}-class classifier")
        index = torch.tensor(classes, device=logp.device).view(-1, 1)
        target = logp.gather(1, index).squeeze(1)
        if self.output == "log_prob":
            return target
        others = logp.scatter(1, index, float("-inf")).logsumexp(1)  # log(1 - p), without cancellation
        return target - others


def digits_reward(
    target: int | None = None,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    output: str = "log_prob",
) -> ClassifierReward:
    """log p(digit | image) (or its log-odds, ``output="log_odds"``) under the bundled digits classifier;
    the digit is ``target`` or each prompt ("7" or "seven"), as the bundled digits pipeline takes them."""
    return ClassifierReward(
        DIGITS_CLASSIFIER, target, labels=parse_digit, batch_size=batch_size, device=device, output=output
    )
