"""CLIP-based rewards on open_clip models: CLIPScore, the LAION aesthetic predictor and HPS v2 / v2.1.

All three embed the samples with a frozen CLIP image tower, fed through :func:`rewards.preprocess.
clip_preprocess` (torch all the way, so the scores are differentiable in the pixels), and compare that
embedding with a text embedding or a small head:

* :class:`CLIPScore` (Hessel et al., 2021, "CLIPScore: A Reference-free Evaluation Metric for Image
  Captioning", arXiv:2104.08718; the torchmetrics ``CLIPScore`` convention):
  ``100 * cos(E_image, E_text)``, with ``clip_at_zero=True`` ``100 * max(cos, 0)`` exactly as torchmetrics.
* :class:`AestheticScore` (LAION improved aesthetic predictor, github.com/christophschuhmann/improved-
  aesthetic-predictor; the linear v1 head of github.com/LAION-AI/aesthetic-predictor): a head on the
  L2-normalised CLIP ViT-L/14 image embedding, trained to predict the AVA mean rating (1-10).
* :class:`HPSv2` (Wu et al., 2023, "Human Preference Score v2", arXiv:2306.09341; github.com/tgxs002/HPSv2):
  an open_clip ViT-H-14 fine-tuned on human preferences; the score is ``diag(I @ T.T)`` of the normalised
  image and text features, i.e. ``cos(E_image, E_text)``, as ``hpsv2.score`` reports it.

The encoder machinery (:class:`ImageTextEncoder`, :class:`OpenCLIPEncoder`) and the checkpoint loader
(:func:`load_state_dict`) are shared with :mod:`rewards.pickscore`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import InterpolationMode

from .base import Reward
from .hub import resolve_file
from .preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, as_pair, clip_preprocess, fit_to_model

__all__ = [
    "AESTHETIC_HEAD",
    "AestheticScore",
    "CLIPScore",
    "HPSV2_CHECKPOINTS",
    "HPSv2",
    "ImageTextEncoder",
    "OpenCLIPEncoder",
    "load_state_dict",
]

#: Default aesthetic head: the improved LAION predictor (``sac+logos+ava1-l14-linearMSE.pth``) as TRL's
#: DDPO example ships it.
AESTHETIC_HEAD = "trl-lib/ddpo-aesthetic-predictor/aesthetic-model.pth"
#: HPS checkpoints on the hub, by version.
HPSV2_CHECKPOINTS = {"2.0": "xswu/HPSv2/HPS_v2_compressed.pt", "2.1": "xswu/HPSv2/HPS_v2.1_compressed.pt"}


def load_state_dict(spec: str | Path, what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """A state dict from a local file or hub file ``owner/repo/filename`` (:func:`rewards.hub.resolve_file`).

    ``.safetensors`` files are read with safetensors, anything else with ``torch.load(weights_only=True)``.
    A ``{"state_dict": ...}`` wrapper (training checkpoints, e.g. HPS) is unwrapped and a ``module.``
    prefix on every key (DistributedDataParallel) is stripped. Raises ``FileNotFoundError`` for a missing
    file and ``ValueError`` for a file that holds no state dict.
    """
    path = resolve_file(spec, what)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated files, pickles with code in them, ...
        raise ValueError(
            f"{what} {str(spec)!r} could not be read: {type(error).__name__}: {error}"
        ) from error
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{what} {str(spec)!r} does not hold a state dict (a mapping of names to tensors)")
    state = dict(obj)
    if all(key.startswith("module.") for key in state):
        state = {key[len("module.") :]: value for key, value in state.items()}
    return state


def _pooled(output: Any) -> torch.Tensor:
    """Features from a model call that returns either a tensor or an output object with ``pooler_output``
    (transformers 5 returns ``BaseModelOutputWithPooling`` from ``get_image_features``/``get_text_features``;
    earlier versions a tensor)."""
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if isinstance(pooled, torch.Tensor):
        return pooled
    raise TypeError(f"expected a tensor or an output with pooler_output, got {type(output).__name__}")


class ImageTextEncoder(nn.Module):
    """A frozen two-tower (CLIP-style) model: pixels in [0, 1] and strings to L2-normalised embeddings.

    Subclasses wrap a model (open_clip, transformers), call :meth:`_set_pixels` with the model's image
    preprocessing and implement :meth:`image_features` (normalised pixels -> raw features),
    :meth:`text_features` (strings -> raw features) and :attr:`logit_scale`. Images go through
    :func:`~rewards.preprocess.clip_preprocess` in torch, so :meth:`encode_images` is differentiable in the
    pixels. The wrapped model stays in eval mode (``train()`` is a no-op) and its parameters are frozen.
    """

    def _set_pixels(
        self,
        *,
        crop: int | Sequence[int],
        resize: int | Sequence[int] | None = None,
        mean: Sequence[float] = OPENAI_CLIP_MEAN,
        std: Sequence[float] = OPENAI_CLIP_STD,
        resize_mode: str = "shortest",
        interpolation: str = "bicubic",
    ) -> None:
        """Preprocessing: resize (shorter side to ``resize``, or ``squash`` to ``crop``), centre-crop
        ``crop``, normalise by ``mean``/``std``."""
        if resize_mode not in ("shortest", "squash"):
            raise ValueError(f"resize_mode {resize_mode!r} is not supported; expected 'shortest' or 'squash'")
        if interpolation not in ("bicubic", "bilinear", "nearest"):
            raise ValueError(f"interpolation {interpolation!r} is not supported on tensors")
        self.image_size = as_pair(crop)
        self.resize = self.image_size if resize is None else as_pair(resize)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.resize_mode = resize_mode
        self.interpolation = InterpolationMode(interpolation)

    @staticmethod
    def _freeze(model: nn.Module) -> nn.Module:
        model.eval()
        model.requires_grad_(False)
        return model

    def train(self, mode: bool = True) -> ImageTextEncoder:
        """Always eval: the scorers are fixed functions (no dropout, no patch dropout)."""
        return super().train(False)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def logit_scale(self) -> torch.Tensor:
        """The model's learned log temperature (``logit_scale.exp()`` multiplies the cosines in training)."""
        raise NotImplementedError

    @property
    def embed_dim(self) -> int:
        """Size of the joint embedding (from one dummy image)."""
        if not hasattr(self, "_embed_dim"):
            with torch.no_grad():
                dummy = torch.zeros(1, 3, *self.image_size, dtype=self.dtype, device=self.device)
                self._embed_dim = int(self.image_features(dummy).shape[-1])
        return self._embed_dim

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> normalised (B, 3, *image_size) in the model's dtype (differentiable)."""
        images = fit_to_model(
            images.to(self.dtype), self.image_size, self.resize, self.resize_mode, self.interpolation
        )
        return clip_preprocess(images, self.image_size, self.mean, self.std)

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Raw (unnormalised) image features of preprocessed pixels."""
        raise NotImplementedError

    def text_features(self, texts: list[str]) -> torch.Tensor:
        """Raw (unnormalised) text features."""
        raise NotImplementedError

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> (B, D) unit-norm embeddings, differentiable in the pixels."""
        return F.normalize(self.image_features(self.preprocess(images)), dim=-1)

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Strings -> (B, D) unit-norm embeddings (no gradient: texts are discrete)."""
        with torch.no_grad():
            return F.normalize(self.text_features(list(texts)), dim=-1)

    def cosine(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """(B,) cosine similarity of each image with its text; repeated texts are encoded once."""
        position = {text: i for i, text in enumerate(dict.fromkeys(texts))}
        text_emb = self.encode_texts(list(position))
        index = torch.tensor([position[t] for t in texts], device=text_emb.device)
        return (self.encode_images(images) * text_emb[index]).sum(-1)


def _create_open_clip(model: str, pretrained: str | None) -> nn.Module:
    """``open_clip.create_model`` with friendlier errors: missing files raise ``FileNotFoundError``; tags
    trained with QuickGELU (the OpenAI weights) get it (open_clip 3 only warns about the mismatch)."""
    import open_clip

    kwargs: dict[str, Any] = {}
    if model.startswith("local-dir:"):
        directory = Path(model[len("local-dir:") :]).expanduser()
        if not (directory / "open_clip_config.json").is_file():
            raise FileNotFoundError(
                f"open_clip model {model!r}: no open_clip_config.json in {str(directory)!r}"
            )
        model, pretrained = f"local-dir:{directory}", None
    elif model.startswith("hf-hub:"):
        pretrained = None  # the repository holds the weights
    elif pretrained:
        tag = open_clip.get_pretrained_cfg(model, pretrained)
        if tag:
            kwargs["force_quick_gelu"] = bool(tag.get("quick_gelu", False))
        else:  # not a known tag: a checkpoint file, local or on the hub
            pretrained = str(resolve_file(pretrained, f"open_clip checkpoint for {model!r}"))
    return open_clip.create_model(model, pretrained=pretrained, **kwargs)


class OpenCLIPEncoder(ImageTextEncoder):
    """A frozen open_clip model with its tokenizer and image preprocessing.

    ``model`` is an open_clip architecture name (``"ViT-L-14"``) with ``pretrained`` a tag (``"openai"``) or
    a checkpoint file (local path or hub file ``owner/repo/file``); or ``"local-dir:/path"`` /
    ``"hf-hub:org/repo"`` (config and weights from there; ``pretrained`` is ignored). An already-built
    open_clip model can be wrapped with :meth:`from_model`. Image size, mean, std, interpolation and resize
    mode come from the model's preprocess config (``open_clip.get_model_preprocess_cfg``).
    """

    def __init__(
        self,
        model: str | nn.Module = "ViT-B-32",
        pretrained: str | None = "openai",
        *,
        tokenizer: Callable[[list[str]], torch.Tensor] | None = None,
        device: str | torch.device | None = None,
    ):
        super().__init__()
        import open_clip

        if isinstance(model, str):
            name = model
            model = _create_open_clip(name, pretrained)
            if tokenizer is None:
                tokenizer = open_clip.get_tokenizer(name)
        elif tokenizer is None:
            raise ValueError("OpenCLIPEncoder: a model instance needs its tokenizer")
        self.model = self._freeze(model)
        self.tokenizer = tokenizer
        cfg = open_clip.get_model_preprocess_cfg(model)
        size = cfg.get("size") or getattr(model.visual, "image_size", None)
        if size is None:
            raise ValueError("OpenCLIPEncoder: the model declares no image size")
        self._set_pixels(
            crop=size,
            mean=cfg.get("mean") or OPENAI_CLIP_MEAN,
            std=cfg.get("std") or OPENAI_CLIP_STD,
            resize_mode=cfg.get("resize_mode", "shortest"),
            interpolation=cfg.get("interpolation", "bicubic"),
        )
        if device is not None:
            self.to(device)

    @classmethod
    def from_model(
        cls, model: nn.Module, tokenizer: Callable[[list[str]], torch.Tensor], **kwargs: Any
    ) -> OpenCLIPEncoder:
        """Wrap an already-built open_clip model (``encode_image``/``encode_text``) and its tokenizer."""
        return cls(model, tokenizer=tokenizer, **kwargs)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def text_features(self, texts: list[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(texts).to(self.device))


class _ImageTextReward(Reward):
    """Shared by the prompt-following rewards: ``score = from_cosine(cos(E_image, E_prompt))``."""

    modality = "image"
    differentiable = True
    needs_prompts = True

    def __init__(
        self, encoder: ImageTextEncoder, *, batch_size: int = 32, device: str | torch.device | None = None
    ):
        super().__init__(batch_size=batch_size)
        self.encoder = encoder
        if device is not None:
            self.to(device)

    def texts_for(self, n: int, prompts: list[str] | None) -> list[str]:
        if prompts is None:
            raise ValueError(f"{type(self).__name__} needs one prompt per sample")
        return prompts

    def from_cosine(self, cosine: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def score(self, samples: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        return self.from_cosine(self.encoder.cosine(samples, self.texts_for(len(samples), prompts)))


class CLIPScore(_ImageTextReward):
    """CLIPScore: ``100 * cos(E_image, E_text)`` of a CLIP model (Hessel et al., 2021, arXiv:2104.08718).

    With ``clip_at_zero=True`` it is ``100 * max(cos, 0)``, torchmetrics' ``CLIPScore`` definition (the
    paper's ``w * max(cos, 0)`` with ``w = 100`` instead of 2.5). The text is each sample's prompt, or a
    fixed ``caption`` for every sample (then prompts are not needed, and ignored when given).
    ``encoder`` may be any :class:`ImageTextEncoder` (e.g. :class:`rewards.pickscore.HFCLIPEncoder` for the
    transformers checkpoints torchmetrics uses); otherwise an :class:`OpenCLIPEncoder` of ``model`` and
    ``pretrained`` is built.
    """

    scale = (
        "100 x cosine similarity of CLIP image and text embeddings, in [-100, 100] ([0, 100] with "
        "clip_at_zero); matching image/caption pairs typically score 20-40"
    )

    def __init__(
        self,
        model: str = "ViT-B-32",
        pretrained: str | None = "openai",
        *,
        caption: str | None = None,
        clip_at_zero: bool = False,
        encoder: ImageTextEncoder | None = None,
        batch_size: int = 32,
        device: str | torch.device | None = None,
    ):
        if caption is not None and not isinstance(caption, str):
            raise TypeError(f"caption must be a string, got {type(caption).__name__}")
        encoder = encoder if encoder is not None else OpenCLIPEncoder(model, pretrained)
        super().__init__(encoder, batch_size=batch_size, device=device)
        self.caption = caption
        self.clip_at_zero = clip_at_zero
        self.needs_prompts = caption is None

    def texts_for(self, n: int, prompts: list[str] | None) -> list[str]:
        return [self.caption] * n if self.caption is not None else super().texts_for(n, prompts)

    def from_cosine(self, cosine: torch.Tensor) -> torch.Tensor:
        return 100 * (cosine.clamp(min=0) if self.clip_at_zero else cosine)


class HPSv2(_ImageTextReward):
    """Human Preference Score v2 / v2.1 (Wu et al., 2023, arXiv:2306.09341; github.com/tgxs002/HPSv2).

    An open_clip ``architecture`` (ViT-H-14 for the released checkpoints) is built without weights and the
    HPS checkpoint loaded into it (``{"state_dict": ...}`` as HPS saves it, a bare state dict, or
    safetensors; a ``module.`` prefix is stripped). The score is ``cos(E_image, E_prompt)``: the diagonal of
    ``image_features @ text_features.T`` with normalised features, as ``hpsv2.score`` computes it (no
    logit scale). ``checkpoint`` defaults to the hub file of ``version`` ("2.1" or "2.0").
    """

    scale = (
        "cosine similarity of HPS image and prompt embeddings, in [-1, 1]; generated images score ~0.2-0.35"
    )

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        architecture: str = "ViT-H-14",
        *,
        version: str = "2.1",
        batch_size: int = 32,
        device: str | torch.device | None = None,
    ):
        import open_clip

        if checkpoint is None:
            if version not in HPSV2_CHECKPOINTS:
                raise ValueError(
                    f"unknown HPS version {version!r}; expected one of {sorted(HPSV2_CHECKPOINTS)}"
                )
            checkpoint = HPSV2_CHECKPOINTS[version]
        state = load_state_dict(checkpoint, "HPSv2 checkpoint")
        model = open_clip.create_model(architecture, pretrained=None)
        if "logit_scale" in state:  # stored as a 1-element tensor by some open_clip versions
            state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
        model.load_state_dict(state, strict=True)
        encoder = OpenCLIPEncoder.from_model(model, open_clip.get_tokenizer(architecture))
        super().__init__(encoder, batch_size=batch_size, device=device)

    def from_cosine(self, cosine: torch.Tensor) -> torch.Tensor:
        return cosine


_MLP_KEY = re.compile(r"layers\.(\d+)\.(weight|bias)")


def aesthetic_head(state: Mapping[str, torch.Tensor]) -> nn.Module:
    """The aesthetic head a state dict describes, with the weights loaded.

    * keys ``weight``, ``bias``: the linear v1 predictor (LAION-AI/aesthetic-predictor,
      ``sa_0_4_vit_l_14_linear.pth``): ``Linear(D, 1)``;
    * keys ``layers.{i}.weight/bias``: the improved predictor's MLP (christophschuhmann/improved-aesthetic-
      predictor, ``sac+logos+ava1-l14-linearMSE.pth``): ``Linear(768, 1024), Dropout, Linear(1024, 128),
      Dropout, Linear(128, 64), Dropout, Linear(64, 16), Linear(16, 1)``, Linears at indices 0, 2, 4, 6, 7,
      no activations. Layer sizes are read from the weights.
    """
    state = {key: value.float() for key, value in state.items()}
    if set(state) == {"weight", "bias"}:
        head: nn.Module = nn.Linear(state["weight"].shape[1], state["weight"].shape[0])
        out_features = state["weight"].shape[0]
    else:
        matches = [_MLP_KEY.fullmatch(key) for key in state]
        if not state or not all(matches):
            raise ValueError(
                "aesthetic head: expected keys 'weight'/'bias' (linear head) or 'layers.<i>.weight'/'bias' "
                f"(MLP head), got {sorted(state)[:8]}"
            )
        indices = sorted({int(m.group(1)) for m in matches if m is not None})
        modules: list[nn.Module] = []
        for i in range(indices[-1] + 1):
            if i in indices:
                weight = state[f"layers.{i}.weight"]
                modules.append(nn.Linear(weight.shape[1], weight.shape[0]))
            else:
                modules.append(nn.Dropout(0.0))  # the predictor's dropouts; inactive at inference
        head = nn.Sequential()
        head.add_module("layers", nn.Sequential(*modules))
        out_features = state[f"layers.{indices[-1]}.weight"].shape[0]
    if out_features != 1:
        raise ValueError(f"aesthetic head must output one number, its last layer has {out_features} outputs")
    head.load_state_dict(state, strict=True)
    return head.eval().requires_grad_(False)


class AestheticScore(Reward):
    """LAION aesthetic predictor: a head on the L2-normalised CLIP image embedding, predicting the AVA rating.

    ``score = head(E_image / |E_image|)`` with ``E_image`` from CLIP ViT-L/14 (OpenAI weights), as in
    christophschuhmann/improved-aesthetic-predictor (``simple_inference.py``) and TRL's DDPO
    ``aesthetic_scorer``. ``head`` is a ``.pth`` (raw state dict) or ``.safetensors`` file, local or a hub
    file ``owner/repo/file``; both the improved MLP head and the original linear head are recognised from
    their keys (see :func:`aesthetic_head`). Its input size must match the encoder's embedding size.
    """

    modality = "image"
    differentiable = True
    needs_prompts = False
    scale = "predicted AVA mean aesthetic rating, nominally 1-10 (most images score 4-7)"

    def __init__(
        self,
        head: str | Path = AESTHETIC_HEAD,
        model: str = "ViT-L-14",
        pretrained: str | None = "openai",
        *,
        encoder: ImageTextEncoder | None = None,
        batch_size: int = 32,
        device: str | torch.device | None = None,
    ):
        super().__init__(batch_size=batch_size)
        self.head = aesthetic_head(load_state_dict(head, "aesthetic predictor head"))
        self.encoder = encoder if encoder is not None else OpenCLIPEncoder(model, pretrained)
        in_features = next(m for m in self.head.modules() if isinstance(m, nn.Linear)).in_features
        if in_features != self.encoder.embed_dim:
            raise ValueError(
                f"aesthetic head takes {in_features}-dim embeddings but the CLIP encoder makes "
                f"{self.encoder.embed_dim}-dim ones (the released heads need ViT-L/14)"
            )
        if device is not None:
            self.to(device)

    def train(self, mode: bool = True) -> AestheticScore:
        """Always eval (the MLP head has dropout layers)."""
        return super().train(False)

    def score(self, samples: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        embedding = self.encoder.encode_images(samples)
        return self.head(embedding.to(next(self.head.parameters()).dtype)).squeeze(-1)
