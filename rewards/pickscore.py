"""PickScore, and a frozen transformers CLIP encoder that other rewards (e.g. CLIPScore) can also use.

PickScore (Kirstain et al., 2023, "Pick-a-Pic: An Open Dataset of User Preferences for Text-to-Image
Generation", arXiv:2305.01569; github.com/yuvalkirstain/PickScore) is CLIP-H fine-tuned on Pick-a-Pic
preferences. Its score, as in the model card / README, is ``logit_scale.exp() * cos(E_image, E_prompt)``
(``model.logit_scale.exp() * (text_embs @ image_embs.T)`` with normalised embeddings), so about 100 x cosine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .clip import ImageTextEncoder, _ImageTextReward, _pooled
from .preprocess import processor_pixel_config

__all__ = ["HFCLIPEncoder", "PickScore"]


def _from_pretrained(cls: Any, name: str | Path, what: str) -> Any:
    """``cls.from_pretrained(name)`` for a local directory or a hub id; ``FileNotFoundError`` when neither."""
    path = Path(name).expanduser()
    if path.is_dir():
        return cls.from_pretrained(str(path))
    text = str(name)
    if path.exists() or path.is_absolute() or text.startswith((".", "~")) or text.count("/") > 1:
        raise FileNotFoundError(f"{what} {text!r}: no such directory (and not a hub id 'owner/name')")
    try:
        return cls.from_pretrained(text)
    except (OSError, ValueError) as error:  # offline, missing repo, invalid id
        raise FileNotFoundError(
            f"{what} {text!r}: no local directory of that name, and the hub repository could not be loaded "
            f"({type(error).__name__}: {error})"
        ) from error


class HFCLIPEncoder(ImageTextEncoder):
    """A frozen transformers ``CLIPModel`` with its processor's tokenizer and image preprocessing.

    ``model`` and ``processor`` are hub ids or local directories (``save_pretrained`` output), or already
    loaded objects; ``processor`` defaults to ``model``. Images are preprocessed in torch with the image
    processor's resize (shortest edge), centre crop, mean and std, so the embeddings are differentiable in
    the pixels; texts are tokenized with padding and truncation to the model's maximum length.
    """

    def __init__(
        self,
        model: str | Path | nn.Module = "openai/clip-vit-large-patch14",
        processor: str | Path | Any | None = None,
        *,
        device: str | torch.device | None = None,
    ):
        super().__init__()
        from transformers import AutoProcessor, CLIPModel

        if processor is None:
            if not isinstance(model, (str, Path)):
                raise ValueError("HFCLIPEncoder: a model instance needs its processor")
            processor = model
        if isinstance(model, (str, Path)):
            model = _from_pretrained(CLIPModel, model, "CLIP model")
        if isinstance(processor, (str, Path)):
            processor = _from_pretrained(AutoProcessor, processor, "CLIP processor")
        self.model = self._freeze(model)
        self.tokenizer = processor.tokenizer
        self.max_length = min(
            int(self.tokenizer.model_max_length), int(model.config.text_config.max_position_embeddings)
        )
        try:
            pixels = processor_pixel_config(processor.image_processor)
        except ValueError as error:
            raise ValueError(f"HFCLIPEncoder: {error}") from error
        self._set_pixels(**pixels)
        if device is not None:
            self.to(device)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return _pooled(self.model.get_image_features(pixel_values=pixels))

    def text_features(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        return _pooled(
            self.model.get_text_features(
                input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
            )
        )


class PickScore(_ImageTextReward):
    """PickScore v1 (Kirstain et al., 2023, arXiv:2305.01569): ``logit_scale.exp() * cos(E_image, E_prompt)``.

    The model (``yuvalkirstain/PickScore_v1``, a transformers ``CLIPModel``) is used with the processor of the
    CLIP it was fine-tuned from (``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``), as in the PickScore README.
    Either may be a local directory. A prebuilt :class:`HFCLIPEncoder` can be passed as ``encoder``.
    """

    scale = (
        "logit_scale.exp() (~100 for PickScore_v1) x cosine similarity of image and prompt embeddings; "
        "generated images typically score 18-23"
    )

    def __init__(
        self,
        model: str | Path = "yuvalkirstain/PickScore_v1",
        processor: str | Path = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
        *,
        encoder: ImageTextEncoder | None = None,
        batch_size: int = 32,
        device: str | torch.device | None = None,
    ):
        encoder = encoder if encoder is not None else HFCLIPEncoder(model, processor)
        super().__init__(encoder, batch_size=batch_size, device=device)

    def from_cosine(self, cosine: torch.Tensor) -> torch.Tensor:
        return self.encoder.logit_scale.exp() * cosine
