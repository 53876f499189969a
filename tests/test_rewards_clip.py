"""CLIPScore, AestheticScore, HPSv2 and PickScore on tiny CLIP models trained in code (tests/tiny_clip.py).

Every reward is loaded through its public constructor from files in the public formats (open_clip
``local-dir:`` folders and checkpoint files, transformers ``save_pretrained`` folders, aesthetic heads as
``.pth`` and ``.safetensors``) and checked against a manual computation with the library's own
preprocessing, for ranking on the colour task the towers were trained on, and with ``gradcheck``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from threads import one_thread
from tiny_clip import (
    CAPTIONS,
    COLOURS,
    EMBED_DIM,
    register_open_clip_architecture,
    save_open_clip,
    solid,
    trained_hf_clip,
    trained_open_clip,
)

from rewards.base import Reward
from rewards.clip import (
    AestheticScore,
    CLIPScore,
    HPSv2,
    ImageTextEncoder,
    OpenCLIPEncoder,
    _create_open_clip,
    load_state_dict,
)
from rewards.pickscore import HFCLIPEncoder, PickScore

CUSTOM_MEAN, CUSTOM_STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


@dataclass
class TinyCLIPs:
    root: Path
    local_dir: str  # "local-dir:..." with OpenAI mean/std (what the model was trained with)
    custom_dir: str  # same weights, a different mean/std in preprocess_cfg
    arch: str  # the architecture registered with open_clip.add_model_config
    checkpoint: Path  # {"state_dict": ...} as HPS saves it
    hf_dir: Path


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyCLIPs:
    root = tmp_path_factory.mktemp("tiny_clip")
    with one_thread():
        model, accuracy = trained_open_clip()
        assert accuracy == 1.0
        hf_accuracy = trained_hf_clip(root / "hf")
        assert hf_accuracy == 1.0
    local = save_open_clip(model, root / "open_clip")
    custom = save_open_clip(model, root / "open_clip_custom", mean=CUSTOM_MEAN, std=CUSTOM_STD)
    arch = register_open_clip_architecture(root / "configs", "dsample-tiny-clip")
    state = model.state_dict()
    torch.save({"state_dict": state}, root / "hps.pt")
    return TinyCLIPs(root, f"local-dir:{local}", f"local-dir:{custom}", arch, root / "hps.pt", root / "hf")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_pils(n: int, size: tuple[int, int], seed: int = 0) -> list[Image.Image]:
    """Textured RGB images (uniform images would hide resize differences), ``size`` = (H, W)."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)) for _ in range(n)]


def colour_scores(reward: Reward) -> torch.Tensor:
    """(colours, captions) matrix of scores of each solid colour image with each caption."""
    rows = []
    for name in COLOURS:
        images = solid(name).expand(len(CAPTIONS), -1, -1, -1)
        rows.append(reward(images, CAPTIONS))
    return torch.stack(rows)


def open_clip_cosine(
    model_name: str, pils: list[Image.Image], prompts: list[str], state=None
) -> torch.Tensor:
    """Reference: open_clip's own PIL preprocessing and ``encode_image``/``encode_text``; diagonal cosines."""
    model, _, preprocess = open_clip.create_model_and_transforms(model_name)
    if state is not None:
        model.load_state_dict(state)
    tokenizer = open_clip.get_tokenizer(model_name)
    with torch.no_grad():
        image = F.normalize(model.eval().encode_image(torch.stack([preprocess(p) for p in pils])), dim=-1)
        text = F.normalize(model.encode_text(tokenizer(prompts)), dim=-1)
    return torch.diagonal(image @ text.T)


# --------------------------------------------------------------------------------------------- CLIPScore


def test_clipscore_ranks_matching_caption(tiny: TinyCLIPs):
    scores = colour_scores(CLIPScore(tiny.local_dir))
    assert torch.equal(scores.argmax(1), torch.arange(len(COLOURS))), scores
    assert (scores.diagonal() > 40).all()


@pytest.mark.parametrize("size, rtol", [((32, 32), 1e-4), ((48, 40), 3e-2)])
def test_clipscore_matches_open_clip(tiny: TinyCLIPs, size, rtol):
    pils, prompts = random_pils(3, size), ["a red image", "a blue image", "a green image"]
    reward = CLIPScore(tiny.custom_dir)
    assert reward.encoder.mean == CUSTOM_MEAN and reward.encoder.std == CUSTOM_STD
    expected = 100 * open_clip_cosine(tiny.custom_dir, pils, prompts)
    torch.testing.assert_close(reward(pils, prompts), expected, rtol=rtol, atol=rtol * 10)


def test_clipscore_clip_at_zero_and_fixed_caption(tiny: TinyCLIPs):
    images = torch.cat([solid(name) for name in COLOURS])
    plain = CLIPScore(tiny.local_dir)(images, ["a red image"] * 3)
    assert (plain < 0).any()  # green and blue images against "a red image"
    clipped = CLIPScore(tiny.local_dir, clip_at_zero=True)(images, ["a red image"] * 3)
    torch.testing.assert_close(clipped, plain.clamp(min=0))
    fixed = CLIPScore(tiny.local_dir, caption="a red image")
    assert not fixed.needs_prompts and CLIPScore.needs_prompts
    torch.testing.assert_close(fixed(images), plain)


def test_clipscore_from_checkpoint_files(tiny: TinyCLIPs):
    """Architecture name + ``pretrained`` = a checkpoint file (torch or safetensors) loads the same model."""
    images, prompts = torch.rand(2, 3, 32, 32), ["a red image", "a green image"]
    expected = CLIPScore(tiny.local_dir)(images, prompts)
    save_file(load_state_dict(tiny.checkpoint), str(tiny.root / "weights.safetensors"))
    for path in (tiny.checkpoint, tiny.root / "weights.safetensors"):
        torch.testing.assert_close(CLIPScore(tiny.arch, pretrained=str(path))(images, prompts), expected)


@pytest.mark.parametrize(
    "model, tag, quick_gelu", [("ViT-L-14", "openai", True), ("ViT-H-14", "laion2b_s32b_b79k", False)]
)
def test_open_clip_tags_get_their_activation(monkeypatch, model, tag, quick_gelu):
    """OpenAI weights were trained with QuickGELU; open_clip 3 builds "ViT-L-14" with GELU and only warns."""
    calls = []
    monkeypatch.setattr(open_clip, "create_model", lambda *args, **kwargs: calls.append((args, kwargs)))
    _create_open_clip(model, tag)
    assert calls == [((model,), {"pretrained": tag, "force_quick_gelu": quick_gelu})]


def test_open_clip_encoder(tiny: TinyCLIPs):
    encoder = OpenCLIPEncoder(tiny.local_dir)
    images = torch.rand(2, 3, 40, 36, requires_grad=True)
    image_emb, text_emb = encoder.encode_images(images), encoder.encode_texts(CAPTIONS)
    assert image_emb.shape == (2, EMBED_DIM) and text_emb.shape == (3, EMBED_DIM)
    torch.testing.assert_close(image_emb.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(text_emb.norm(dim=-1), torch.ones(3))
    image_emb.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in encoder.parameters())
    assert encoder.embed_dim == EMBED_DIM and encoder.image_size == (32, 32)
    assert torch.isclose(encoder.logit_scale.exp(), encoder.model.logit_scale.exp())
    encoder.train()
    assert not encoder.model.training
    wrapped = OpenCLIPEncoder.from_model(encoder.model, encoder.tokenizer)
    torch.testing.assert_close(wrapped.encode_images(images.detach()), image_emb.detach())


# --------------------------------------------------------------------------------------------- PickScore


def test_pickscore_ranks_matching_caption(tiny: TinyCLIPs):
    scores = colour_scores(PickScore(tiny.hf_dir, tiny.hf_dir))
    assert torch.equal(scores.argmax(1), torch.arange(len(COLOURS))), scores


@pytest.mark.parametrize("size, rtol", [((32, 32), 1e-4), ((48, 40), 3e-2)])
def test_pickscore_matches_transformers(tiny: TinyCLIPs, size, rtol):
    from transformers import AutoProcessor, CLIPModel

    pils, prompts = random_pils(3, size, seed=1), ["a red image", "a blue image", "a very green image"]
    processor, model = AutoProcessor.from_pretrained(tiny.hf_dir), CLIPModel.from_pretrained(tiny.hf_dir)
    with torch.no_grad():
        image = model.get_image_features(**processor(images=pils, return_tensors="pt")).pooler_output
        tokens = processor(text=prompts, padding=True, truncation=True, max_length=16, return_tensors="pt")
        text = model.get_text_features(**tokens).pooler_output
        cosine = (F.normalize(image, dim=-1) * F.normalize(text, dim=-1)).sum(-1)
        expected = model.logit_scale.exp() * cosine
    reward = PickScore(tiny.hf_dir, tiny.hf_dir)
    torch.testing.assert_close(reward(pils, prompts), expected, rtol=rtol, atol=rtol)
    # the same encoder serves CLIPScore: 100 * cos
    clip_score = CLIPScore(encoder=HFCLIPEncoder(tiny.hf_dir))
    torch.testing.assert_close(clip_score(pils, prompts), 100 * cosine, rtol=rtol, atol=rtol * 10)


@pytest.mark.parametrize("resample, shortest_edge", [(3, 40), (2, 32), (2, 44)])
def test_hf_encoder_follows_processor_resize(tiny: TinyCLIPs, resample, shortest_edge):
    """Resize-then-crop (shortest edge != crop size) and bilinear processors, on a 48x40 image."""
    from transformers import AutoProcessor, CLIPModel

    processor, model = AutoProcessor.from_pretrained(tiny.hf_dir), CLIPModel.from_pretrained(tiny.hf_dir)
    processor.image_processor.size = {"shortest_edge": shortest_edge}
    processor.image_processor.resample = resample
    pils, prompts = random_pils(3, (48, 40), seed=6), ["a red image", "a blue image", "a green image"]
    with torch.no_grad():
        image = model.get_image_features(**processor(images=pils, return_tensors="pt")).pooler_output
        text = model.get_text_features(
            **processor(text=prompts, padding=True, return_tensors="pt")
        ).pooler_output
        expected = 100 * (F.normalize(image, dim=-1) * F.normalize(text, dim=-1)).sum(-1)
    encoder = HFCLIPEncoder(model, processor)
    assert encoder.resize == (shortest_edge, shortest_edge) and encoder.image_size == (32, 32)
    torch.testing.assert_close(CLIPScore(encoder=encoder)(pils, prompts), expected, rtol=3e-2, atol=0.5)


# ------------------------------------------------------------------------------------------------- HPSv2


def test_hpsv2_loads_checkpoints_and_matches_manual(tiny: TinyCLIPs):
    state = torch.load(tiny.checkpoint, weights_only=True)["state_dict"]
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tiny.root / "hps_ddp.pt")
    save_file(state, str(tiny.root / "hps.safetensors"))
    pils, prompts = random_pils(2, (32, 32), seed=2), ["a green image", "a blue image"]
    expected = open_clip_cosine(tiny.arch, pils, prompts, state=state)
    for checkpoint in ("hps.pt", "hps_ddp.pt", "hps.safetensors"):
        reward = HPSv2(tiny.root / checkpoint, architecture=tiny.arch)
        torch.testing.assert_close(reward(pils, prompts), expected, rtol=1e-4, atol=1e-5)
    scores = colour_scores(reward)
    assert torch.equal(scores.argmax(1), torch.arange(len(COLOURS))), scores
    assert (scores.abs() <= 1).all()


# ---------------------------------------------------------------------------------------- AestheticScore


def aesthetic_head_state(kind: str, generator: torch.Generator) -> tuple[dict, Callable]:
    """A head whose output is known in closed form: (state dict, embedding -> expected score)."""
    if kind == "linear":
        w = F.normalize(torch.randn(EMBED_DIM, generator=generator), dim=0)
        return {"weight": w[None].clone(), "bias": torch.tensor([5.0])}, lambda e: e @ w + 5.0
    # the improved predictor's layout: Linears at 0, 2, 4, 6, 7 (D -> 1024 -> 128 -> 64 -> 16 -> 1),
    # identity blocks passing the first 16 embedding coordinates through to the last layer
    sizes = [(1024, EMBED_DIM), (128, 1024), (64, 128), (16, 64)]
    state = {}
    for index, (out, inp) in zip((0, 2, 4, 6), sizes):
        state[f"layers.{index}.weight"] = torch.eye(out, inp)
        state[f"layers.{index}.bias"] = torch.zeros(out)
    v = torch.randn(16, generator=generator)
    state["layers.7.weight"], state["layers.7.bias"] = v[None].clone(), torch.tensor([4.5])
    return state, lambda e: e[:, :16] @ v + 4.5


@pytest.mark.parametrize("kind", ["linear", "mlp"])
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_aesthetic_score_closed_form(tiny: TinyCLIPs, kind, suffix):
    state, closed_form = aesthetic_head_state(kind, torch.Generator().manual_seed(3))
    path = tiny.root / f"aesthetic_{kind}{suffix}"
    if suffix == ".pth":
        torch.save(state, path)
    else:
        save_file(state, str(path))
    reward = AestheticScore(path, encoder=OpenCLIPEncoder(tiny.custom_dir))
    assert not reward.needs_prompts
    pils = random_pils(3, (32, 32), seed=4)
    model, _, preprocess = open_clip.create_model_and_transforms(tiny.custom_dir)
    with torch.no_grad():
        embedding = F.normalize(model.encode_image(torch.stack([preprocess(p) for p in pils])), dim=-1)
    reward.train()  # stays in eval: the MLP's dropouts must not fire
    torch.testing.assert_close(reward(pils), closed_form(embedding), rtol=1e-4, atol=1e-4)


def test_aesthetic_head_errors(tiny: TinyCLIPs):
    encoder = OpenCLIPEncoder(tiny.local_dir)
    torch.save({"weight": torch.randn(1, 768), "bias": torch.zeros(1)}, tiny.root / "l14_head.pth")
    with pytest.raises(ValueError, match="768-dim"):
        AestheticScore(tiny.root / "l14_head.pth", encoder=encoder)
    torch.save({"fc.weight": torch.randn(1, EMBED_DIM)}, tiny.root / "odd_head.pth")
    with pytest.raises(ValueError, match="expected keys"):
        AestheticScore(tiny.root / "odd_head.pth", encoder=encoder)
    torch.save([1, 2, 3], tiny.root / "not_a_state_dict.pth")
    with pytest.raises(ValueError, match="does not hold a state dict"):
        AestheticScore(tiny.root / "not_a_state_dict.pth", encoder=encoder)


# --------------------------------------------------------------------------------------- shared behaviour


def make_reward(name: str, tiny: TinyCLIPs) -> Reward:
    if name == "clipscore":
        return CLIPScore(tiny.local_dir)
    if name == "aesthetic":
        state, _ = aesthetic_head_state("mlp", torch.Generator().manual_seed(5))
        torch.save(state, tiny.root / "gradcheck_head.pth")
        return AestheticScore(tiny.root / "gradcheck_head.pth", encoder=OpenCLIPEncoder(tiny.local_dir))
    if name == "pickscore":
        return PickScore(tiny.hf_dir, tiny.hf_dir)
    return HPSv2(tiny.checkpoint, architecture=tiny.arch)


@pytest.mark.parametrize("name", ["clipscore", "aesthetic", "pickscore", "hpsv2"])
def test_gradcheck(tiny: TinyCLIPs, name):
    """Exact gradients in the pixels, through the resize (8x8 -> 32x32) and both towers, in float64."""
    reward = make_reward(name, tiny).double()
    assert reward.differentiable
    x = (0.3 + 0.4 * torch.rand(1, 3, 8, 8, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: reward(x, ["a red image"]), (x,), eps=1e-6, atol=1e-5)
    reward(x, ["a red image"]).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["clipscore", "pickscore", "hpsv2"])
def test_missing_prompts(tiny: TinyCLIPs, name):
    reward = make_reward(name, tiny)
    with pytest.raises(ValueError, match="prompt"):
        reward(torch.rand(2, 3, 32, 32))


def test_missing_files(tiny: TinyCLIPs, tmp_path: Path):
    encoder = OpenCLIPEncoder(tiny.local_dir)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        HPSv2(tmp_path / "missing.pt", architecture=tiny.arch)
    with pytest.raises(FileNotFoundError, match="aesthetic predictor head"):
        AestheticScore(tmp_path / "head.pth", encoder=encoder)
    with pytest.raises(FileNotFoundError, match="open_clip checkpoint"):
        CLIPScore(tiny.arch, pretrained=str(tmp_path / "weights.safetensors"))
    with pytest.raises(FileNotFoundError, match="open_clip_config.json"):
        CLIPScore(f"local-dir:{tmp_path}")
    with pytest.raises(FileNotFoundError, match="CLIP model"):
        PickScore(tmp_path / "no_such_model", tiny.hf_dir)
    with pytest.raises(FileNotFoundError, match="CLIP processor"):
        HFCLIPEncoder(tiny.hf_dir, tmp_path / "no_such_processor")


def test_encoders_are_image_text_encoders(tiny: TinyCLIPs):
    assert isinstance(OpenCLIPEncoder(tiny.local_dir), ImageTextEncoder)
    hf = HFCLIPEncoder(tiny.hf_dir)
    assert isinstance(hf, ImageTextEncoder) and hf.image_size == (32, 32) and hf.max_length == 16


def test_video_rewards_on_the_tiny_clip(tiny: TinyCLIPs):
    """Temporal consistency with a real open_clip encoder: 1 for a still video, lower when colours flip; a
    per-frame CLIPScore ranks the caption of the video's colour first."""
    from rewards.video import FrameAggregate, TemporalConsistency

    red, green = solid("red")[0], solid("green")[0]
    still, flipping = torch.stack([red] * 4), torch.stack([red, green, red, green])
    consistency = TemporalConsistency(OpenCLIPEncoder(tiny.local_dir))(torch.stack([still, flipping]))
    assert abs(consistency[0].item() - 1) < 1e-5 and consistency[1] < consistency[0] - 0.05
    per_frame = FrameAggregate(CLIPScore(tiny.local_dir), "mean")
    videos = torch.stack([still, still])
    scores = per_frame(videos, ["a red image", "a green image"])
    assert scores[0] > scores[1]
