"""Inference-time search over denoising chains: best-of-N, zero-order search over the initial noise, search
over paths, beam search, Feynman-Kac steering (SMC), Diffusion Tree Sampling, EvoSearch, rollover budget
forcing (with flow models as SDE chains), reward-based noise optimisation, resamplers.

Every method takes a chain (:mod:`search.chain`), a reward (:mod:`rewards`) and a budget, and returns a
:class:`~search.result.SearchResult` with NFE counted per particle the same way for all methods.
"""

from .beam import beam_search, beam_search_nfe, branching_steps
from .best_of_n import best_of_n
from .budget import Budget, BudgetExceeded
from .chain import Chain, ChainState, SolverChain, advance, gaussian_mixture_chain
from .evolution import (
    elite_indices,
    evo_search,
    evo_search_nfe,
    evolution_schedule,
    mutate_noise,
    mutate_state,
    tournament_select,
)
from .fk_smc import POTENTIALS, fk_steering
from .flow_chain import INTERPOLANTS, flow_sde_chain
from .lookahead import TWEEDIE, Lookahead, lookahead_scores
from .masked_chain import MaskedDiffusionChain
from .metrics import sliced_wasserstein
from .noise_optimisation import chi_log_density, noise_optimisation
from .noise_search import NEIGHBOURHOODS, pcn_neighbours, sphere_neighbours, zero_order_search
from .path_search import path_cost, path_schedule, path_search
from .registry import SEARCH_METHODS, SearchMethod, get_search, run_search
from .resample import (
    RESAMPLERS,
    effective_sample_size,
    get_resampler,
    multinomial,
    normalise_log_weights,
    residual,
    stratified,
    systematic,
)
from .result import SearchResult, score_samples
from .rollover import rollover_budget_forcing, rollover_quotas
from .tree import TreeNode, diffusion_tree_sampling, soft_value

__all__ = [
    "SEARCH_METHODS",
    "SearchMethod",
    "get_search",
    "run_search",
    "INTERPOLANTS",
    "flow_sde_chain",
    "rollover_budget_forcing",
    "rollover_quotas",
    "TreeNode",
    "diffusion_tree_sampling",
    "soft_value",
    "elite_indices",
    "evo_search",
    "evo_search_nfe",
    "evolution_schedule",
    "mutate_noise",
    "mutate_state",
    "tournament_select",
    "chi_log_density",
    "noise_optimisation",
    "TWEEDIE",
    "Lookahead",
    "lookahead_scores",
    "NEIGHBOURHOODS",
    "advance",
    "beam_search",
    "beam_search_nfe",
    "branching_steps",
    "path_cost",
    "path_schedule",
    "path_search",
    "pcn_neighbours",
    "sphere_neighbours",
    "zero_order_search",
    "POTENTIALS",
    "RESAMPLERS",
    "Budget",
    "BudgetExceeded",
    "Chain",
    "ChainState",
    "SearchResult",
    "MaskedDiffusionChain",
    "SolverChain",
    "best_of_n",
    "effective_sample_size",
    "fk_steering",
    "gaussian_mixture_chain",
    "get_resampler",
    "multinomial",
    "normalise_log_weights",
    "residual",
    "score_samples",
    "sliced_wasserstein",
    "stratified",
    "systematic",
]
