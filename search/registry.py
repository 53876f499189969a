"""Search methods by name, for pipelines and the CLI: what each needs of its chain and how "particles" maps
onto its own size argument.

``run_search(name, chain, reward, particles=8)`` runs a method with ``particles`` as its natural size (the
number of trajectories of best-of-N, particles of FK steering, beams, the population of EvoSearch, ...), or
within ``max_nfe``. Methods without a population (DTS*, RBF, zero-order search) get the budget of
``particles`` full trajectories, ``particles * chain.trajectory_nfe()`` NFE, so ``--particles 8`` costs about
the same for every method.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from .beam import beam_search
from .best_of_n import best_of_n
from .chain import Chain
from .evolution import evo_search
from .fk_smc import fk_steering
from .noise_search import zero_order_search
from .path_search import path_search
from .result import SearchResult
from .rollover import rollover_budget_forcing
from .tree import diffusion_tree_sampling

__all__ = ["SEARCH_METHODS", "SearchMethod", "get_search", "run_search"]


@dataclass(frozen=True)
class SearchMethod:
    """A search method as pipelines see it.

    Attributes:
        name: the canonical name.
        run: ``run(chain, reward, **kwargs) -> SearchResult``.
        stochastic: needs a stochastic chain (particle and tree methods); the others search over initial
            noise and run on the deterministic ODE chain.
        size: the keyword ``particles`` maps onto, or None (then ``particles`` sets the budget).
        summary: one line for help texts.
        unbudgeted: keyword defaults used when no ``max_nfe`` is given (EvoSearch: 4 generations).
    """

    name: str
    run: Callable[..., SearchResult]
    stochastic: bool
    size: str | None
    summary: str
    unbudgeted: tuple[tuple[str, Any], ...] = ()


SEARCH_METHODS: dict[str, SearchMethod] = {
    m.name: m
    for m in (
        SearchMethod("bon", best_of_n, False, "n", "best-of-N: N trajectories, keep the best"),
        SearchMethod("zero-order", zero_order_search, False, None, "zero-order search over initial noise"),
        SearchMethod("paths", path_search, False, "paths", "search over paths (renoise and re-solve)"),
        SearchMethod("beam", beam_search, True, "beams", "beam search over stochastic steps"),
        SearchMethod(
            "smc",
            partial(fk_steering, select="max", k=1),
            True,
            "particles",
            "Feynman-Kac steering (SMC), returning its best particle",
        ),
        SearchMethod(
            "dts",
            partial(diffusion_tree_sampling, greedy=True),
            True,
            None,
            "DTS*: greedy Diffusion Tree Search",
        ),
        SearchMethod(
            "evo",
            evo_search,
            False,
            "population",
            "EvoSearch: evolution of noises and states",
            (("generations", 4),),
        ),
        SearchMethod("rbf", rollover_budget_forcing, True, None, "rollover budget forcing (one particle)"),
    )
}
_ALIASES = {"best-of-n": "bon", "fk": "smc", "fk-steering": "smc", "dts*": "dts", "evosearch": "evo",
            "zero_order": "zero-order", "zo": "zero-order"}  # fmt: skip


def get_search(name: str) -> SearchMethod:
    """The method called ``name`` (or an alias such as ``best-of-n``, ``fk``, ``dts*``)."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in SEARCH_METHODS:
        raise ValueError(f"unknown search method {name!r}; expected one of {', '.join(SEARCH_METHODS)}")
    return SEARCH_METHODS[key]


def run_search(
    name: str,
    chain: Chain,
    reward,
    *,
    particles: int | None = None,
    max_nfe: int | None = None,
    **kwargs: Any,
) -> SearchResult:
    """Run the method ``name`` on ``chain`` with ``particles`` (its natural size) and/or ``max_nfe``."""
    method = get_search(name)
    if particles is not None and (not isinstance(particles, int) or particles < 1):
        raise ValueError(f"particles must be a positive integer, got {particles!r}")
    if particles is None and max_nfe is None:
        raise ValueError("give particles, max_nfe or both")
    if method.size is not None and particles is not None:
        kwargs[method.size] = particles
    elif particles is not None and max_nfe is None:
        max_nfe = particles * chain.trajectory_nfe()
    if max_nfe is not None:
        kwargs["max_nfe"] = max_nfe
    else:
        kwargs = {**dict(method.unbudgeted), **kwargs}
    return method.run(chain, reward, **kwargs)
