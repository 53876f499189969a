"""diffusers-API schedulers over the one exponential-integrator engine.

Drop-in replacements for diffusers' schedulers in any pipeline::

    pipe.scheduler = UniPCScheduler.from_config(pipe.scheduler.config)

Every class here is a thin façade: it turns a diffusers config into a noise schedule, a time grid and a
:class:`~samplers.solvers.Solver`, and feeds the model outputs a pipeline hands to :meth:`step` into
:meth:`Solver.advance <samplers.solvers.Solver.advance>`. The algorithms live in :mod:`samplers.solvers`
and :mod:`samplers.coefficients` only.

Conventions (those of diffusers where diffusers has one):

* ``num_inference_steps`` counts model evaluations; ``len(timesteps)`` calls to :meth:`step` make a run.
  Singlestep solvers spread their orders over the steps to spend exactly that many (explicit
  ``timesteps``/``sigmas`` are the steps themselves; each then costs its order in evaluations).
* ``timesteps`` are what the network receives: continuous DDPM time in [0, num_train_timesteps - 1]
  (not rounded: the solver and the network see the same noise level), or ``1000 * sigma`` for flow models.
* ``sigmas`` are diffusers' noise levels: sigma/alpha for DDPM schedules, sigma for flow matching, one per
  timestep plus the final one (0 with ``final_sigmas_type="zero"``).
* A flow-matching config (FlowMatch* schedulers, ``use_flow_sigmas``, ``prediction_type="flow_prediction"``)
  gives alpha = 1 - t, sigma = t with ``flow_shift`` (FlowMatch's ``shift``) or, with
  ``use_dynamic_shifting``, the ``mu`` passed to :meth:`set_timesteps`.
* :meth:`step` never reads tensors back to the host: the step index advances by one per call from
  ``begin_index`` (pipelines that start part-way, e.g. img2img, call :meth:`set_begin_index`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Generator, Sequence
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput

from .catalogue import get_preset
from .denoiser import DenoiserOutput, DynamicThreshold, convert_prediction
from .grids import TimeGrid, make_grid
from .noise import GeneratorNoise
from .schedules import DiscreteVPSchedule, FlowMatchingSchedule, NoiseSchedule
from .solvers import Evaluation, Solver
from .state import SolverState

__all__ = [
    "ExponentialIntegratorScheduler",
    "DPMSolverPPScheduler",
    "DEISScheduler",
    "UniPCScheduler",
    "DDIMSolverScheduler",
    "DPMSolverV3Scheduler",
    "AYS_SD15_SIGMAS",
    "AYS_SDXL_SIGMAS",
]

#: Align Your Steps noise levels (Sabour et al. 2024) for Stable Diffusion 1.5 and SDXL, 10 steps.
AYS_SD15_SIGMAS = (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029)
AYS_SDXL_SIGMAS = (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029)

#: Configuration shared by every scheduler here (diffusers' names and defaults where diffusers has them).
COMMON_CONFIG: dict[str, Any] = {
    # the forward process
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "rescale_betas_zero_snr": False,
    "snr_shift_scale": None,  # CogVideoX: abar / (s + (1 - s) abar), before the zero-SNR rescale
    "prediction_type": "epsilon",
    # flow matching (SD3, Flux, Wan)
    "use_flow_sigmas": False,
    "flow_shift": 1.0,
    "use_dynamic_shifting": False,
    "time_shift_type": "exponential",
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
    # the time grid
    "timestep_spacing": "linspace",
    "steps_offset": 0,
    "final_sigmas_type": "zero",
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_lu_lambdas": False,
    "time_grid": None,
    "karras_rho": 7.0,
    "ays_sigmas": None,
    # the model output
    "lower_order_final": True,
    "clip_sample": False,
    "clip_sample_range": 1.0,
    "thresholding": False,
    "dynamic_thresholding_ratio": 0.995,
    "sample_max_value": 1.0,
}
TIME_GRIDS = ("uniform_t", "uniform_lambda", "exponential", "quadratic", "karras", "ays")
_PREDICTIONS = {
    "epsilon": "epsilon",
    "sample": "sample",
    "v_prediction": "v_prediction",
    "flow_prediction": "flow",
}
_MAX_CACHED_STEP_VALUES = 20_000
_FLOW_CLASS_KEYS = ("shift", "use_dynamic_shifting", "base_shift", "max_shift")


class _EngineScheduler(SchedulerMixin, ConfigMixin):
    """Base of the façades: config handling, grids, the diffusers step protocol.

    Subclasses declare their algorithm options in ``ALGORITHM_CONFIG`` (name -> default) and implement
    :meth:`_solvers`; their ``__init__`` signature (what ``from_config`` reads) is built from
    ``ALGORITHM_CONFIG`` + :data:`COMMON_CONFIG`, so every option is a keyword argument and a config key.
    """

    order = 1  # one model evaluation per call of step()
    ALGORITHM_CONFIG: ClassVar[dict[str, Any]] = {}
    #: Values of another scheduler family's options mapped to ours (as diffusers does), so that
    #: ``X.from_config(other.config)`` works for a config saved with every key set (released checkpoints).
    FOREIGN_VALUES: ClassVar[dict[str, dict[str, str]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        options = {**COMMON_CONFIG, **cls.ALGORITHM_CONFIG}  # a subclass may change a common default

        def __init__(self, **config: Any) -> None:
            unknown = sorted(set(config) - set(options))
            if unknown:
                raise TypeError(f"{type(self).__name__} got unexpected arguments {unknown}")
            self._setup()

        kind = inspect.Parameter.KEYWORD_ONLY
        params = [inspect.Parameter(k, kind, default=v) for k, v in options.items()]
        __init__.__signature__ = inspect.Signature(
            [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD), *params]
        )
        __init__.__doc__ = cls.__doc__
        cls.__init__ = register_to_config(__init__)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: Any = None, return_unused_kwargs: bool = False, **kwargs: Any):
        """diffusers' ``from_config``, plus: a FlowMatch* config (SD3, Flux) becomes a flow-prediction
        config (its ``shift`` is our ``flow_shift``), so ``X.from_config(flux.scheduler.config)`` works."""
        if config is not None:
            config = _translate_flow_config(dict(config), kwargs)
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    def _setup(self) -> None:
        cfg = self.config
        if cfg.prediction_type not in _PREDICTIONS:
            raise ValueError(
                f"prediction_type must be one of {sorted(_PREDICTIONS)}, got {cfg.prediction_type!r}"
            )
        if cfg.final_sigmas_type not in ("zero", "sigma_min"):
            raise ValueError(
                f"final_sigmas_type must be 'zero' or 'sigma_min', got {cfg.final_sigmas_type!r}"
            )
        if cfg.time_grid is not None and cfg.time_grid not in TIME_GRIDS:
            raise ValueError(f"time_grid must be None or one of {TIME_GRIDS}, got {cfg.time_grid!r}")
        if cfg.timestep_spacing not in ("linspace", "leading", "trailing"):
            raise ValueError(
                f"timestep_spacing must be linspace, leading or trailing, got {cfg.timestep_spacing!r}"
            )
        if sum(bool(cfg[k]) for k in ("use_karras_sigmas", "use_exponential_sigmas", "use_lu_lambdas")) > 1:
            raise ValueError("use at most one of use_karras_sigmas, use_exponential_sigmas, use_lu_lambdas")
        if cfg.time_shift_type not in ("exponential", "linear"):
            raise ValueError(
                f"time_shift_type must be 'exponential' or 'linear', got {cfg.time_shift_type!r}"
            )
        self.is_flow = bool(cfg.use_flow_sigmas) or cfg.prediction_type == "flow_prediction"
        self.prediction = _PREDICTIONS[cfg.prediction_type]
        self.x0_limit = x0_limit_from_config(cfg)
        self._base_schedule = None if self.is_flow else _ddpm_schedule(cfg)
        for key, mapping in self.FOREIGN_VALUES.items():
            if cfg[key] in mapping:  # another scheduler's option, carried over by from_config
                self.register_to_config(**{key: mapping[cfg[key]]})
        self._base_solvers = self._solvers()
        self.solvers = self._base_solvers  # a run may specialise them (singlestep budgets)
        self.init_noise_sigma = 1.0
        self.timesteps: torch.Tensor | None = None
        self.sigmas: torch.Tensor | None = None
        self.num_inference_steps: int | None = None
        self.grid: TimeGrid | None = None
        self._begin_index: int | None = None
        self._reset_run()

    def _solvers(self) -> list[Solver]:
        """The solver of each grid step (the last one repeats)."""
        raise NotImplementedError

    def _reset_run(self) -> None:
        self._step_index: int | None = None
        self._state: SolverState | None = None
        self._plan: Generator[Evaluation, DenoiserOutput, SolverState] | None = None

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    @property
    def step_index(self) -> int | None:
        """Index into ``timesteps`` of the next call of :meth:`step` (None before the first)."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the next run at ``timesteps[begin_index]`` (pipelines call this for partial denoising)."""
        self._begin_index = int(begin_index)

    def solver_at(self, step: int) -> Solver:
        return self.solvers[min(step, len(self.solvers) - 1)]

    # ------------------------------------------------------------------ the time grid
    def schedule_for(self, mu: float | None = None) -> NoiseSchedule:
        """The noise schedule of a run (flow schedules depend on the dynamic shift ``mu``)."""
        if not self.is_flow:
            return self._base_schedule
        cfg = self.config
        if not cfg.use_dynamic_shifting:
            return FlowMatchingSchedule(shift=float(cfg.flow_shift))
        if mu is None:
            raise ValueError("this scheduler has use_dynamic_shifting=True: pass mu to set_timesteps")
        shift = math.exp(mu) if cfg.time_shift_type == "exponential" else float(mu)
        return FlowMatchingSchedule(shift=shift)

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: Sequence[float] | None = None,
        sigmas: Sequence[float] | None = None,
        mu: float | None = None,
    ) -> None:
        """Place the model evaluations of a run.

        Args:
            num_inference_steps: model evaluations; the grid comes from the config (``timestep_spacing``,
                the ``use_*_sigmas`` flags, or ``time_grid``).
            device: where ``timesteps`` live.
            timesteps: explicit, decreasing network timesteps (DDPM time, or 1000 * sigma for flows).
            sigmas: explicit, decreasing noise levels (sigma/alpha for DDPM; for flows the unshifted
                sigmas of FlowMatch schedulers, which the flow shift then warps, as in diffusers). A trailing
                0 is the final level; otherwise ``final_sigmas_type`` adds it.
            mu: the dynamic flow shift (``use_dynamic_shifting=True``; ignored otherwise, as in diffusers).
        """
        if timesteps is not None and sigmas is not None:
            raise ValueError("pass at most one of `timesteps` and `sigmas`")
        custom = timesteps if timesteps is not None else sigmas
        if custom is None and num_inference_steps is None:
            raise ValueError("pass num_inference_steps, timesteps or sigmas")
        schedule = self.schedule_for(mu)
        self.solvers = self._base_solvers  # _grid_for_budget may specialise them for this run
        if custom is not None:
            values = np.asarray(custom.cpu() if torch.is_tensor(custom) else custom, dtype=np.float64).ravel()
            levels = (
                self._times_from_timesteps(values)
                if timesteps is not None
                else self._times_from_sigmas(schedule, values)
            )
            grid = self._grid_from_levels(schedule, levels)
            if num_inference_steps is not None and num_inference_steps != grid.steps:
                raise ValueError(
                    f"num_inference_steps={num_inference_steps} does not match the {grid.steps} steps of the "
                    "given timesteps/sigmas"
                )
        else:
            if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
                raise ValueError(
                    f"num_inference_steps must be a positive integer, got {num_inference_steps!r}"
                )
            grid = self._grid_for_budget(schedule, num_inference_steps)
        self._install(grid, device)

    def _install(self, grid: TimeGrid, device: str | torch.device | None) -> None:
        calls = self._calls(grid)
        if self.grid is not None and len(self.grid.step_cache) < _MAX_CACHED_STEP_VALUES:
            # the cached values depend on (log-SNR, alpha, sigma) values and the config only: a repeated
            # set_timesteps (one per generation) finds them all here
            grid.step_cache.update(self.grid.step_cache)
        self.grid, self._call_plan = grid, calls
        _ = grid.lambdas, grid.alpha_values, grid.sigma_values  # host lists now, not inside step()
        times = [t for (_, _, t, _, _) in calls]
        levels = [s / a if not self.is_flow else s for (_, _, _, a, s) in calls]
        final = grid.sigma_values[-1] / grid.alpha_values[-1] if not self.is_flow else grid.sigma_values[-1]
        scale = self.config.num_train_timesteps if self.is_flow else 1.0
        self.timesteps = (
            torch.tensor(times, dtype=torch.float64).mul(scale).to(device=device, dtype=torch.float32)
        )
        self.sigmas = torch.tensor([*levels, final], dtype=torch.float32)
        self.num_inference_steps = len(calls)
        self._reset_run()
        self._begin_index = None

    def _calls(self, grid: TimeGrid) -> list[tuple[int, int, float, float, float]]:
        """(grid step, stage, t, alpha, sigma) of every model evaluation of a run, in order."""
        return [
            (i, k, *point)
            for i in range(grid.steps)
            for k, point in enumerate(self.solver_at(i).step_evaluations(i, grid))
        ]

    def _grid_for_budget(self, schedule: NoiseSchedule, n: int) -> TimeGrid:
        """The grid of a run of exactly n model evaluations."""
        base = self._base_solvers[0]
        if len(self._base_solvers) == 1 and not base.multistep:
            self.solvers = self._singlestep_orders(base, n)
            n = len(self.solvers)  # steps
        return self._grid_from_levels(schedule, self._default_levels(schedule, n))

    def _singlestep_orders(self, base: Solver, n: int) -> list[Solver]:
        """One singlestep solver per step, orders spread evenly (at most ``base.order``) so that the run
        costs exactly n evaluations, as diffusers' DPMSolverSinglestep; a step into sigma = 0 is order 1."""
        to_zero = self._final_sigmas_type() == "zero"
        budget = n - 1 if to_zero else n
        orders = []
        if budget > 0:
            steps = -(-budget // base.order)
            q, r = divmod(budget, steps)
            orders = [q + 1] * r + [q] * (steps - r)
        orders += [1] if to_zero else []
        return [
            replace(base, order=o, lower_order_final=False, stages=base.stages if o == base.order else None)
            for o in orders
        ]

    def _default_levels(self, schedule: NoiseSchedule, n: int) -> list[float]:
        """n evaluation times (decreasing) chosen by the config."""
        cfg = self.config
        kind = cfg.time_grid
        for flag, flag_kind in (
            ("use_karras_sigmas", "karras"),
            ("use_exponential_sigmas", "exponential"),
            ("use_lu_lambdas", "uniform_lambda"),
        ):
            if cfg[flag]:
                # diffusers' flags: n levels from sigma_max down to sigma_min, then the final level
                return self._levels_of(schedule, flag_kind, n, with_min=True)
        if kind is not None:
            return self._levels_of(schedule, kind, n, with_min=False)
        if self.is_flow:  # Flux's sigmas: linspace(1, 1/n, n), warped by the shift
            return schedule.warp(torch.linspace(1.0, 1.0 / n, n, dtype=torch.float64)).tolist()
        return self._ddpm_timesteps(n)

    def _levels_of(self, schedule: NoiseSchedule, kind: str, n: int, *, with_min: bool) -> list[float]:
        cfg = self.config
        t_start = t_end = None
        if self.is_flow and kind not in ("uniform_t", "quadratic"):
            # log-SNR grids need finite ends: one training step in from pure noise (alpha = 0) and the
            # shifted first training level at the clean end, as diffusers' flow sigmas
            step = 1.0 / cfg.num_train_timesteps
            t_start, t_end = 1.0 - step, float(schedule.warp(torch.tensor(step, dtype=torch.float64)))
        options = dict(t_start=t_start, t_end=t_end, rho=cfg.karras_rho)
        if kind == "ays":
            if cfg.ays_sigmas is None and self.is_flow:
                raise ValueError("time_grid='ays' on a flow model needs ays_sigmas (VE levels sigma/alpha)")
            options["sigmas"] = list(cfg.ays_sigmas or AYS_SD15_SIGMAS)
        if with_min:
            if n == 1:
                return [schedule.t_max if t_start is None else t_start]
            return make_grid(schedule, n - 1, kind, final="min", **options).t.tolist()
        # n steps of the kind's grid; its end point is replaced by the final level (zero or sigma_min)
        final = "min" if self._final_sigmas_type() == "sigma_min" else "zero"
        return make_grid(schedule, n, kind, final=final, **options).t[:-1].tolist()

    def _ddpm_timesteps(self, n: int) -> list[float]:
        """diffusers' integer timesteps for DPMSolverMultistep/DEIS/UniPC (``timestep_spacing``)."""
        cfg = self.config
        total = cfg.num_train_timesteps
        if cfg.timestep_spacing == "linspace":
            t = np.linspace(0, total - 1, n + 1).round()[::-1][:-1]
        elif cfg.timestep_spacing == "leading":
            ratio = total // (n + 1)
            t = (np.arange(0, n + 1) * ratio).round()[::-1][:-1] + cfg.steps_offset
        else:
            t = np.arange(total, 0, -total / n).round() - 1
        return t.astype(np.float64).tolist()

    def _times_from_timesteps(self, values: np.ndarray) -> list[float]:
        scale = self.config.num_train_timesteps if self.is_flow else 1.0
        return (values / scale).tolist()

    def _times_from_sigmas(self, schedule: NoiseSchedule, values: np.ndarray) -> list[float]:
        if self.is_flow:
            if np.any((values < 0) | (values > 1)):
                raise ValueError("flow sigmas must lie in [0, 1]")
            t = schedule.warp(torch.as_tensor(values, dtype=torch.float64))
            return t.tolist()
        if np.any(values < 0):
            raise ValueError("sigmas must be >= 0")
        ve = torch.as_tensor(values, dtype=torch.float64)
        t = torch.full_like(ve, -1.0)  # -1 marks the final level sigma = 0
        positive = ve > 0
        t[positive] = schedule.t_of_lambda(-torch.log(ve[positive]))
        return t.tolist()

    def _grid_from_levels(self, schedule: NoiseSchedule, levels: Sequence[float]) -> TimeGrid:
        """Evaluation times + the final level (sigma = 0 or the schedule's sigma_min) -> a TimeGrid."""
        levels = list(levels)
        ends_at_zero = bool(levels) and (levels[-1] == -1.0 or (self.is_flow and levels[-1] == 0.0))
        if ends_at_zero:
            levels = levels[:-1]
        if not levels:
            raise ValueError("need at least one evaluation level above sigma = 0")
        lo, hi = schedule.t_min, schedule.t_max
        if levels[0] == hi and float(schedule.alpha(torch.tensor(hi))) == 0 and self._needs_finite_start():
            # noise-prediction and singlestep updates need a finite start log-SNR: begin one training step
            # in from pure noise, where diffusers' flow grids begin
            levels[0] = hi - 1.0 / self.config.num_train_timesteps
        if any(not (lo <= t <= hi) for t in levels):
            raise ValueError(f"timesteps/sigmas outside the schedule's range [{lo}, {hi}] (in time units)")
        if any(b >= a for a, b in zip(levels, levels[1:])):
            raise ValueError("timesteps/sigmas must be strictly decreasing")
        final = "zero" if ends_at_zero or self._final_sigmas_type() == "zero" else "min"
        if final == "min" and levels[-1] <= lo:
            raise ValueError("final_sigmas_type='sigma_min' needs the last timestep above the schedule's end")
        return TimeGrid.from_times(schedule, [*levels, lo], final=final)

    def _needs_finite_start(self) -> bool:
        return any(s.prediction == "noise" or not s.multistep for s in self.solvers)

    def _final_sigmas_type(self) -> str:
        return self.config.final_sigmas_type

    # ------------------------------------------------------------------ the diffusers step protocol
    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        """Identity: these schedulers keep diffusers' VP/flow sample scaling (``init_noise_sigma`` = 1)."""
        return sample

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor]:
        """Take the model output at ``timesteps[step_index]`` and return the sample for the next timestep.

        ``timestep`` is not read (that would synchronise with the device): the index advances by one per
        call. ``generator`` (one, or a list with one per row) or ``variance_noise`` feeds stochastic (SDE)
        solvers.
        """
        if self.grid is None:
            raise ValueError("call set_timesteps before step")
        if self._step_index is None:
            self._step_index = self._begin_index or 0
        k = self._step_index
        if k >= len(self._call_plan):
            raise IndexError(f"step called {k + 1} times but the run has {len(self._call_plan)} timesteps")
        grid_step, stage, _, alpha, sigma = self._call_plan[k]
        work = torch.float32 if sample.dtype in (torch.float16, torch.bfloat16) else sample.dtype
        x, raw = sample.to(work), model_output.to(work)
        x0, eps = convert_prediction(raw, x, alpha, sigma, self.prediction, x0_limit=self.x0_limit)
        if stage == 0:
            self._start_step(grid_step, x, generator, variance_noise)
        try:
            prev = self._plan.send(DenoiserOutput(x0=x0, eps=eps)).x  # the next evaluation's sample
        except StopIteration as done:
            self._state, self._plan = done.value, None
            prev = self._state.x
        self._step_index = k + 1
        prev = prev.to(model_output.dtype)
        return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)

    def _start_step(self, i: int, x: torch.Tensor, generator, variance_noise) -> None:
        solver = self.solver_at(i)
        if self._state is None or self._state.step != i:
            self._state = replace(solver.init(x, self.grid), step=i)
        state = replace(self._state, x=x)
        noise: Callable[..., torch.Tensor]
        if variance_noise is not None:
            noise = lambda like, lam_s, lam_t: variance_noise.to(like)  # noqa: E731
        else:
            noise = GeneratorNoise(generator)
        self._plan = solver.advance(state, self.grid, noise)
        next(self._plan)  # the evaluation at the grid point: its output is the one being passed in

    # ------------------------------------------------------------------ forward process
    def _alpha_sigma(self, timesteps: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.as_tensor(timesteps).detach().to("cpu", torch.float64).reshape(-1)
        if self.is_flow:
            t = t / self.config.num_train_timesteps
            alpha, sigma = 1 - t, t
        else:
            alpha, sigma = self._base_schedule.alpha(t), self._base_schedule.sigma(t)
        shape = (-1,) + (1,) * (like.ndim - 1)
        return (
            alpha.to(like.device, like.dtype).reshape(shape),
            sigma.to(like.device, like.dtype).reshape(shape),
        )

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """x_t = alpha(t) x_0 + sigma(t) noise at network timesteps ``timesteps`` (one, or one per row)."""
        alpha, sigma = self._alpha_sigma(timesteps, original_samples)
        return alpha * original_samples + sigma * noise

    def scale_noise(self, sample: torch.Tensor, timestep: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """FlowMatch schedulers' name for :meth:`add_noise` (SD3/Flux image-to-image pipelines call it)."""
        return self.add_noise(sample, noise, timestep)


def x0_limit_from_config(cfg: Any) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """What is applied to every x0 prediction: dynamic thresholding (Saharia et al. 2022) or, as in
    DDPM/DDIM's ``clip_sample``, a clamp to [-clip_sample_range, clip_sample_range]."""
    if cfg.thresholding:
        return DynamicThreshold(cfg.dynamic_thresholding_ratio, cfg.sample_max_value)
    if cfg.clip_sample:
        bound = float(cfg.clip_sample_range)
        return lambda x0: x0.clamp(-bound, bound)
    return None


def _ddpm_schedule(cfg: Any) -> DiscreteVPSchedule:
    schedule = DiscreteVPSchedule.from_betas(
        beta_schedule=cfg.beta_schedule,
        num_train_timesteps=cfg.num_train_timesteps,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        trained_betas=cfg.trained_betas,
    )
    shift = cfg.get("snr_shift_scale")
    if shift is not None and float(shift) != 1.0:  # CogVideoX's SNR shift: SNR divided by the scale
        abar = schedule.alphas_cumprod.to(torch.float64)
        schedule = DiscreteVPSchedule(abar / (float(shift) + (1 - float(shift)) * abar))
    if cfg.rescale_betas_zero_snr:
        schedule = DiscreteVPSchedule(_zero_terminal_snr(schedule.alphas_cumprod))
    return schedule


def _zero_terminal_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Rescale to zero terminal SNR (Lin et al. 2024, Alg. 1); the last level is kept at abar = 2^-24
    as in diffusers, since alpha = 0 exactly has no finite log-SNR."""
    s = alphas_cumprod.sqrt()
    s0, s_last = s[0].clone(), s[-1].clone()
    s = (s - s_last) * s0 / (s0 - s_last)
    abar = s**2
    abar[-1] = 2.0**-24
    return abar


def _translate_flow_config(config: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    class_name = str(config.get("_class_name", ""))
    is_flow_class = "FlowMatch" in class_name or (
        "beta_start" not in config and any(k in config for k in _FLOW_CLASS_KEYS)
    )
    if not is_flow_class:
        return config
    config = {k: v for k, v in config.items() if k != "_class_name"}
    if "shift" in config:
        config["flow_shift"] = config.pop("shift")
    overrides.setdefault("prediction_type", "flow_prediction")
    overrides.setdefault("use_flow_sigmas", True)
    return config


# ---------------------------------------------------------------------- the public schedulers
class ExponentialIntegratorScheduler(_EngineScheduler):
    """Any solver of the engine as a diffusers scheduler.

    Config:
        solver: a preset name of :mod:`samplers.catalogue` (e.g. ``"unipc-bh2-2"``, ``"dpmsolver++3m"``).
        rules: instead of ``solver``, explicit per-step rules: a list of :class:`~samplers.solvers.Solver`
            keyword dicts (e.g. ``{"order": 2, "prediction": "data", "rule": "exact"}``); grid step i uses
            ``rules[i]`` and the last rule repeats. Rules of one run must share the prediction type and be
            multistep when there is more than one.
        linear_multistep: instead, a bespoke solver's ``{"prediction": "data" | "noise", "weights": [...]}``
            (:mod:`samplers.bespoke`; its weights hold for the grid they were fitted on).
        Plus :data:`COMMON_CONFIG` (schedule, grid, flow shift, thresholding, ``lower_order_final``).
    """

    ALGORITHM_CONFIG = {"solver": "dpmsolver++2m", "rules": None, "linear_multistep": None}

    def _solvers(self) -> list[Solver]:
        cfg = self.config
        if cfg.rules and cfg.linear_multistep:
            raise ValueError("pass at most one of `rules` and `linear_multistep`")
        if cfg.linear_multistep:
            from .bespoke import LinearMultistep

            spec = dict(cfg.linear_multistep)
            weights = tuple(tuple(row) for row in spec.pop("weights", ()))
            return [LinearMultistep(weights, **spec)]
        if cfg.rules:
            from .solver_search import RuleSchedule  # validates the rules of one run

            return [_with_lower_order_final(s, cfg) for s in RuleSchedule.from_dicts(cfg.rules).rules]
        return [_with_lower_order_final(get_preset(cfg.solver), cfg)]


class DPMSolverPPScheduler(_EngineScheduler):
    """DPM-Solver / DPM-Solver++ (Lu et al. 2022, 2022b), multistep or singlestep, ODE or SDE.

    Config (diffusers' names): ``solver_order`` 1-3; ``algorithm_type`` ``"dpmsolver++"`` (data
    prediction), ``"dpmsolver"`` (noise prediction), ``"sde-dpmsolver++"`` (SDE, eta = 1);
    ``solver_type`` ``"midpoint"`` (diffusers' coefficients: the midpoint rule at second order, the reference
    code's third-order update), ``"heun"`` (the exact phi_2 integral at second order) or ``"exact"``
    (exact Lagrange integration at every order); ``singlestep`` for DPM-Solver-2/3 stages (Alg. 1-2).
    """

    FOREIGN_VALUES = {
        "solver_type": {"bh1": "midpoint", "bh2": "midpoint", "logrho": "midpoint"},
        "algorithm_type": {"deis": "dpmsolver++"},
    }
    ALGORITHM_CONFIG = {
        "solver_order": 2,
        "algorithm_type": "dpmsolver++",
        "solver_type": "midpoint",
        "singlestep": False,
    }

    def _solvers(self) -> list[Solver]:
        cfg = self.config
        algorithms = ("dpmsolver++", "dpmsolver", "sde-dpmsolver++")
        if cfg.algorithm_type not in algorithms:
            raise ValueError(f"algorithm_type must be one of {algorithms}, got {cfg.algorithm_type!r}")
        rules = {"midpoint": "dpmsolver_ref", "heun": "exact", "exact": "exact"}
        if cfg.solver_type not in rules:
            raise ValueError(f"solver_type must be one of {sorted(rules)}, got {cfg.solver_type!r}")
        sde = cfg.algorithm_type.startswith("sde")
        if sde and cfg.singlestep:
            raise ValueError("the SDE variant is multistep")
        solver = Solver(
            order=cfg.solver_order,
            prediction="noise" if cfg.algorithm_type == "dpmsolver" else "data",
            rule=rules[cfg.solver_type],
            multistep=not cfg.singlestep,
            eta=1.0 if sde else 0.0,
            name=f"{cfg.algorithm_type}-{cfg.solver_order}{'S' if cfg.singlestep else 'M'}",
        )
        return [_with_lower_order_final(solver, cfg)]


class DEISScheduler(_EngineScheduler):
    """DEIS (Zhang & Chen 2023): noise prediction, Lagrange polynomial integrated exactly.

    Config: ``solver_order`` 1-3 (default 2, as diffusers); ``solver_type`` ``"logrho"`` (polynomial in
    log-SNR; diffusers' DEISMultistepScheduler), ``"t"`` (tAB, the paper's best) or ``"rho"`` (rhoAB)."""

    FOREIGN_VALUES = {
        "solver_type": {"midpoint": "logrho", "heun": "logrho", "bh1": "logrho", "bh2": "logrho"},
        "algorithm_type": {"dpmsolver++": "deis", "dpmsolver": "deis", "sde-dpmsolver++": "deis"},
    }
    # diffusers' DEISMultistepScheduler ends at sigma_min (it has no final_sigmas_type option)
    ALGORITHM_CONFIG = {
        "solver_order": 2,
        "algorithm_type": "deis",
        "solver_type": "logrho",
        "final_sigmas_type": "sigma_min",
    }

    def _solvers(self) -> list[Solver]:
        cfg = self.config
        bases = {"logrho": "lambda", "t": "t", "rho": "rho"}
        if cfg.algorithm_type != "deis" or cfg.solver_type not in bases:
            raise ValueError(f"DEIS needs algorithm_type='deis' and solver_type in {sorted(bases)}")
        solver = Solver(
            order=cfg.solver_order,
            prediction="noise",
            rule="exact",
            basis=bases[cfg.solver_type],
            name=f"DEIS-{cfg.solver_type}-{cfg.solver_order}",
        )
        return [_with_lower_order_final(solver, cfg)]


class UniPCScheduler(_EngineScheduler):
    """UniPC (Zhao et al. 2023): UniP-p predictor + UniC corrector (order p + 1 at no extra evaluation).

    Config (diffusers' names): ``solver_order``; ``solver_type`` ``"bh1"``/``"bh2"``; ``predict_x0``
    (data prediction); ``disable_corrector`` (accepted for compatibility; only an empty list is supported:
    use ``corrector=False`` to turn UniC off for the whole run)."""

    FOREIGN_VALUES = {"solver_type": {"midpoint": "bh2", "heun": "bh2", "logrho": "bh2"}}
    ALGORITHM_CONFIG = {
        "solver_order": 2,
        "solver_type": "bh2",
        "predict_x0": True,
        "corrector": True,
        "disable_corrector": [],
    }

    def _solvers(self) -> list[Solver]:
        cfg = self.config
        if cfg.solver_type not in ("bh1", "bh2"):
            raise ValueError(f"solver_type must be 'bh1' or 'bh2', got {cfg.solver_type!r}")
        if cfg.disable_corrector:
            raise ValueError("disable_corrector per step is not supported; use corrector=False")
        rule = f"unipc_{cfg.solver_type}"
        solver = Solver(
            order=cfg.solver_order,
            prediction="data" if cfg.predict_x0 else "noise",
            rule=rule,
            corrector=rule if cfg.corrector else None,
            name=f"UniPC-{cfg.solver_type}-{cfg.solver_order}",
        )
        return [_with_lower_order_final(solver, cfg)]


class DDIMSolverScheduler(_EngineScheduler):
    """DDIM (Song et al. 2021) = the first-order exponential integrator; ``eta`` > 0 adds noise (SA-Solver's
    tau, eta = 1 is DDPM-like ancestral sampling). With flow configs it is the Euler method of FlowMatch.
    ``set_alpha_to_one=False`` (Stable Diffusion's DDIM config) ends at the schedule's sigma_min."""

    ALGORITHM_CONFIG = {"eta": 0.0, "set_alpha_to_one": True, "timestep_spacing": "leading"}

    def _needs_finite_start(self) -> bool:
        return any(s.prediction == "noise" or not s.multistep for s in self.solvers)

    def _final_sigmas_type(self) -> str:
        return "sigma_min" if not self.config.set_alpha_to_one else self.config.final_sigmas_type

    def _ddpm_timesteps(self, n: int) -> list[float]:
        """DDIMScheduler's spacing: ``leading`` is arange(n) * (N // n) + steps_offset; ``linspace`` and
        ``trailing`` as for the other schedulers (each step goes to the next timestep)."""
        cfg = self.config
        if cfg.timestep_spacing != "leading":
            return super()._ddpm_timesteps(n)
        ratio = cfg.num_train_timesteps // n
        return ((np.arange(0, n) * ratio).round()[::-1] + cfg.steps_offset).astype(np.float64).tolist()

    def _solvers(self) -> list[Solver]:
        return [Solver(order=1, prediction="data", rule="exact", eta=float(self.config.eta), name="DDIM")]


def _with_lower_order_final(solver: Solver, cfg: Any) -> Solver:
    """diffusers' ``lower_order_final=True`` lowers the last orders below 15 steps (our ``None``)."""
    return replace(solver, lower_order_final=None if cfg.lower_order_final else False)


class DPMSolverV3Scheduler(_EngineScheduler):
    """DPM-Solver-v3 (Zheng et al. 2023) with precomputed empirical model statistics.

    Config: ``ems`` the path of a safetensors file written by
    ``samplers.ems.compute_ems(...).save(path)`` for this model and schedule (loaded on first use and
    memoised; an :class:`~samplers.ems.EmpiricalModelStatistics` object also works but does not serialise);
    ``solver_order`` 1-3; ``use_corrector`` (the predictor-corrector, no extra evaluation);
    ``final_sigmas_type`` defaults to ``"sigma_min"`` (the EMS end where the model was last evaluated).
    Usage::

        pipe.scheduler = DPMSolverV3Scheduler.from_config(pipe.scheduler.config, ems="stats.safetensors")
    """

    ALGORITHM_CONFIG = {
        "ems": None,
        "solver_order": 2,
        "use_corrector": True,
        "final_sigmas_type": "sigma_min",
    }

    def _solvers(self) -> list[Solver]:
        from .dpm_solver_v3 import DPMSolverV3

        cfg = self.config
        if cfg.ems is None:
            raise ValueError(
                "DPMSolverV3Scheduler needs `ems`: the path of an EMS safetensors file "
                "(samplers.ems.compute_ems(...).save(path)), e.g. "
                "from_config(config, ems='stats.safetensors')"
            )
        solver = DPMSolverV3(  # it checks the statistics (type, file) itself
            cfg.ems,
            order=cfg.solver_order,
            corrector=bool(cfg.use_corrector),
            name=f"DPM-Solver-v3-{cfg.solver_order}",
        )
        return [_with_lower_order_final(solver, cfg)]
