"""Real diffusers pipelines built from tiny, randomly initialised components, entirely offline.

Every factory builds the actual diffusers pipeline class (``StableDiffusionPipeline``, ``FluxPipeline``, ...)
with the component *types* and the scheduler configuration of the released checkpoint, but with networks of
10^4-10^5 parameters and tokenizers built in code (``tokenizers`` WordLevel model over a small vocabulary
plus a Whitespace pre-tokenizer, wrapped as ``transformers.PreTrainedTokenizerFast``). Nothing is downloaded.
Weights are drawn under a fixed torch seed inside :func:`torch.random.fork_rng`, so a factory always returns
the same pipeline and never disturbs the caller's global RNG.

The pipelines run on CPU in float32 with the progress bar disabled; ``pipe(**CALL_KWARGS[name],
num_inference_steps=4, generator=...)`` generates in ~0.1 s (inside :func:`threads.one_thread`). Outputs are
noise (the weights are random) but every code path of the real pipeline runs: prompt encoding with
classifier-free guidance, the scheduler's ``set_timesteps``/``step`` protocol, latent packing/patching and VAE
decoding.

Scheduler protocol of each pipeline (diffusers 0.42; what a replacement scheduler must provide):

* all: ``retrieve_timesteps`` (Wan: a direct call) runs ``set_timesteps(num_inference_steps, device=...,
  **kw)``, or ``set_timesteps(sigmas=..., device=..., **kw)`` / ``set_timesteps(timesteps=..., ...)`` when
  custom values are given (a ValueError unless ``inspect.signature(set_timesteps)`` names them), then reads
  ``scheduler.timesteps`` and loops over it: one ``scheduler.step(model_output, t, latents, ...,
  return_dict=False)[0]`` per entry (``t`` is that entry). ``scheduler.order`` is a required attribute
  (warm-up/progress-bar bookkeeping only). ``scheduler.config`` must support attribute access and ``.get``.
* SD: ``latents *= init_noise_sigma``; ``scale_model_input(x, t)`` if it exists; ``step`` also gets ``eta``
  and ``generator`` if (and only if) its signature names them. ``__init__`` rewrites a scheduler config with
  ``steps_offset != 1`` or ``clip_sample=True`` (assigning ``pipe.scheduler`` later does not).
* SDXL: as SD, but ``scale_model_input`` is called unconditionally, ``set_begin_index(0)`` if it exists, and
  ``config.num_train_timesteps`` is read for ``denoising_end``.
* SD3: no ``init_noise_sigma``/``scale_model_input``/``set_begin_index``; ``set_timesteps(N, device=...)``
  plus ``mu=`` only if ``config.get("use_dynamic_shifting")`` or the caller passes ``mu``; the transformer
  gets ``t`` (0..1000 scale); ``step`` gets no generator.
* Flux: ``set_timesteps(sigmas=np.linspace(1, 1/N, N), device=..., mu=mu)`` -- no ``num_inference_steps``;
  ``sigmas`` becomes None (so ``set_timesteps(N, device=..., mu=mu)``) if ``config.use_flow_sigmas`` is
  truthy; ``mu`` is always passed (from ``config.get`` of base/max_image_seq_len and base/max_shift and the
  packed token count); ``set_begin_index(0)`` unconditionally; the transformer gets ``t / 1000``; ``step``
  gets no generator.
* Wan: ``set_timesteps(N, device=device)``; ``set_begin_index(0)`` unconditionally; ``float(sigmas[i])`` is
  read every step (cache context), ``config.num_train_timesteps`` only with a ``boundary_ratio``; the
  transformer gets ``t``; ``step`` gets no generator.
* CogVideoX: ``set_timesteps(N, device=...)``; ``latents *= init_noise_sigma``; ``scale_model_input(x, t)``
  unconditionally; the transformer gets ``t`` on (B, F', C, h, w) latents (CFG in one batched call);
  ``step`` gets ``eta``/``generator`` as SD (a ``CogVideoXDPMScheduler`` gets its own step signature).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from diffusers import (
    AnimateDiffPipeline,
    AutoencoderKL,
    AutoencoderKLCogVideoX,
    AutoencoderKLWan,
    CogVideoXDDIMScheduler,
    CogVideoXPipeline,
    CogVideoXTransformer3DModel,
    DDIMScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    MotionAdapter,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
    UniPCMultistepScheduler,
    WanPipeline,
    WanTransformer3DModel,
)
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    PreTrainedTokenizerFast,
    T5Config,
    T5EncoderModel,
    UMT5Config,
    UMT5EncoderModel,
)

SEED = 0
#: CLIP context length of the tiny CLIP tokenizers/encoders (77 in the released models).
CLIP_MAX_LENGTH = 16
#: ``max_sequence_length`` used for T5/UMT5 prompts (256/512 in the released pipelines).
T5_MAX_LENGTH = 16

WORDS = (
    "a an the of and with in on at to by for from is are this that photo picture painting drawing render "
    "image video cat dog bird horse fox astronaut robot car house tree forest mountain river sea sky city "
    "street garden red green blue yellow black white small big old young happy cute sunny snowy night day "
    "blurry noisy dark bright sharp detailed beautiful ugly monkey dance dancing running sitting cake sign "
    "hello world , ."
).split()

CLIP_SPECIALS = ("<|pad|>", "<|unk|>", "<|startoftext|>", "<|endoftext|>")  # ids 0..3
T5_SPECIALS = ("<pad>", "</s>", "<unk>")  # ids 0..2, T5's own convention


def _word_level(specials: tuple[str, ...], unk: str) -> Tokenizer:
    vocab = {tok: i for i, tok in enumerate((*specials, *WORDS))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


def clip_tokenizer(model_max_length: int = CLIP_MAX_LENGTH) -> PreTrainedTokenizerFast:
    """CLIP-like: ``<|startoftext|> words <|endoftext|>``, padded with a dedicated pad token to the right."""
    bos, eos = "<|startoftext|>", "<|endoftext|>"
    tok = _word_level(CLIP_SPECIALS, "<|unk|>")
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} $B {eos}",
        special_tokens=[(bos, tok.token_to_id(bos)), (eos, tok.token_to_id(eos))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        unk_token="<|unk|>",
        pad_token="<|pad|>",
        model_max_length=model_max_length,
        padding_side="right",
    )


def t5_tokenizer(model_max_length: int = T5_MAX_LENGTH) -> PreTrainedTokenizerFast:
    """T5-like: ``words </s>``, pad id 0, eos id 1, unk id 2, no bos."""
    tok = _word_level(T5_SPECIALS, "<unk>")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=model_max_length,
        padding_side="right",
    )


VOCAB_CLIP = len(CLIP_SPECIALS) + len(WORDS)
VOCAB_T5 = len(T5_SPECIALS) + len(WORDS)


def _clip_config(hidden: int = 32, projection_dim: int = 32) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=VOCAB_CLIP,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        projection_dim=projection_dim,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=CLIP_MAX_LENGTH,
        hidden_act="gelu",
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,  # != 2: pooled output taken at the first <|endoftext|>, as in current CLIP configs
    )


def _t5_config(cls: type = T5Config, d_model: int = 32) -> T5Config:
    return cls(
        vocab_size=VOCAB_T5,
        d_model=d_model,
        d_kv=8,
        d_ff=2 * d_model,
        num_layers=2,
        num_decoder_layers=0,
        num_heads=d_model // 8,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
        use_cache=False,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )


def _seeded(build: Callable[[], Any]) -> Any:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        return build()


def _vae(latent_channels: int, **kw: Any) -> AutoencoderKL:
    """2-level AutoencoderKL: spatial factor 2 (8 in the released VAEs)."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=32,
        **kw,
    )


def _sd_unet(down: tuple[str, str], up: tuple[str, str]) -> UNet2DConditionModel:
    """SD 1.x's UNet, tiny: 4 latent channels, 16x16 latents, CLIP cross-attention (dim 32)."""
    return _seeded(
        lambda: UNet2DConditionModel(
            sample_size=16,
            in_channels=4,
            out_channels=4,
            down_block_types=down,
            up_block_types=up,
            block_out_channels=(8, 16),
            layers_per_block=1,
            norm_num_groups=4,
            cross_attention_dim=32,
            attention_head_dim=2,
        )
    )


def _finish(pipe: Any) -> Any:
    pipe = pipe.to("cpu")  # components are created in float32 already
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --------------------------------------------------------------------------------------------- pipelines


def tiny_sd() -> StableDiffusionPipeline:
    """Stable Diffusion 1.x: UNet (epsilon) + CLIPTextModel, DDIM with SD's scaled-linear betas."""
    unet = _sd_unet(("DownBlock2D", "CrossAttnDownBlock2D"), ("CrossAttnUpBlock2D", "UpBlock2D"))
    vae = _seeded(lambda: _vae(4, scaling_factor=0.18215))
    text_encoder = _seeded(lambda: CLIPTextModel(_clip_config()))
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
        timestep_spacing="leading",
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return _finish(pipe)


def tiny_sdxl() -> StableDiffusionXLPipeline:
    """SDXL: text_time UNet, CLIPTextModel + CLIPTextModelWithProjection, Euler with SDXL's config."""
    addition_time_embed_dim, projection_dim = 8, 32
    unet = _seeded(
        lambda: UNet2DConditionModel(
            sample_size=16,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(8, 16),
            layers_per_block=1,
            norm_num_groups=4,
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            transformer_layers_per_block=(1, 2),
            cross_attention_dim=32 + 32,  # hidden sizes of text_encoder and text_encoder_2, concatenated
            addition_embed_type="text_time",
            addition_time_embed_dim=addition_time_embed_dim,
            # 6 add_time_ids (original size, crop top-left, target size) + pooled text_encoder_2 projection
            projection_class_embeddings_input_dim=6 * addition_time_embed_dim + projection_dim,
        )
    )
    vae = _seeded(lambda: _vae(4, scaling_factor=0.13025))
    text_encoder = _seeded(lambda: CLIPTextModel(_clip_config()))
    text_encoder_2 = _seeded(lambda: CLIPTextModelWithProjection(_clip_config(projection_dim=projection_dim)))
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        interpolation_type="linear",
        use_karras_sigmas=False,
        timestep_spacing="leading",
        steps_offset=1,
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        add_watermarker=False,
    )
    return _finish(pipe)


def tiny_sd3() -> StableDiffusion3Pipeline:
    """SD3: MMDiT + 2 CLIPTextModelWithProjection + T5, 16-channel VAE, FlowMatchEuler(shift=3)."""
    # CLIP hidden states 32 + 32 concatenated, zero-padded to T5's 96 (2048 -> 4096 in SD3)
    clip_hidden, clip_proj, t5_dim = 32, 32, 96
    transformer = _seeded(
        lambda: SD3Transformer2DModel(
            sample_size=16,
            patch_size=2,
            in_channels=16,
            out_channels=16,
            num_layers=1,
            attention_head_dim=8,
            num_attention_heads=2,
            joint_attention_dim=t5_dim,
            caption_projection_dim=16,  # = num_attention_heads * attention_head_dim
            pooled_projection_dim=2 * clip_proj,
            pos_embed_max_size=16,
        )
    )
    vae = _seeded(
        lambda: _vae(
            16, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035
        )
    )
    text_encoder = _seeded(lambda: CLIPTextModelWithProjection(_clip_config(clip_hidden, clip_proj)))
    text_encoder_2 = _seeded(lambda: CLIPTextModelWithProjection(_clip_config(clip_hidden, clip_proj)))
    text_encoder_3 = _seeded(lambda: T5EncoderModel(_t5_config(T5Config, t5_dim)))
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        text_encoder_2=text_encoder_2,
        tokenizer_2=clip_tokenizer(),
        text_encoder_3=text_encoder_3,
        tokenizer_3=t5_tokenizer(),
    )
    return _finish(pipe)


def tiny_flux() -> FluxPipeline:
    """FLUX.1-dev-like: guidance-embedded MMDiT on 2x2-packed 16-channel latents, CLIP pooled + T5."""
    clip_hidden, t5_dim = 32, 32
    transformer = _seeded(
        lambda: FluxTransformer2DModel(
            patch_size=1,
            in_channels=4 * 16,  # 16 latent channels packed 2x2
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=t5_dim,
            pooled_projection_dim=clip_hidden,
            guidance_embeds=True,
            axes_dims_rope=(4, 4, 8),  # sums to attention_head_dim
        )
    )
    vae = _seeded(
        lambda: _vae(
            16, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1159, scaling_factor=0.3611
        )
    )
    text_encoder = _seeded(lambda: CLIPTextModel(_clip_config(clip_hidden)))
    text_encoder_2 = _seeded(lambda: T5EncoderModel(_t5_config(T5Config, t5_dim)))
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        text_encoder_2=text_encoder_2,
        tokenizer_2=t5_tokenizer(),
        transformer=transformer,
    )
    return _finish(pipe)


def tiny_wan() -> WanPipeline:
    """Wan 2.1 T2V: 3D DiT + causal 3D VAE (4x temporal, 8x spatial) + UMT5, UniPC flow (shift 3)."""
    t5_dim = 32
    transformer = _seeded(
        lambda: WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=2,
            attention_head_dim=12,
            in_channels=16,
            out_channels=16,
            text_dim=t5_dim,
            freq_dim=32,
            ffn_dim=32,
            num_layers=1,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            rope_max_seq_len=32,
        )
    )
    vae = _seeded(
        lambda: AutoencoderKLWan(
            base_dim=3,
            z_dim=16,
            dim_mult=[1, 1, 1, 1],
            num_res_blocks=1,
            temperal_downsample=[False, True, True],
        )
    )
    text_encoder = _seeded(lambda: UMT5EncoderModel(_t5_config(UMT5Config, t5_dim)))
    scheduler = UniPCMultistepScheduler(
        num_train_timesteps=1000,
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=3.0,
        solver_order=2,
        solver_type="bh2",
        predict_x0=True,
        lower_order_final=True,
        final_sigmas_type="zero",
        timestep_spacing="linspace",
    )
    pipe = WanPipeline(
        tokenizer=t5_tokenizer(),
        text_encoder=text_encoder,
        vae=vae,
        scheduler=scheduler,
        transformer=transformer,
    )
    return _finish(pipe)


def tiny_animatediff() -> AnimateDiffPipeline:
    """AnimateDiff: SD 1.x's UNet (epsilon) + a motion adapter (temporal attention over the frames, as
    UNetMotionModel), latents (C, F, H/f, W/f), the VAE decoding frame by frame; DDIM as tiny SD."""
    # the motion adapter's block layout: cross-attention in the first down / last up block
    unet = _sd_unet(("CrossAttnDownBlock2D", "DownBlock2D"), ("UpBlock2D", "CrossAttnUpBlock2D"))
    motion = _seeded(
        lambda: MotionAdapter(
            block_out_channels=(8, 16),
            motion_layers_per_block=1,
            motion_norm_num_groups=4,
            motion_num_attention_heads=2,
            motion_max_seq_length=32,
        )
    )
    sd = tiny_sd()
    pipe = AnimateDiffPipeline(
        vae=_seeded(lambda: _vae(4, scaling_factor=0.18215)),
        text_encoder=sd.text_encoder,
        tokenizer=sd.tokenizer,
        unet=unet,
        motion_adapter=motion,
        scheduler=DDIMScheduler.from_config(sd.scheduler.config, beta_schedule="linear"),
    )
    return _finish(pipe)


def tiny_cogvideox() -> CogVideoXPipeline:
    """CogVideoX (1.0) T2V: 3D DiT on (F', C, H/8, W/8) latents with 3D rotary embeddings (as CogVideoX-5b)
    + causal 3D VAE (4x temporal, 8x spatial) + T5, CogVideoX-2b's DDIM (v-prediction, SNR shift 3, zero
    terminal SNR, trailing spacing)."""
    t5_dim = 32
    transformer = _seeded(
        lambda: CogVideoXTransformer3DModel(
            num_attention_heads=2,
            attention_head_dim=16,  # rotary: 4 (time) + 6 (height) + 6 (width)
            in_channels=4,
            out_channels=4,
            time_embed_dim=8,
            text_embed_dim=t5_dim,
            num_layers=1,
            sample_width=4,  # latent size: 32 px by default
            sample_height=4,
            sample_frames=9,  # (9 - 1) / 4 + 1 = 3 latent frames
            patch_size=2,
            temporal_compression_ratio=4,
            max_text_seq_length=T5_MAX_LENGTH,
            use_rotary_positional_embeddings=True,
        )
    )
    vae = _seeded(
        lambda: AutoencoderKLCogVideoX(
            in_channels=3,
            out_channels=3,
            down_block_types=("CogVideoXDownBlock3D",) * 4,
            up_block_types=("CogVideoXUpBlock3D",) * 4,
            block_out_channels=(8, 8, 8, 8),
            latent_channels=4,
            layers_per_block=1,
            norm_num_groups=2,
            temporal_compression_ratio=4,
            scaling_factor=1.15258426,
        )
    )
    text_encoder = _seeded(lambda: T5EncoderModel(_t5_config(T5Config, t5_dim)))
    scheduler = CogVideoXDDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=0,
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        snr_shift_scale=3.0,
        timestep_spacing="trailing",
    )
    pipe = CogVideoXPipeline(
        tokenizer=t5_tokenizer(),
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=scheduler,
    )
    return _finish(pipe)


PIPELINES: dict[str, Callable[[], Any]] = {
    "sd": tiny_sd,
    "sdxl": tiny_sdxl,
    "sd3": tiny_sd3,
    "flux": tiny_flux,
    "wan": tiny_wan,
    "cogvideox": tiny_cogvideox,
    "animatediff": tiny_animatediff,
}

PROMPT = "a photo of a cute cat"

#: Call kwargs (besides ``num_inference_steps`` and ``generator``) exercising classifier-free guidance.
_IMAGE = dict(prompt=PROMPT, height=32, width=32, output_type="np")
CALL_KWARGS: dict[str, dict[str, Any]] = {
    "sd": dict(_IMAGE, guidance_scale=5.0),
    "sdxl": dict(_IMAGE, guidance_scale=5.0),
    "sd3": dict(_IMAGE, guidance_scale=5.0, max_sequence_length=T5_MAX_LENGTH),
    # Flux-dev is guidance-distilled: guidance_scale feeds the guidance embedding; true CFG needs
    # true_cfg_scale > 1 *and* a negative prompt.
    "flux": dict(
        _IMAGE,
        negative_prompt="blurry",
        guidance_scale=3.5,
        true_cfg_scale=4.0,
        max_sequence_length=T5_MAX_LENGTH,
    ),
    "wan": dict(
        _IMAGE,
        negative_prompt="blurry",
        num_frames=5,
        guidance_scale=5.0,
        max_sequence_length=T5_MAX_LENGTH,
    ),
    # use_dynamic_cfg stays off (the pipeline's default)
    "cogvideox": dict(
        _IMAGE,
        negative_prompt="blurry",
        num_frames=9,
        guidance_scale=6.0,
        max_sequence_length=T5_MAX_LENGTH,
    ),
    "animatediff": dict(_IMAGE, negative_prompt="blurry", num_frames=4, guidance_scale=5.0),
}

#: Shape of ``.images`` (``.frames`` for Wan) for ``CALL_KWARGS`` with ``output_type="np"``.
EXPECTED_SHAPES: dict[str, tuple[int, ...]] = {
    "sd": (1, 32, 32, 3),
    "sdxl": (1, 32, 32, 3),
    "sd3": (1, 32, 32, 3),
    "flux": (1, 32, 32, 3),
    "wan": (1, 5, 32, 32, 3),
    "cogvideox": (1, 9, 32, 32, 3),
    "animatediff": (1, 4, 32, 32, 3),
}


def output_of(result: Any) -> Any:
    """``.images`` of an image pipeline output, ``.frames`` of a video one."""
    return result.frames if hasattr(result, "frames") else result.images
