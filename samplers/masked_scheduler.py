"""``MaskedDiffusionScheduler``: the unmasking policies of :mod:`samplers.masked` as a drop-in scheduler for
diffusers' ``LLaDA2Pipeline`` (discrete text diffusion).

``pipe.scheduler = MaskedDiffusionScheduler(policy="low-confidence")`` -- the pipeline calls
``set_timesteps(steps, block_length=...)`` once per call and ``step(block_logits, step_index, block_tokens,
mask_token_id=..., temperature=..., threshold=..., generator=...)`` once per refinement step, exactly as it
calls diffusers' ``BlockRefinementScheduler``, and gets the same output type. Unlike that scheduler, ``step``
keeps no state between calls: what a step commits depends only on its arguments (the block's tokens say which
positions are still masked; ``steps_left = num_inference_steps - step_index``), so one scheduler object can
serve any number of runs, particles or interleaved searches.

``policy``: ``"threshold"`` (default; Fast-dLLM's rule, with the pipeline's ``threshold`` argument -- the same
commits as ``BlockRefinementScheduler`` at temperature 0), ``"low-confidence"``, ``"random"`` or ``"entropy"``
(``entropy_bound``). Sampling at ``temperature > 0`` is the float64 Gumbel-max draw of
:func:`samplers.masked.sample_candidates` (after the pipeline's ``top_k`` / ``top_p`` filtering). Not
supported: the uniform-corruption mode without a mask token (it needs per-run state) and confidence-based
editing of committed tokens (``editing_threshold``). With ReMDM remasking (``remask_eta > 0``), decoded tokens
masked again and not re-committed in the same step are returned in ``editing_transfer_index``, the positions
the pipeline writes back besides the commits. AdaBlock's adaptive block sizes
(:class:`samplers.masked.AdaBlock`) cannot be a scheduler option: the pipeline fixes the blocks before it
calls ``step``; they run on :class:`search.masked_chain.MaskedDiffusionChain`
(``pipelines.text.text_chains(..., adaptive_blocks=...)``).
"""

from __future__ import annotations

import torch
from diffusers import BlockRefinementScheduler
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_block_refinement import BlockRefinementSchedulerOutput

from .masked import ConfidenceThreshold, ReMDM, UnmaskingPolicy, commit_block, make_policy

__all__ = ["MaskedDiffusionScheduler"]

SAMPLING_METHODS = ("auto", "greedy", "multinomial")


class MaskedDiffusionScheduler(BlockRefinementScheduler):
    """Stateless block refinement with a choice of unmasking policy (see the module docstring).

    Args:
        block_length: default block size (the pipeline's ``block_length`` overrides it).
        num_inference_steps: default refinement steps per block.
        threshold: the ``"threshold"`` policy's confidence threshold when the pipeline passes none.
        editing_threshold, minimal_topk: kept for the pipeline's config reads; editing is not supported.
        policy: ``"threshold"``, ``"low-confidence"``, ``"random"`` or ``"entropy"``.
        entropy_bound: the ``"entropy"`` policy's bound gamma.
        remask_eta, remask_strategy: ReMDM remasking (:class:`~samplers.masked.ReMDM`) if ``remask_eta > 0``.
    """

    @register_to_config
    def __init__(
        self,
        block_length: int = 32,
        num_inference_steps: int = 32,
        threshold: float = 0.95,
        editing_threshold: float | None = None,
        minimal_topk: int = 1,
        policy: str = "threshold",
        entropy_bound: float = 0.5,
        remask_eta: float = 0.0,
        remask_strategy: str = "cap",
    ):
        make_policy(policy, **self._policy_options(policy, threshold, entropy_bound))  # fail early
        self.remasking = ReMDM(remask_eta, remask_strategy) if remask_eta > 0 else None
        self.num_inference_steps = num_inference_steps
        self.timesteps = torch.arange(num_inference_steps - 1, -1, -1, dtype=torch.long)
        self._transfer_schedule = None
        self._committed = None

    @staticmethod
    def _policy_options(policy: str, threshold: float, entropy_bound: float) -> dict[str, float]:
        if policy == "threshold":
            return {"threshold": float(threshold)}
        if policy == "entropy":
            return {"gamma": float(entropy_bound)}
        return {}

    def policy(self, threshold: float | None = None) -> UnmaskingPolicy:
        """The configured policy (the ``"threshold"`` one with ``threshold`` when given)."""
        name = self.config.policy
        if name == "threshold" and threshold is not None:
            return ConfidenceThreshold(float(threshold))
        options = self._policy_options(name, self.config.threshold, self.config.entropy_bound)
        return make_policy(name, **options)

    def set_timesteps(
        self,
        num_inference_steps: int,
        device: str | torch.device | None = None,
        block_length: int | None = None,
    ) -> None:
        if num_inference_steps <= 0:
            raise ValueError(f"`num_inference_steps` must be > 0, got {num_inference_steps}.")
        if block_length is not None and block_length <= 0:
            raise ValueError(f"`block_length` must be > 0, got {block_length}.")
        self.num_inference_steps = num_inference_steps
        self.timesteps = torch.arange(num_inference_steps - 1, -1, -1, device=device, dtype=torch.long)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.LongTensor,
        *,
        mask_token_id: int | None = None,
        temperature: float = 0.0,
        top_p: float | None = None,
        top_k: int | None = None,
        sampling_method: str = "auto",
        threshold: float | None = None,
        editing_threshold: float | None = None,
        minimal_topk: int | None = None,
        prompt_mask: torch.BoolTensor | None = None,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ):
        """Commit candidates of the block ``sample`` (B, block) from ``model_output`` (B, block, V) at step
        ``timestep`` of the block; see ``BlockRefinementScheduler.step`` for the arguments and output."""
        if mask_token_id is None:
            raise ValueError("MaskedDiffusionScheduler needs a mask token (no uniform-corruption mode)")
        if sampling_method not in SAMPLING_METHODS:
            raise ValueError(f"sampling_method must be one of {SAMPLING_METHODS}, got {sampling_method!r}")
        step_index = int(timestep.item()) if isinstance(timestep, torch.Tensor) else int(timestep)
        if sampling_method == "greedy":
            temperature = 0.0
        logits = model_output
        if temperature > 0:
            filtered = self._top_p_filtering(self._top_k_filtering(logits / temperature, top_k), top_p)
            logits = filtered * temperature
        prev, commit, tokens, confidence = commit_block(
            logits,
            sample,
            mask_token_id=mask_token_id,
            policy=self.policy(threshold if self.config.policy == "threshold" else None),
            steps_left=self.num_inference_steps - step_index,
            temperature=temperature,
            generator=generator,
            remasking=self.remasking,
            steps=self.num_inference_steps,
            editable=None if prompt_mask is None else ~prompt_mask.bool(),
        )
        # ReMDM's remasked tokens that stay masked: reported as edits, which the pipeline writes back too
        remasked = (prev != sample) & ~commit
        if not return_dict:
            return prev, commit, remasked, tokens, confidence, model_output
        return BlockRefinementSchedulerOutput(
            prev_sample=prev,
            transfer_index=commit,
            editing_transfer_index=remasked,
            sampled_tokens=tokens,
            sampled_probs=confidence,
            pred_logits=model_output,
        )
