"""Reward-based noise optimisation: gradient ascent on the initial noise through a differentiable sampler.

ReNO (Eyring et al. 2024, "ReNO: Enhancing One-step Text-to-Image Models through Reward-based Noise
Optimization", Sec. 3): the initial noise eps of a few-step (deterministic) sampler is optimised to raise a
differentiable reward of the generated sample, with a regulariser that keeps eps where Gaussian noise lives.
For eps ~ N(0, I_d) the norm |eps| follows a chi distribution with d degrees of freedom, whose log density
is K(eps) = (d - 1) log |eps| - |eps|^2 / 2 + const (maximal at |eps| = sqrt(d - 1)); the objective is

    maximise  r(decode(x0(eps))) + weight * K(eps)                      (``regulariser="chi"``)

or the reward alone with eps projected back onto the sphere of radius sqrt(d) after every step
(``regulariser="project"``, the default: norm-preserving by construction). On the analytic mixture the chi
regulariser at weight 1 let strong rewards pull |eps| to 0.8-0.94 sqrt(d); raise ``weight`` to hold it.
CARINOX (Kasaei et al. 2025) adds exploration over restarts: ``restarts`` independent noises are
optimised side by side and the best sample found by any of them is returned.

Cost: every iteration is one forward pass through the chain per restart (``trajectory_nfe`` NFE each,
charged to the budget) and one backward pass through the same calls (reported in ``history`` as
``backward_nfe``, not charged: the budget counts model evaluations the way the other methods do).
Backprop through the sampler keeps every step's activations, so memory grows with the number of steps;
``checkpoint=True`` checkpoints each step (:meth:`~search.chain.SolverChain.checkpointed_step`): only
the states between steps are kept and one step's activations are recomputed at a time during backward,
at the price of running every model call once more (reported as ``recompute_nfe``, also not charged, so
``nfe`` and the number of iterations a budget pays for are the same either way).
The chain must be differentiable end to end (its denoiser and decode in torch) and the reward
differentiable.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch

from .budget import Budget
from .chain import SolverChain
from .noise import randn
from .result import SearchResult
from .selection import select_final

__all__ = ["chi_log_density", "noise_optimisation"]


def chi_log_density(eps: torch.Tensor) -> torch.Tensor:
    """(d - 1) log |eps| - |eps|^2 / 2 per row: the log density of |N(0, I_d)|, up to a constant."""
    d = eps[0].numel()
    sq = eps.flatten(1).pow(2).sum(1)
    return 0.5 * (d - 1) * torch.log(sq) - 0.5 * sq


def _rewards_with_grad(chain: SolverChain, reward, x0: torch.Tensor, prompts: Any) -> torch.Tensor:
    scores = reward(chain.decode(x0), prompts, grad=True).reshape(-1).to(torch.float64)
    chain.budget.charge_rewards(scores.shape[0])
    if bool(torch.isnan(scores).any()):
        raise ValueError("the reward returned NaN")
    return scores


def noise_optimisation(
    chain: SolverChain,
    reward,
    *,
    iterations: int | None = 20,
    max_nfe: int | None = None,
    restarts: int = 1,
    lr: float = 0.02,
    regulariser: Literal["chi", "project"] = "project",
    weight: float = 1.0,
    k: int = 1,
    prompts: Any = None,
    generator: torch.Generator | None = None,
    checkpoint: bool = False,
) -> SearchResult:
    """Optimise ``restarts`` initial noises for ``iterations`` Adam steps (or as many as ``max_nfe`` pays
    for); return the ``k`` best samples seen. ``history[i]`` has the mean and max reward of iteration i's
    samples, the mean noise norm / sqrt(d), and the model evaluations its backward pass cost beyond the
    charged forward: ``backward_nfe`` (backprop through each call) and ``recompute_nfe`` (forward calls
    re-run by checkpointing; 0 without it).

    ``checkpoint=True`` runs every chain step under activation checkpointing, so the memory backprop
    needs is that of one step (plus the states between steps) instead of the whole trajectory's; the
    result, the NFE charged and the budget's iteration count are unchanged (module docstring, "Cost")."""
    if not getattr(reward, "differentiable", False):
        raise ValueError("noise optimisation needs a differentiable reward")
    if regulariser not in ("chi", "project"):
        raise ValueError(f"regulariser must be 'chi' or 'project', got {regulariser!r}")
    if restarts < 1 or lr <= 0 or weight < 0:
        raise ValueError(f"need restarts >= 1, lr > 0 and weight >= 0; got {restarts}, {lr}, {weight}")
    per_iteration = restarts * chain.trajectory_nfe()
    if max_nfe is not None:
        if max_nfe < per_iteration:
            raise ValueError(
                f"a budget of {max_nfe} NFE is smaller than one iteration ({per_iteration} NFE for "
                f"{restarts} restarts)"
            )
        iterations = max_nfe // per_iteration
    if iterations is None or iterations < 1:
        raise ValueError(f"need at least one iteration, got {iterations}")
    if not 1 <= k <= restarts * iterations:
        raise ValueError(f"need 1 <= k <= {restarts * iterations} samples, got k={k}")
    chain = chain.with_budget(Budget(max_nfe=max_nfe))
    d = math.prod(chain.shape)
    eps = randn((restarts, *chain.shape), generator, chain.dtype, chain.device)
    if regulariser == "project":
        eps = eps * (math.sqrt(d) / eps.flatten(1).norm(dim=1)).view(-1, *[1] * len(chain.shape))
    eps.requires_grad_(True)
    optimiser = torch.optim.Adam([eps], lr=lr)
    seen_x, seen_scores, history = [], [], []
    for i in range(iterations):
        recomputed = Budget()
        with torch.enable_grad():
            state = chain.start(chain.noise_scale * eps)
            while state.step < chain.steps:
                if checkpoint:
                    state = chain.checkpointed_step(state, recompute_budget=recomputed)
                else:
                    state = chain.step(state)
            scores = _rewards_with_grad(chain, reward, state.x, prompts)
            objective = scores.sum()
            if regulariser == "chi" and weight > 0:
                objective = objective + weight * chi_log_density(eps).sum()
            optimiser.zero_grad()
            (-objective).backward()
        optimiser.step()
        if regulariser == "project":
            with torch.no_grad():
                eps.mul_((math.sqrt(d) / eps.flatten(1).norm(dim=1)).view(-1, *[1] * len(chain.shape)))
        scores = scores.detach()
        seen_x.append(state.x.detach())
        seen_scores.append(scores)
        norms = eps.detach().flatten(1).norm(dim=1) / math.sqrt(d)
        history.append(
            {
                "iteration": i,
                "mean_reward": float(scores.mean()),
                "max_reward": float(scores.max()),
                "norm_ratio": float(norms.mean()),
                "backward_nfe": per_iteration,
                "recompute_nfe": recomputed.nfe,
            }
        )
    x, all_scores = torch.cat(seen_x), torch.cat(seen_scores)
    index = select_final(all_scores, all_scores, k, "max")
    best = x[index]
    return SearchResult.finish(chain, best, all_scores[index], all_scores, history)
