"""Rollover budget forcing (RBF): a per-step NFE quota, with the unused part carried to the next step.

Kim et al. 2025, "Inference-Time Scaling for Flow Models via Stochastic Generation and Rollover Budget
Forcing" (NeurIPS 2025), Sec. 5. One particle moves down a *stochastic* chain (for a flow model: the
flow -> SDE conversion, preferably on the VP interpolant, :func:`search.flow_chain.flow_sde_chain`). At
each step it proposes children by the chain's stochastic step and scores each child's look-ahead x̂0
(Tweedie's formula); the first child whose reward beats its parent's is taken and whatever is left of the
step's quota rolls over to the next step. The paper's observation is that how many proposals it takes to
improve varies a lot across steps, so a fixed number of particles per step wastes compute.

Exactly what is implemented (``S = steps - 1`` searched steps, grid indices ``i = 0 .. steps - 2``):

* Cost of one child at step i: the solver's extra evaluations for the step i -> i + 1 (none for the
  multistep solvers; the evaluation at x_i is the parent's cached look-ahead) plus the look-ahead model
  call at x_{i+1}: ``c_i = segment_nfe(i, i + 1)`` NFE. The look-ahead call is reused by the accepted
  child's next step, so nothing is paid twice.
* Fixed cost: the look-ahead at the prior sample (1 NFE) and the last step ``steps - 1 -> steps``, taken
  once, without search: the grid ends at sigma = 0, where every child would be the same sample
  (``segment_nfe(steps - 1, steps) - 1`` NFE beyond the cached call). A budget smaller than one trajectory
  (``trajectory_nfe``) is a ValueError naming both numbers.
* Quotas: the rest, ``max_nfe - fixed``, split evenly over the S steps (the remainder to the first ones):
  q_i. Step i may spend ``q_i + rollover`` (never less than one child, never more than what must stay in
  reserve for one child at every later step), proposing ``batch`` children at a time.
* Acceptance: the children of a batch are scored; if the best beats the parent's look-ahead reward it is
  accepted at once. If the quota runs out first, the best child proposed at this step is taken. Either
  way, what the step was allowed and did not spend (``q_i + rollover - spent``) becomes the rollover:
  negative when the step's allowance was less than one child, a debt the next step repays. The last
  searched step spends everything left (a rollover past it would be lost) and takes its best child.

The result holds the one final sample (``x`` of shape (1, ...)) and its reward; ``history`` has one record
per searched step (``step``, ``quota``, ``allowance``, ``nfe_spent``, ``children``, ``improved``,
``parent_reward``, the accepted child's look-ahead ``reward``, the ``rollover`` carried on, ``nfe`` so far)
and a last one for the final, unsearched step (the sample's ``reward``, the total ``nfe``).
"""

from __future__ import annotations

from typing import Any

import torch

from .budget import Budget
from .chain import Chain, SolverChain
from .result import SearchResult, score_samples

__all__ = ["rollover_budget_forcing", "rollover_quotas"]


def rollover_quotas(total: int, steps: int) -> list[int]:
    """``total`` NFE split evenly over ``steps`` steps, the remainder going to the first ones."""
    base, extra = divmod(total, steps)
    return [base + (1 if i < extra else 0) for i in range(steps)]


def _child_costs(chain: Chain) -> list[int]:
    return [chain.segment_nfe(i, i + 1) for i in range(chain.steps - 1)]


def rollover_budget_forcing(
    chain: Chain,
    reward,
    *,
    max_nfe: int,
    batch: int = 1,
    prompts: Any = None,
    generator: torch.Generator | None = None,
) -> SearchResult:
    """RBF on a stochastic ``chain`` within ``max_nfe`` (see the module docstring for the exact rules).

    Args:
        max_nfe: the total budget (at least one trajectory).
        batch: children proposed (and scored) together; 1 is the paper's one-at-a-time rule, larger
            batches use parallel hardware at the price of a coarser early stop.
        prompts: one prompt (or None) for the one sample.
    """
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    if chain.steps < 2:
        raise ValueError(f"rollover budget forcing needs a chain of at least 2 steps, got {chain.steps}")
    if isinstance(chain, SolverChain) and not chain.solver.is_stochastic:
        raise ValueError(
            f"{chain.solver.name} is deterministic: every child of a step would be the same sample. Use a "
            "stochastic solver (e.g. SDEDPMSolverPP or DDIM with eta > 0; flow_sde_chain for flow models)"
        )
    trajectory = chain.trajectory_nfe()
    if max_nfe < trajectory:
        raise ValueError(f"a budget of {max_nfe} NFE is smaller than one trajectory ({trajectory} NFE)")
    if isinstance(prompts, list | tuple):
        if len(prompts) != 1:
            raise ValueError(f"rollover budget forcing makes one sample; got {len(prompts)} prompts")
        prompts = prompts[0]
    chain = chain.with_budget(Budget(max_nfe=max_nfe))
    costs = _child_costs(chain)
    last_step = chain.segment_nfe(chain.steps - 1, chain.steps) - 1
    quotas = rollover_quotas(max_nfe - 1 - last_step, len(costs))
    reserve = [sum(costs[i + 1 :]) + last_step for i in range(len(costs))]

    state, x0 = chain.predict(chain.prior(1, generator))
    parent_reward = float(score_samples(chain, reward, x0, prompts)[0])
    rollover, history = 0, []
    for i, (cost, quota) in enumerate(zip(costs, quotas, strict=True)):
        last = i == len(costs) - 1
        available = quota + rollover
        allowance = max(min(available, chain.budget.remaining_nfe() - reserve[i]), cost)
        spent, proposed, improved = 0, 0, False
        best_reward, best_child = float("-inf"), None
        while spent + cost <= allowance:
            n = min(batch, (allowance - spent) // cost)
            before = chain.budget.nfe
            children, x0 = chain.predict(chain.step(state[[0] * n], generator))
            spent += chain.budget.nfe - before
            proposed += n
            scores = score_samples(chain, reward, x0, prompts)
            top = int(scores.argmax())
            if best_child is None or float(scores[top]) > best_reward:
                best_reward, best_child = float(scores[top]), children[[top]]
            if chain.budget.nfe == before:  # the step made no model call (nothing left to do): no choice
                break
            if not last and best_reward > parent_reward:
                improved = True
                break
        improved = improved or best_reward > parent_reward
        rollover = available - spent
        history.append({"step": i, "quota": quota, "allowance": allowance, "nfe_spent": spent,
                        "children": proposed, "improved": improved, "parent_reward": parent_reward,
                        "reward": best_reward, "rollover": rollover, "nfe": chain.budget.nfe})  # fmt: skip
        state, parent_reward = best_child, best_reward
    final = chain.step(state, generator)
    score = score_samples(chain, reward, final.x, prompts)
    history.append({"step": chain.steps - 1, "reward": float(score[0]), "nfe": chain.budget.nfe})
    return SearchResult.finish(chain, final.x, score, score.clone(), history)
