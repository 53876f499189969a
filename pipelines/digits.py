"""The bundled class-conditional digits model: a diffusers pipeline over a tiny pixel-space UNet.

Trained by ``scripts/train_digits.py`` on scikit-learn's 8x8 handwritten digits; shipped in
``pipelines/assets/digits`` so the CLI runs offline. The UNet takes ``class_labels`` 0-9, and 10 is the
null class used for classifier-free guidance (Ho & Salimans 2022, eq. 6:
``eps = eps_uncond + w (eps_cond - eps_uncond)``).

The UNet is called on a fixed number of rows at a time (:func:`fixed_size_calls`), so a sample's pixels do
not depend on which other samples share its batch: a seed gives byte-identical images for every batch
size and process count.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler, DiffusionPipeline, ImagePipelineOutput, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from rewards.digit_classifier import parse_digit

__all__ = [
    "ASSETS",
    "DIGITS_MODEL",
    "NULL_CLASS",
    "DigitsPipeline",
    "digits_chain",
    "digits_chains",
    "parse_digit",
    "fixed_size_calls",
    "to_uint8",
]

ASSETS = Path(__file__).resolve().parent / "assets"
DIGITS_MODEL = ASSETS / "digits"
NULL_CLASS = 10


def fixed_size_calls(model, x: torch.Tensor, size: int, **kwargs) -> torch.Tensor:
    """``model(x, **kwargs).sample`` computed in calls of exactly ``size`` rows (the last padded with row 0).

    CPU kernels (oneDNN convolutions, BLAS matmuls) pick their algorithm, and so their rounding, by batch
    size; for a fixed size the result of a row does not depend on its position or on the other rows (tested
    in ``tests/test_generate.py``). Every sample is thus computed identically whatever batch it is in.
    Tensor keyword arguments with a batch dimension are split and padded along with ``x``."""
    n = x.shape[0]
    pad = (-n) % size

    def padded(v):
        if isinstance(v, torch.Tensor) and v.ndim > 0 and v.shape[0] == n:
            return torch.cat([v, v[:1].expand(pad, *v.shape[1:])]) if pad else v
        return v

    xs, kw = padded(x), {k: padded(v) for k, v in kwargs.items()}
    batched = {k for k, v in kw.items() if isinstance(v, torch.Tensor) and v.ndim > 0}
    outs = []
    for i in range(0, n + pad, size):
        part = {k: v[i : i + size] if k in batched else v for k, v in kw.items()}
        outs.append(model(xs[i : i + size], **part).sample)
    return torch.cat(outs)[:n]


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] images (B, C, H, W) -> uint8 (B, H, W, C), rounding to the nearest level."""
    pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


class DigitsPipeline(DiffusionPipeline):
    """Class-conditional digit generation with classifier-free guidance.

    ``pipe(["7", "seven", 3], num_inference_steps=20, guidance_scale=2.0, generator=[g0, g1, g2])``.
    Any diffusers-API scheduler works (``pipe.scheduler = DPMSolverPPScheduler.from_config(...)``). A list
    of generators, one per image, makes each image's noise independent of the batch it is drawn in.
    """

    model_cpu_offload_seq = "unet"
    #: rows per UNet call (padded): 128 = 64 images with their CFG twins, the CLI's default batch, in one
    #: call (smaller calls cost ~17 ms of fixed overhead each on CPU). ``None`` calls the UNet once on the
    #: whole batch (faster for small batches, but then a sample's rounding depends on the batch size).
    call_size: int | None = 128

    def __init__(self, unet: UNet2DModel, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    def _eval_unet(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.call_size is None:
            return self.unet(x, t, class_labels=labels).sample
        return fixed_size_calls(self.unet, x, self.call_size, timestep=t, class_labels=labels)

    def _initial_noise(self, batch: int, generator, dtype: torch.dtype) -> torch.Tensor:
        if isinstance(generator, (list, tuple)) and len(generator) != batch:
            raise ValueError(f"{len(generator)} generators for {batch} images")
        size = self.unet.config.sample_size
        shape = (batch, self.unet.config.in_channels, size, size)
        return randn_tensor(shape, generator=generator, device=self.device, dtype=dtype)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | int | list[str | int],
        num_inference_steps: int = 20,
        guidance_scale: float = 2.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """Draw one image per prompt; ``output_type`` is ``"pil"``, ``"np"`` (uint8) or ``"pt"`` ([-1, 1])."""
        prompts = prompt if isinstance(prompt, (list, tuple)) else [prompt]
        labels = torch.tensor([parse_digit(p) for p in prompts], device=self.device)
        dtype = self.unet.dtype
        if latents is None:
            x = self._initial_noise(len(prompts), generator, dtype)
        else:
            x = latents.to(self.device, dtype)
        x = x * self.scheduler.init_noise_sigma
        guided = guidance_scale != 1.0
        cond = torch.cat([labels, torch.full_like(labels, NULL_CLASS)]) if guided else labels
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        for t in self.progress_bar(self.scheduler.timesteps):
            model_in = self.scheduler.scale_model_input(torch.cat([x, x]) if guided else x, t)
            out = self._eval_unet(model_in, t.expand(model_in.shape[0]), cond)
            if guided:
                out_cond, out_uncond = out.chunk(2)
                out = out_uncond + guidance_scale * (out_cond - out_uncond)
            x = self.scheduler.step(out, t, x, generator=generator).prev_sample
        if output_type == "pt":
            images = x
        else:
            images = to_uint8(x)
            if output_type == "pil":
                images = [Image.fromarray(im[..., 0]) for im in images]
            elif output_type != "np":
                raise ValueError(f"output_type must be 'pil', 'np' or 'pt', not {output_type!r}")
        return ImagePipelineOutput(images=images) if return_dict else (images,)


def build_digits_unet() -> UNet2DModel:
    """The architecture the bundled model is trained with (8x8 pixels, three resolutions)."""
    return UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(32, 64, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D",) * 3,
        up_block_types=("UpBlock2D",) * 3,
        num_class_embeds=NULL_CLASS + 1,
        norm_num_groups=8,
    )


def digits_chain(digit: int | str | None, *, budget=None, **kwargs):
    """The bundled digits model as a search chain for one class: the chain of :func:`digits_chains` for
    ``[digit]`` (see there for the arguments), charging ``budget`` (a fresh one by default)."""
    chain = digits_chains([digit], **kwargs)[0]
    return chain if budget is None else chain.with_budget(budget)


def digits_chains(
    digits,
    *,
    steps: int = 20,
    guidance_scale: float | None = None,
    solver=None,
    grid_kind: str = "uniform_t",
    model: str | Path = DIGITS_MODEL,
    unet: UNet2DModel | None = None,
    max_batch: int | None = None,
):
    """The bundled digits model as search chains (:class:`search.chain.SolverChain`) over 8x8 images, one per
    class of ``digits``, sharing one UNet call (searches run side by side by
    :func:`search.lockstep.run_lockstep` batch the particles of every chain together).

    Args:
        digits: the class of each chain ("7", "seven", 7), or ``None`` for the unconditional model (the null
            class the model was trained with for classifier-free guidance).
        steps: grid steps; grid_kind: the time grid (``samplers.grids.make_grid`` kinds).
        guidance_scale: classifier-free guidance weight (``None`` or 1: none; needs a digit).
        solver: any ``samplers`` solver (default ``SDEDPMSolverPP(2)``, stochastic, as particle methods
            need; pass ``DPMSolverPP(2)`` for the ODE).
        model / unet: the pipeline directory, or an already loaded UNet.
        max_batch: at most this many particles per UNet call, also when the calls of several chains merge.

    Follows the model's scheduler config: its DDPM schedule, and its ``clip_sample`` clamp of the data
    prediction to [-1, 1]. ``decode`` maps samples to [0, 1] images, as image rewards take them.
    """
    from samplers.denoiser import Denoiser
    from samplers.grids import make_grid
    from samplers.schedulers import x0_limit_from_config
    from samplers.schedules import schedule_from_diffusers_config
    from samplers.solvers import SDEDPMSolverPP
    from search.chain import SolverChain

    from .adapters.common import prompt_chains

    if unet is None:
        unet = UNet2DModel.from_pretrained(Path(model) / "unet").eval()
    config = DDPMScheduler.load_config(Path(model) / "scheduler")
    scheduler_config = DDPMScheduler.from_config(config).config
    labels = [NULL_CLASS if d is None else parse_digit(d) for d in digits]
    guided = guidance_scale is not None and guidance_scale != 1.0
    if guided and NULL_CLASS in labels:
        raise ValueError("classifier-free guidance needs a digit")

    @torch.no_grad()
    def net(x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        return unet(x, t, class_labels=class_labels).sample

    schedule = schedule_from_diffusers_config(config)
    grid = make_grid(schedule, steps, grid_kind, final="zero")
    size = unet.config.sample_size
    solver = solver if solver is not None else SDEDPMSolverPP(2)
    shape = (unet.config.in_channels, size, size)

    def decode(x0: torch.Tensor) -> torch.Tensor:
        return (x0.clamp(-1, 1) + 1) / 2

    def make_chain(denoiser: Denoiser, cond: dict[str, torch.Tensor]) -> SolverChain:
        return SolverChain(denoiser, grid, solver, shape, cond=cond, decode=decode, max_batch=max_batch)

    null = {"class_labels": torch.tensor([NULL_CLASS])}
    encodings = [({"class_labels": torch.tensor([label])}, null if guided else None) for label in labels]
    return prompt_chains(
        net,
        encodings,
        make_chain,
        prediction_type="epsilon",
        guidance_scale=guidance_scale if guided else None,
        max_batch=max_batch,
        threshold=x0_limit_from_config(scheduler_config),
    )
