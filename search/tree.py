"""Diffusion Tree Sampling (DTS) and Diffusion Tree Search (DTS*): anytime search over a tree of denoising
trajectories.

Jain et al. 2025, "Diffusion Tree Sampling: Scalable inference-time alignment of diffusion models"
(arXiv:2506.20701; project page diffusion-tree-sampling.github.io). The reverse chain is read as a depth-T
tree: a dummy root whose children are prior draws (the paper's x_{T+1}), then one level per chain step; each
edge is one stochastic step of the chain. Every node stores its particle (one :class:`ChainState` row,
multistep history included), a visit count N and a soft-value estimate v̂ of the soft value function

    V(x_t) = (1 / lambda) log E_{p(x_0:t-1 | x_t)}[exp(lambda r(x_0))],   lambda = 1 / temperature,

which satisfies the soft Bellman equation V(x_t) = (1 / lambda) log E_{p(x_t-1 | x_t)}[exp(lambda V(x_t-1))].
Since the children of a node are draws of p(. | x_t), its estimate is the Monte Carlo version (the soft
backup, :func:`soft_value`):

    v̂(node) = (1 / lambda) log( (1 / |C|) sum_{c in C(node)} exp(lambda v̂(c)) ),   v̂(leaf) = r(x_0).

One rollout (the paper's selection -> expansion -> rollout -> backup loop):

* selection: from the root, while the node need not be expanded, go to a child drawn with probability
  proportional to exp(lambda v̂(child)) (DTS: the Boltzmann policy, the tree's estimate of the optimal
  policy p(x_t-1 | x_t) exp(lambda V(x_t-1)) / exp(lambda V(x_t))), or to the child of highest v̂ (DTS*,
  ``greedy=True``, ties to the oldest child). Fully explored subtrees (every leaf below already built) are
  skipped, so no rollout is spent revisiting them;
* expansion: a node is expanded when it has fewer children than its limit: ``max_children``, and with
  ``widening=(c, alpha)`` the progressive-widening limit max(1, floor(c (N + 1)^alpha)) as well (or when all
  its children are fully explored); a node whose step is deterministic (:func:`search.chain.stochastic_step`:
  the last step onto sigma = 0, where every child would be the same sample) has one child. The new child is
  a prior draw (at the root) or one stochastic ``chain.step`` of the node;
* rollout: the new child is stepped to the end of the chain; every intermediate state is added to the tree;
* backup: the leaf gets v̂ = r(x_0); every node on the path gets N += 1 and its soft value recomputed.

Memory: with ``max_nodes`` a rollout's new nodes are stored only when the whole new path fits; otherwise the
rollout still runs and its reward enters the soft value of the node it was expanded from as an unstored
child (a count and a running log-sum-exp), but it cannot be selected later.

Returned samples:

* DTS (``greedy=False``): ``k`` stored leaves drawn (with replacement) by descending from the root, choosing
  children with probability exp(lambda v̂(c)) / sum_siblings exp(lambda v̂(s)). With the soft backup the
  product telescopes: leaf l is drawn with probability exp(lambda r(l)) w(l) / exp(lambda v̂(root)), w(l) the
  product of 1 / |C| along its path (its mass under uniform descent): self-normalised importance sampling of
  the tree's leaves toward p(x) exp(r(x) / temperature), exact as the tree grows (paper, Sec. 4).
* DTS*: the top ``k`` leaves by reward of all rollouts (best first).

NFE: a rollout expanded at step s costs ``chain.segment_nfe(s, steps)`` (the full trajectory at the root),
charged per particle by the chain. With ``max_nfe`` the search stops before the first rollout that would not
fit, so it never exceeds the budget. Rollouts run one particle at a time.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from .budget import Budget
from .chain import Chain, ChainState, stochastic_step
from .result import SearchResult, score_samples
from .selection import check_selection

__all__ = ["TreeNode", "diffusion_tree_sampling", "soft_value"]


def _logsumexp(values: Sequence[float]) -> float:
    top = max(values)
    if top == -math.inf:
        return -math.inf
    return top + math.log(sum(math.exp(v - top) for v in values))


def soft_value(child_values: Sequence[float], temperature: float = 1.0, extra: int = 0) -> float:
    """The soft backup (1 / lambda) log((1 / n) sum_c exp(lambda v_c)) with lambda = 1 / temperature.

    ``child_values`` may hold, besides the children's values, one aggregated entry standing for ``extra + 1``
    children (its value being (1 / lambda) log sum of their exp(lambda v)); ``n = len(child_values) + extra``.
    -inf values have zero weight; all -inf gives -inf."""
    if not child_values:
        raise ValueError("a soft value needs at least one child")
    lam = 1.0 / temperature
    lse = _logsumexp([lam * v for v in child_values])
    return (lse - math.log(len(child_values) + extra)) / lam


class TreeNode:
    """One node of the search tree.

    Attributes:
        state: the particle (a one-row :class:`ChainState`); None for the dummy root.
        step: the chain step of the particle (-1 for the root).
        children: stored children, oldest first.
        visits: N, the rollouts that passed through (or ended at) the node.
        value: v̂, the soft-value estimate (reward units); the reward at a leaf.
        unstored, unstored_lse: how many children were not stored (memory bound) and log sum of their
            exp(lambda v) (lambda-scaled).
        complete: every leaf below is built (no rollout can add anything below).
    """

    __slots__ = ("state", "step", "children", "visits", "value", "unstored", "unstored_lse", "complete")

    def __init__(self, state: ChainState | None, step: int, value: float = -math.inf):
        self.state, self.step = state, step
        self.children: list[TreeNode] = []
        self.visits = 0
        self.value = value
        self.unstored, self.unstored_lse = 0, -math.inf
        self.complete = False

    @property
    def n_children(self) -> int:
        """Children drawn so far, stored or not."""
        return len(self.children) + self.unstored

    def add_unstored(self, value: float, temperature: float) -> None:
        """Count a child that was not stored, of soft value ``value``."""
        self.unstored += 1
        self.unstored_lse = _logsumexp([self.unstored_lse, value / temperature])

    def backup(self, temperature: float) -> float:
        """Recompute v̂ from the children (the soft Bellman backup, :func:`soft_value`); leaves keep theirs."""
        if self.n_children == 0:
            return self.value
        values = [c.value for c in self.children]
        extra = 0
        if self.unstored:
            values.append(self.unstored_lse * temperature)
            extra = self.unstored - 1
        self.value = soft_value(values, temperature, extra)
        return self.value

    def leaves(self, log_prob: float = 0.0, temperature: float = 1.0) -> Iterator[tuple[TreeNode, float]]:
        """Every stored leaf below with its log probability under the Boltzmann descent from this node."""
        if not self.children:
            yield self, log_prob
            return
        logits = torch.tensor([c.value / temperature for c in self.children], dtype=torch.float64)
        if not bool(torch.isfinite(logits).any()):
            logits = torch.zeros_like(logits)  # every reward below is -inf: zero weight anyway
        log_p = (logits - torch.logsumexp(logits, 0)).tolist()
        for child, lp in zip(self.children, log_p):
            yield from child.leaves(log_prob + lp, temperature)


def _child_limit(
    node: TreeNode, max_children: int | None, widening: tuple[float, float] | None, deterministic: set[int]
) -> float:
    if node.step in deterministic:  # every child would be the same sample
        return 1
    limit = math.inf if max_children is None else max_children
    if widening is not None:
        c, alpha = widening
        limit = min(limit, max(1, math.floor(c * (node.visits + 1) ** alpha)))
    return limit


def _select(
    root: TreeNode,
    temperature: float,
    greedy: bool,
    max_children: int | None,
    widening: tuple[float, float] | None,
    deterministic: set[int],
    generator: torch.Generator | None,
) -> list[TreeNode]:
    """The selection path from the root to the node to expand (see the module doc)."""
    path = [root]
    node = root
    while True:
        open_children = [c for c in node.children if not c.complete]
        if not open_children or node.n_children < _child_limit(node, max_children, widening, deterministic):
            return path
        values = torch.tensor([c.value for c in open_children], dtype=torch.float64)
        if greedy:
            pick = int(torch.argmax(values))  # first maximum: the oldest child on ties
        else:
            logits = values / temperature
            if not bool(torch.isfinite(logits).any()):
                logits = torch.zeros_like(logits)
            probs = torch.softmax(logits, 0)
            pick = int(torch.multinomial(probs, 1, generator=generator))
        node = open_children[pick]
        path.append(node)


def _update_complete(node: TreeNode, steps: int, max_children: int | None, deterministic: set[int]) -> None:
    if node.step >= steps:
        node.complete = True
    elif node.n_children >= _child_limit(node, max_children, None, deterministic):  # widening never ends
        node.complete = all(c.complete for c in node.children)


def diffusion_tree_sampling(
    chain: Chain,
    reward,
    *,
    rollouts: int | None = None,
    max_nfe: int | None = None,
    temperature: float = 1.0,
    greedy: bool = False,
    max_children: int | None = 4,
    widening: tuple[float, float] | None = None,
    max_nodes: int | None = None,
    k: int | None = None,
    prompts: Any = None,
    generator: torch.Generator | None = None,
) -> SearchResult:
    """DTS (``greedy=False``) or DTS* (``greedy=True``) for ``rollouts`` rollouts and/or until ``max_nfe`` is
    spent (at least one of the two; the search stops at whichever comes first, or when the tree is fully
    explored). See the module doc for the algorithm.

    Args:
        temperature: the target is p(x) exp(r(x) / temperature); lambda = 1 / temperature.
        max_children: children per node (None: unbounded, then ``widening`` is required).
        widening: progressive widening (c, alpha): at most max(1, floor(c (N + 1)^alpha)) children at a node
            visited N times.
        max_nodes: at most this many stored nodes (the dummy root not counted); at least ``chain.steps + 1``
            (one trajectory).
        k: samples returned: DTS draws ``k`` leaves by the Boltzmann descent (default: one per rollout); DTS*
            returns the top ``k`` (default 1).

    Returns a :class:`SearchResult` whose ``all_scores`` holds the reward of every rollout and ``history``
    one record per rollout (``expanded_at`` step, ``nfe``, ``reward``, ``stored``, ``nodes``).
    """
    if rollouts is None and max_nfe is None:
        raise ValueError("give rollouts, max_nfe or both")
    if rollouts is not None and rollouts < 1:
        raise ValueError(f"need at least one rollout, got {rollouts}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if max_children is None and widening is None:
        raise ValueError("give max_children, widening or both")
    if max_children is not None and max_children < 1:
        raise ValueError(f"max_children must be at least 1, got {max_children}")
    if widening is not None and (widening[0] <= 0 or widening[1] < 0):
        raise ValueError(f"widening must be (c > 0, alpha >= 0), got {widening}")
    if max_nodes is not None and max_nodes < chain.steps + 1:
        raise ValueError(f"max_nodes must hold one trajectory ({chain.steps + 1} nodes), got {max_nodes}")
    if k is not None:
        check_selection("max" if greedy else "resample", k, rollouts if greedy and rollouts else k)
    first = chain.trajectory_nfe()
    if max_nfe is not None and max_nfe < first:
        raise ValueError(f"a budget of {max_nfe} NFE is smaller than one rollout ({first} NFE)")
    chain = chain.with_budget(Budget(max_nfe=max_nfe))
    steps = chain.steps
    deterministic = {i for i in range(steps) if not stochastic_step(chain, i)}

    root = TreeNode(None, -1)
    nodes = 0
    rewards: list[float] = []
    best: list[tuple[float, int, torch.Tensor]] = []  # DTS*: the top k (reward, rollout, x0) so far
    keep = 1 if k is None else k
    history: list[dict[str, Any]] = []
    while (rollouts is None or len(rewards) < rollouts) and not root.complete:
        path = _select(root, temperature, greedy, max_children, widening, deterministic, generator)
        parent = path[-1]
        cost = chain.segment_nfe(max(parent.step, 0), steps)
        remaining = chain.budget.remaining_nfe()
        if remaining is not None and cost > remaining:
            break
        state = chain.prior(1, generator) if parent.state is None else chain.step(parent.state, generator)
        new = [state]
        while state.step < steps:
            state = chain.step(state, generator)
            new.append(state)
        r = float(score_samples(chain, reward, state.x, prompts)[0])
        rewards.append(r)
        stored = max_nodes is None or nodes + len(new) <= max_nodes
        if stored:
            nodes += len(new)
            above = parent
            for s in new:
                child = TreeNode(s, s.step)
                above.children.append(child)
                path.append(child)
                above = child
            path[-1].value = r
        else:
            parent.add_unstored(r, temperature)
        for node in reversed(path):
            node.visits += 1
            node.backup(temperature)
            _update_complete(node, steps, max_children, deterministic)
        if greedy:
            best.append((r, len(rewards) - 1, state.x))
            best.sort(key=lambda item: (-item[0], item[1]))
            del best[keep:]
        history.append(
            {"expanded_at": parent.step + 1, "nfe": cost, "reward": r, "stored": stored, "nodes": nodes}
        )

    all_scores = torch.tensor(rewards, dtype=torch.float64)
    if greedy:
        check_selection("max", keep, len(rewards))
        x = torch.cat([item[2] for item in best])
        scores = torch.tensor([item[0] for item in best], dtype=torch.float64)
    else:
        draws = len(rewards) if k is None else k
        leaves, log_p = zip(*root.leaves(temperature=temperature))
        if all(leaf.value == -math.inf for leaf in leaves):
            raise ValueError("every sample has zero weight (reward -inf): nothing to resample")
        index = torch.multinomial(torch.tensor(log_p).exp(), draws, replacement=True, generator=generator)
        x = torch.cat([leaves[i].state.x for i in index.tolist()])
        scores = torch.tensor([leaves[i].value for i in index.tolist()], dtype=torch.float64)
    return SearchResult.finish(chain, x, scores, all_scores, history)
