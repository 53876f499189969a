"""Adapters from real diffusers pipelines (+ a prompt) to search chains (:class:`search.chain.SolverChain`):
:func:`stable_diffusion_chain` (SD, SDXL: UNet) and :func:`flow_pipeline_chain` (SD3, Flux: flow-matching
transformers, stochastic through the flow -> SDE conversion)."""

from .cogvideox import cogvideox_chain
from .common import graph_if_needed, pipeline_device_dtype, vae_decoder
from .flow import flow_pipeline_chain, pipeline_kind
from .unet import is_sdxl, stable_diffusion_chain

__all__ = [
    "cogvideox_chain",
    "flow_pipeline_chain",
    "graph_if_needed",
    "is_sdxl",
    "pipeline_device_dtype",
    "pipeline_kind",
    "stable_diffusion_chain",
    "vae_decoder",
]
