"""Adapters from real diffusers pipelines (+ prompts) to search chains (:class:`search.chain.SolverChain`):
:func:`stable_diffusion_chains` (SD, SDXL: UNet), :func:`flow_pipeline_chains` (SD3, Flux, Wan: flow-matching
transformers, stochastic through the flow -> SDE conversion) and :func:`cogvideox_chains` (CogVideoX). Each
builds one chain per prompt, all sharing one network call, so that searches run side by side
(:func:`search.lockstep.run_lockstep`) batch the particles of every prompt together; the singular forms
(``stable_diffusion_chain`` ...) build the chain of one prompt."""

from .cogvideox import cogvideox_chain, cogvideox_chains
from .common import graph_if_needed, pipeline_device_dtype, vae_decoder
from .flow import flow_pipeline_chain, flow_pipeline_chains, pipeline_kind
from .unet import is_sdxl, stable_diffusion_chain, stable_diffusion_chains

__all__ = [
    "cogvideox_chain",
    "cogvideox_chains",
    "flow_pipeline_chain",
    "flow_pipeline_chains",
    "graph_if_needed",
    "is_sdxl",
    "pipeline_device_dtype",
    "pipeline_kind",
    "stable_diffusion_chain",
    "stable_diffusion_chains",
    "vae_decoder",
]
