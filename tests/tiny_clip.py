"""Tiny CLIP models (open_clip and transformers) that learn in seconds to tell red, green and blue apart.

Both kinds are built in code (32x32 images, 8x8 patches, width 32, one layer per tower) with the real CLIP
BPE tokenizer: open_clip's bundled ``bpe_simple_vocab_16e6.txt.gz``, converted to ``vocab.json`` +
``merges.txt`` for transformers' ``CLIPTokenizer`` (the same files the released HF CLIP checkpoints ship),
so nothing is downloaded. :func:`train_contrastive` gives the towers a shared meaning: a few hundred Adam
steps (fixed seed, ~2 s on CPU) of a CLIP-style cross-entropy between solid-colour images with jittered
shades and the captions ``"a red image"``, ``"a green image"``, ``"a blue image"``.

Savers write the public formats the reward constructors read: an open_clip ``local-dir:`` folder
(``open_clip_config.json`` with ``model_cfg`` and ``preprocess_cfg``, plus ``open_clip_model.safetensors``,
the names ``open_clip.factory`` looks for) and transformers ``save_pretrained`` folders of model and
processor.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from rewards.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, clip_preprocess

IMAGE_SIZE = 32
CONTEXT_LENGTH = 16
EMBED_DIM = 32
COLOURS = {"red": (0.85, 0.15, 0.1), "green": (0.15, 0.75, 0.2), "blue": (0.1, 0.2, 0.85)}
CAPTIONS = [f"a {name} image" for name in COLOURS]

#: open_clip architecture config of the tiny model (``open_clip.CLIP(**OPEN_CLIP_CFG)``)
OPEN_CLIP_CFG = {
    "embed_dim": EMBED_DIM,
    "vision_cfg": {"image_size": IMAGE_SIZE, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": CONTEXT_LENGTH, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def solid(name: str, size: int | tuple[int, int] = IMAGE_SIZE) -> torch.Tensor:
    """A (1, 3, H, W) image of one of :data:`COLOURS`."""
    height, width = (size, size) if isinstance(size, int) else size
    return torch.tensor(COLOURS[name]).view(1, 3, 1, 1).expand(1, 3, height, width).clone()


def colour_batch(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` solid-colour images (shades jittered by up to +-0.15 per channel, plus pixel noise), labels."""
    labels = torch.randint(len(COLOURS), (n,), generator=generator)
    base = torch.tensor(list(COLOURS.values()))[labels].view(n, 3, 1, 1)
    shade = 0.3 * (torch.rand(n, 3, 1, 1, generator=generator) - 0.5)
    noise = 0.05 * torch.randn(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    return (base + shade + noise).clamp(0, 1), labels


def train_contrastive(
    encode_images: Callable[[torch.Tensor], torch.Tensor],
    encode_texts: Callable[[list[str]], torch.Tensor],
    logit_scale: torch.Tensor,
    parameters: Iterable[nn.Parameter],
    *,
    steps: int = 150,
    batch: int = 24,
    lr: float = 3e-3,
    seed: int = 0,
) -> float:
    """Train any two-tower model on the colour task; returns the final accuracy on a fresh batch.

    ``encode_images`` maps (B, 3, 32, 32) pixels in [0, 1] to raw features, ``encode_texts`` strings to raw
    features; the loss is cross-entropy of ``logit_scale.exp() * cos`` against the three captions.
    Parameters with ``requires_grad=False`` (e.g. a frozen token embedding) are left out.
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam([p for p in parameters if p.requires_grad], lr=lr)

    def logits(images: torch.Tensor) -> torch.Tensor:
        image_emb = F.normalize(encode_images(images), dim=-1)
        text_emb = F.normalize(encode_texts(CAPTIONS), dim=-1)
        return logit_scale.exp() * image_emb @ text_emb.T

    for _ in range(steps):
        images, labels = colour_batch(batch, generator)
        loss = F.cross_entropy(logits(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        images, labels = colour_batch(64, generator)
        return float((logits(images).argmax(-1) == labels).float().mean())


def _normalise(images: torch.Tensor) -> torch.Tensor:
    return clip_preprocess(images, IMAGE_SIZE, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)


def trained_open_clip(seed: int = 0) -> tuple[nn.Module, float]:
    """A tiny ``open_clip.CLIP`` trained on the colour task (eval mode) and its accuracy."""
    import open_clip

    tokenizer = open_clip.SimpleTokenizer(context_length=CONTEXT_LENGTH)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = open_clip.CLIP(**OPEN_CLIP_CFG)
        model.token_embedding.requires_grad_(False)  # 49408 x 32: random rows suffice, and Adam on it is slow
        accuracy = train_contrastive(
            lambda x: model.encode_image(_normalise(x)),
            lambda texts: model.encode_text(tokenizer(texts)),
            model.logit_scale,
            model.parameters(),
            seed=seed,
        )
    return model.eval(), accuracy


def save_open_clip(
    model: nn.Module,
    directory: Path,
    *,
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
) -> Path:
    """An open_clip ``local-dir:`` folder: ``open_clip_config.json`` + ``open_clip_model.safetensors``."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "model_cfg": OPEN_CLIP_CFG,
        "preprocess_cfg": {"mean": list(mean), "std": list(std), "interpolation": "bicubic"},
    }
    (directory / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(directory / "open_clip_model.safetensors"),
    )
    return directory


def register_open_clip_architecture(directory: Path, name: str) -> str:
    """Register :data:`OPEN_CLIP_CFG` as open_clip architecture ``name`` (``open_clip.add_model_config``)."""
    import open_clip

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    path.write_text(json.dumps(OPEN_CLIP_CFG))
    open_clip.add_model_config(path)
    return name


def write_clip_bpe(directory: Path) -> tuple[Path, Path]:
    """``vocab.json`` + ``merges.txt`` of the CLIP BPE, converted from open_clip's bundled vocabulary
    (the construction of ``open_clip.tokenizer.SimpleTokenizer``: 256 byte symbols, the same with ``</w>``,
    the first 48894 merges, then the two special tokens: 49408 entries)."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    directory.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file = directory / "vocab.json", directory / "merges.txt"
    vocab_file.write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return vocab_file, merges_file


def trained_hf_clip(directory: Path, seed: int = 0) -> float:
    """A tiny transformers ``CLIPModel`` + ``CLIPProcessor`` trained on the colour task, saved with
    ``save_pretrained`` in ``directory``; returns the accuracy."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    vocab_file, merges_file = write_clip_bpe(directory / "bpe")
    tokenizer = CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=CONTEXT_LENGTH)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    config = CLIPConfig(
        text_config={
            "vocab_size": 49408,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": CONTEXT_LENGTH,
            "bos_token_id": 49406,
            "eos_token_id": 49407,
            "pad_token_id": 49407,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": IMAGE_SIZE,
            "patch_size": 8,
        },
        projection_dim=EMBED_DIM,
    )

    def encode_texts(texts: list[str]) -> torch.Tensor:
        tokens = tokenizer(texts, padding=True, return_tensors="pt")
        return model.get_text_features(**tokens).pooler_output

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = CLIPModel(config)
        model.text_model.embeddings.token_embedding.requires_grad_(False)  # as for open_clip
        accuracy = train_contrastive(
            lambda x: model.get_image_features(pixel_values=_normalise(x)).pooler_output,
            encode_texts,
            model.logit_scale,
            model.parameters(),
            seed=seed,
        )
    model.eval().save_pretrained(str(directory))
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(str(directory))
    return accuracy
