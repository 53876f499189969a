"""ImageReward: a BLIP-based model of human preference for text-to-image generations.

Xu et al. 2023, "ImageReward: Learning and Evaluating Human Preferences for Text-to-Image Generation"
(NeurIPS 2023), Sec. 3: a BLIP backbone (Li et al. 2022; ViT-L/16 image encoder at 224 px, BERT-base text
encoder with cross-attention to the image tokens) reads the prompt while attending to the image; the
text encoder's first-token feature goes through an MLP head to one scalar, trained on 137k expert
comparisons with the pairwise ranking loss of Eq. 1. The released scores are z-scored with the mean and
std of the raw outputs over the training data, so 0 is an average generation.

This module loads the original checkpoint ``ImageReward.pt`` of ``THUDM/ImageReward`` (plus its
``med_config.json``) onto transformers' BLIP modules instead of the ``image-reward`` package, whose BLIP
copy needs timm 0.6, fairscale and helpers that transformers 5 removed. What it implements, piece by piece,
after the package's ``ImageReward.score`` (``ImageReward/ImageReward.py``):

* image: resize the shorter side to 224 (bicubic), centre-crop, normalise with OpenAI CLIP's mean/std
  (:func:`rewards.preprocess.clip_preprocess`, in torch so the reward is differentiable in the pixels);
* image encoder ``blip.visual_encoder`` (BLIP's timm-style ``VisionTransformer``, LayerNorm eps 1e-6) ->
  :class:`transformers.BlipVisionModel`; all its output tokens (after the final norm) are the keys/values
  of the text encoder's cross-attention;
* prompt: BERT uncased WordPiece with BLIP's added special tokens ``[DEC]`` (bos) and ``[ENC]``, padded
  and truncated to 35 tokens. ImageReward feeds these ids unchanged: position 0 holds ``[CLS]`` (unlike
  BLIP's image-text matching, which overwrites it with ``[ENC]``; ImageReward's inference and training
  code never does);
* text encoder ``blip.text_encoder`` (BLIP's ``med.BertModel``, bidirectional self-attention and
  cross-attention in every layer, no pooler) -> :class:`transformers.BlipTextModel`;
* head ``mlp.layers``: Linear(768, 1024) - Dropout(0.2) - Linear(1024, 128) - Dropout(0.2) -
  Linear(128, 64) - Dropout(0.1) - Linear(64, 16) - Linear(16, 1), no activations, on the feature of
  token 0; reward = (head - 0.16717362830052426) / 1.0333394966054072.

The checkpoint's ``blip.vision_proj`` / ``blip.text_proj`` (BLIP's contrastive projections, not used by
the reward) and the ``position_ids`` buffer are recognised and dropped; any other key that does not map,
or a module weight the checkpoint lacks, is an error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import BertTokenizer, BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

try:  # transformers >= 5
    from transformers.initialization import no_init_weights
except ImportError:  # transformers 4
    from transformers.modeling_utils import no_init_weights

from .base import Reward
from .hub import resolve_file
from .preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, clip_preprocess

__all__ = [
    "IMAGE_REWARD_MEAN",
    "IMAGE_REWARD_STD",
    "IMAGE_REWARD_MAX_TOKENS",
    "ImageReward",
    "ImageRewardHead",
    "convert_image_reward_state_dict",
    "image_reward_text_config",
    "image_reward_vision_config",
    "load_image_reward_tokenizer",
]

#: Mean and std of the raw head outputs over ImageReward's training data (``ImageReward.__init__``).
IMAGE_REWARD_MEAN = 0.16717362830052426
IMAGE_REWARD_STD = 1.0333394966054072
#: Prompts are padded / truncated to this many tokens, special tokens included (``ImageReward.score``).
IMAGE_REWARD_MAX_TOKENS = 35

_VISION_PREFIX = "blip.visual_encoder."
_TEXT_PREFIX = "blip.text_encoder."
_HEAD_PREFIX = "mlp."
#: Checkpoint entries the reward does not use: BLIP's image-text contrastive projections.
_UNUSED_KEYS = frozenset(
    {"blip.vision_proj.weight", "blip.vision_proj.bias", "blip.text_proj.weight", "blip.text_proj.bias"}
)
#: The text embeddings' ``position_ids`` buffer (saved by older torch/transformers); must be 0, 1, 2, ...
_POSITION_IDS_KEY = _TEXT_PREFIX + "embeddings.position_ids"

# BLIP vit.py (timm layout) -> transformers' BlipVisionModel; one regex per parameter family.
_VISION_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), target)
    for pattern, target in (
        (r"cls_token", r"embeddings.class_embedding"),
        (r"pos_embed", r"embeddings.position_embedding"),
        (r"patch_embed\.proj\.(weight|bias)", r"embeddings.patch_embedding.\1"),
        (r"blocks\.(\d+)\.norm1\.(weight|bias)", r"encoder.layers.\1.layer_norm1.\2"),
        (r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", r"encoder.layers.\1.self_attn.qkv.\2"),
        (r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"encoder.layers.\1.self_attn.projection.\2"),
        (r"blocks\.(\d+)\.norm2\.(weight|bias)", r"encoder.layers.\1.layer_norm2.\2"),
        (r"blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"encoder.layers.\1.mlp.\2.\3"),
        (r"norm\.(weight|bias)", r"post_layernorm.\1"),
    )
)
# BLIP med.py's BertModel and transformers' BlipTextModel share parameter names (the latter was ported
# from the former); this pattern admits exactly those names, so a stray key is caught here.
_TEXT_KEY = re.compile(
    r"embeddings\.(word_embeddings|position_embeddings)\.weight"
    r"|embeddings\.LayerNorm\.(weight|bias)"
    r"|encoder\.layer\.\d+\.(attention|crossattention)\.(self\.(query|key|value)|output\.(dense|LayerNorm))"
    r"\.(weight|bias)"
    r"|encoder\.layer\.\d+\.(intermediate\.dense|output\.dense|output\.LayerNorm)\.(weight|bias)"
)
_HEAD_KEY = re.compile(r"layers\.\d+\.(weight|bias)")


def convert_image_reward_state_dict(
    state_dict: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split an original ``ImageReward.pt`` state dict into (vision, text, head) state dicts.

    ``blip.visual_encoder.*`` is renamed to :class:`transformers.BlipVisionModel` names,
    ``blip.text_encoder.*`` to :class:`transformers.BlipTextModel` names (the same, prefix dropped) and
    ``mlp.*`` to :class:`ImageRewardHead` names. The unused contrastive projections are dropped, and so is
    ``position_ids`` after checking it is ``0, 1, 2, ...``. Every other key must map: leftovers raise a
    ``ValueError`` that lists them. Tensors are not copied.
    """
    vision: dict[str, torch.Tensor] = {}
    text: dict[str, torch.Tensor] = {}
    head: dict[str, torch.Tensor] = {}
    leftovers: list[str] = []
    for key, value in state_dict.items():
        if key in _UNUSED_KEYS:
            continue
        if key == _POSITION_IDS_KEY:
            expected = torch.arange(value.shape[-1]).expand_as(value)
            if not torch.equal(value.cpu().long(), expected):
                raise ValueError(f"{key} is not 0, 1, 2, ...: only absolute positions are supported")
            continue
        if key.startswith(_VISION_PREFIX):
            name = key[len(_VISION_PREFIX) :]
            for pattern, target in _VISION_RULES:
                if pattern.fullmatch(name):
                    vision[pattern.sub(target, name)] = value
                    break
            else:
                leftovers.append(key)
        elif key.startswith(_TEXT_PREFIX) and _TEXT_KEY.fullmatch(key[len(_TEXT_PREFIX) :]):
            text[key[len(_TEXT_PREFIX) :]] = value
        elif key.startswith(_HEAD_PREFIX) and _HEAD_KEY.fullmatch(key[len(_HEAD_PREFIX) :]):
            head[key[len(_HEAD_PREFIX) :]] = value
        else:
            leftovers.append(key)
    if leftovers:
        raise ValueError(
            f"{len(leftovers)} ImageReward checkpoint key(s) do not map to the BLIP vision/text encoders or "
            f"the MLP head: {_listing(leftovers)}"
        )
    return vision, text, head


def image_reward_vision_config(**overrides: Any) -> BlipVisionConfig:
    """BLIP-large's image encoder as ImageReward builds it (``create_vit('large', 224)``), as a config.

    ViT-L/16 at 224 px: width 1024, 24 blocks, 16 heads, MLP ratio 4, exact GELU, LayerNorm eps 1e-6 (BLIP's
    ``vit.py``; transformers' default 1e-5 would not match). ``overrides`` replace any field (tests use a
    tiny encoder); ``intermediate_size`` follows ``4 * hidden_size`` unless given.
    """
    fields: dict[str, Any] = {
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "image_size": 224,
        "patch_size": 16,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-6,
        "attention_dropout": 0.0,
    }
    fields.update(overrides)
    fields.setdefault("intermediate_size", 4 * fields["hidden_size"])
    return BlipVisionConfig(**fields)


def image_reward_text_config(
    med_config: Mapping[str, Any] | str | Path, encoder_hidden_size: int
) -> BlipTextConfig:
    """The text encoder's config from BLIP's ``med_config.json`` (a ``BertConfig``; a path or its dict).

    ``encoder_hidden_size`` is the image encoder's width: BLIP overwrites the file's ``encoder_width`` with
    it (``BLIP_Pretrain.__init__``). ``is_decoder=True`` only makes transformers build the cross-attention
    layers (med.py's ``add_cross_attention``); the reward runs the encoder bidirectionally, as BLIP does.
    """
    if isinstance(med_config, (str, Path)):
        path = resolve_file(med_config, "ImageReward med_config")
        with open(path, encoding="utf-8") as file:
            med_config = json.load(file)
    med = dict(med_config)
    if not med.get("add_cross_attention", False):
        raise ValueError(
            "med_config must set add_cross_attention: ImageReward's text encoder attends to the image"
        )
    position_type = med.get("position_embedding_type", "absolute")
    if position_type != "absolute":
        raise ValueError(f"only absolute position embeddings are supported, med_config has {position_type!r}")
    required = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    missing = [name for name in required if name not in med]
    if missing:
        raise ValueError(f"med_config lacks {missing}")
    # BertConfig defaults for the optional fields (transformers' BertConfig, as med.py reads them)
    return BlipTextConfig(
        vocab_size=med["vocab_size"],
        hidden_size=med["hidden_size"],
        encoder_hidden_size=encoder_hidden_size,
        intermediate_size=med["intermediate_size"],
        num_hidden_layers=med["num_hidden_layers"],
        num_attention_heads=med["num_attention_heads"],
        max_position_embeddings=med.get("max_position_embeddings", 512),
        hidden_act=med.get("hidden_act", "gelu"),
        layer_norm_eps=med.get("layer_norm_eps", 1e-12),
        hidden_dropout_prob=med.get("hidden_dropout_prob", 0.1),
        attention_probs_dropout_prob=med.get("attention_probs_dropout_prob", 0.1),
        initializer_range=med.get("initializer_range", 0.02),
        pad_token_id=med.get("pad_token_id", 0),
        is_decoder=True,
    )


def load_image_reward_tokenizer(tokenizer: str | Path | PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """BLIP's tokenizer (``blip.init_tokenizer``): BERT uncased WordPiece plus ``[DEC]`` (bos) and ``[ENC]``.

    ``tokenizer`` is a hub id (``"bert-base-uncased"``), a local directory saved with ``save_pretrained``, or
    a loaded tokenizer (a copy is not made: the tokens are added to it). The two tokens are added in BLIP's
    order, so with the 30522-token BERT vocabulary ``[DEC]`` is 30522 and ``[ENC]`` 30523 (``vocab_size``
    30524 in ``med_config.json``); adding them to a tokenizer that has them already changes nothing.
    """
    if not isinstance(tokenizer, PreTrainedTokenizerBase):
        spec = str(tokenizer)
        path = Path(spec).expanduser()
        if path.exists() and not path.is_dir():
            raise FileNotFoundError(f"ImageReward tokenizer {spec!r} is a file; expected a directory")
        # a hub id is "name" or "owner/name"; anything else that is not a directory is a missing path
        if not path.is_dir() and (path.is_absolute() or spec.startswith((".", "~")) or spec.count("/") > 1):
            raise FileNotFoundError(f"ImageReward tokenizer {spec!r}: no such directory")
        try:
            tokenizer = BertTokenizer.from_pretrained(str(path) if path.is_dir() else spec)
        except (OSError, ValueError) as error:  # offline, unknown repo, no tokenizer files in it
            raise FileNotFoundError(
                f"ImageReward tokenizer {spec!r}: no such local directory, and the hub tokenizer could not "
                f"be loaded ({type(error).__name__}: {error})"
            ) from error
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer


class ImageRewardHead(nn.Module):
    """ImageReward's ``MLP`` head: five linear layers without activations, dropout between the first four.

    The ``layers`` indices match the checkpoint's ``mlp.layers.{0,2,4,6,7}`` (Dropout at 1, 3, 5).
    """

    def __init__(self, input_size: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Raw (not z-scored) rewards (B, 1) of first-token features (B, input_size)."""
        return self.layers(features)


class ImageReward(Reward):
    """ImageReward (Xu et al. 2023): human preference for an image given its prompt, z-scored.

    Args:
        checkpoint: the original ``ImageReward.pt`` (or a ``.safetensors`` with the same keys): a local path
            or a hub file ``owner/repo/filename``.
        med_config: BLIP's ``med_config.json`` for the text encoder, same forms (or its dict).
        tokenizer: BERT uncased tokenizer: hub id, local directory or tokenizer object.
        vision_config: image encoder; ``None`` is BLIP-large's ViT-L/16 at 224 px
            (:func:`image_reward_vision_config`), a dict overrides fields of it.
        batch_size: images per model call.
        device: where the weights go; ``None`` keeps them on the CPU (move later with ``.to``).

    The weights are frozen (``requires_grad=False``) and the module is in eval mode (no dropout); gradients
    flow to the pixels, so the reward can guide sampling.
    """

    modality = "image"
    differentiable = True
    scale = (
        "ImageReward's human-preference score, z-scored over its training generations: 0 is an average "
        "image for its prompt, roughly -2.5 (poor) to 2.5 (excellent); one unit is one std of that data"
    )
    needs_prompts = True

    def __init__(
        self,
        checkpoint: str | Path = "THUDM/ImageReward/ImageReward.pt",
        med_config: str | Path | Mapping[str, Any] = "THUDM/ImageReward/med_config.json",
        tokenizer: str | Path | PreTrainedTokenizerBase = "bert-base-uncased",
        *,
        vision_config: BlipVisionConfig | Mapping[str, Any] | None = None,
        batch_size: int = 16,
        device: str | torch.device | None = None,
    ):
        super().__init__(batch_size=batch_size)
        if vision_config is None:
            vision_config = image_reward_vision_config()
        elif isinstance(vision_config, Mapping):
            vision_config = image_reward_vision_config(**vision_config)
        text_config = image_reward_text_config(med_config, encoder_hidden_size=vision_config.hidden_size)
        state_dict = _read_state_dict(resolve_file(checkpoint, "ImageReward checkpoint"))
        self.tokenizer = load_image_reward_tokenizer(tokenizer)
        if len(self.tokenizer) > text_config.vocab_size:
            raise ValueError(
                f"the tokenizer has {len(self.tokenizer)} tokens but the text encoder's vocabulary only "
                f"{text_config.vocab_size}; use BERT's uncased vocabulary"
            )
        vision_sd, text_sd, head_sd = convert_image_reward_state_dict(state_dict)
        # every weight is overwritten by the strict loads below, so skip the (slow) random init
        with no_init_weights():
            self.vision = BlipVisionModel(vision_config)
            self.text = BlipTextModel(text_config, add_pooling_layer=False)
        self.head = ImageRewardHead(text_config.hidden_size)
        _load_strict(self.vision, vision_sd, "image encoder (blip.visual_encoder)")
        _load_strict(self.text, text_sd, "text encoder (blip.text_encoder)")
        _load_strict(self.head, head_sd, "MLP head (mlp)")
        size = vision_config.image_size
        self.image_size: tuple[int, int] = (size, size) if isinstance(size, int) else (size[0], size[1])
        self.requires_grad_(False)
        self.eval()
        if device is not None:
            self.to(device)

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask, (B, 35) each, as ``ImageReward.score`` builds them."""
        encoded = self.tokenizer(
            list(prompts),
            padding="max_length",
            truncation=True,
            max_length=IMAGE_REWARD_MAX_TOKENS,
            return_tensors="pt",
        )
        return encoded["input_ids"], encoded["attention_mask"]

    def preprocess(self, samples: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> the image encoder's normalised input (B, 3, 224, 224), differentiably."""
        return clip_preprocess(samples, self.image_size, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)

    def score(self, samples: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        """Z-scored ImageReward of each image for its prompt, shape (n,)."""
        if prompts is None:
            raise ValueError("ImageReward needs one prompt per image")
        weight = self.head.layers[0].weight
        pixels = self.preprocess(samples).to(weight.dtype)
        image_tokens = self.vision(pixel_values=pixels).last_hidden_state
        input_ids, attention_mask = self.tokenize(prompts)
        # every image token is attended to (BLIP passes an all-ones encoder mask), so none is given here
        text = self.text(
            input_ids=input_ids.to(weight.device),
            attention_mask=attention_mask.to(weight.device),
            encoder_hidden_states=image_tokens,
        )
        features = text.last_hidden_state[:, 0, :]
        raw = self.head(features).squeeze(-1)
        return (raw - IMAGE_REWARD_MEAN) / IMAGE_REWARD_STD


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A flat state dict from ``.safetensors`` or a ``torch.save`` file (loaded with ``weights_only``)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state_dict, Mapping) or not all(torch.is_tensor(v) for v in state_dict.values()):
        raise ValueError(f"{path} does not hold a flat state dict of tensors (as ImageReward.pt does)")
    return dict(state_dict)


def _load_strict(module: nn.Module, state_dict: dict[str, torch.Tensor], what: str) -> None:
    """``load_state_dict(strict=True)`` with one readable error for missing, unexpected or mis-shaped keys."""
    expected = module.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    mismatched = [
        f"{key} {tuple(state_dict[key].shape)} vs {tuple(tensor.shape)}"
        for key, tensor in expected.items()
        if key in state_dict and state_dict[key].shape != tensor.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing from the checkpoint: {_listing(missing)}")
    if unexpected:
        problems.append(f"not in the model (check vision_config / med_config): {_listing(unexpected)}")
    if mismatched:
        problems.append(f"shape (checkpoint vs model): {_listing(mismatched)}")
    if problems:
        raise ValueError(f"ImageReward {what} does not match the checkpoint; " + "; ".join(problems))
    module.load_state_dict(state_dict, strict=True)


def _listing(items: list[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")
