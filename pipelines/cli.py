"""The ``dsample`` command line.

``dsample demo`` compares solvers at a fixed number of model evaluations on the analytic Gaussian-mixture
model, against its exact probability-flow ODE solution. It runs offline in seconds.
``dsample solvers`` lists the solver presets.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

import torch

from samplers import Denoiser, DiscreteVPSchedule, FlowMatchingSchedule, finest_grid, make_grid, sample
from samplers.analytic import GaussianMixture, make_net, solve_probability_flow
from samplers.catalogue import ODE_PRESETS, SDE_PRESETS, get_preset

DEMO_SOLVERS = (
    "ddim",
    "dpmsolver++2m",
    "dpmsolver++3m",
    "unipc-bh2-2",
    "unipc-bh2-3",
    "deis-tab3",
    "dpmsolver-3",
)
SCHEDULES = {
    "vp": lambda: DiscreteVPSchedule.from_betas("scaled_linear", beta_start=0.00085, beta_end=0.012),
    "flow": lambda: FlowMatchingSchedule(shift=3.0),
}


def _demo(args: argparse.Namespace) -> int:
    schedule = SCHEDULES[args.schedule]()
    gmm = GaussianMixture.random(dim=args.dim, n_components=4, seed=args.seed)
    net = make_net(
        gmm, lambda t: (schedule.alpha(t), schedule.sigma(t)), "epsilon" if args.schedule == "vp" else "flow"
    )
    prediction = "epsilon" if args.schedule == "vp" else "flow"
    # Every solver gets the same start; solvers that need a finite start log-SNR start just below t_max.
    t_start = schedule.t_max if args.schedule == "vp" else 0.999
    reference_grid = make_grid(schedule, 1, "uniform_t", final="zero", t_start=t_start)
    a0, s0 = float(reference_grid.alpha[0]), float(reference_grid.sigma[0])
    x_T = torch.randn(
        args.batch, args.dim, generator=torch.Generator().manual_seed(args.seed), dtype=torch.float64
    )
    x_T = x_T * math.hypot(a0, s0)
    exact = solve_probability_flow(gmm, x_T, (a0, s0), [(1.0, 0.0)])[0]
    kind = "uniform_lambda" if args.schedule == "vp" else "uniform_t"
    solvers = {name: get_preset(name) for name in args.solvers}  # unknown names fail before any work
    print(
        f"Error against the exact ODE solution at <= {args.nfe} model evaluations "
        f"({args.schedule} schedule, {kind} grid, d={args.dim})"
    )
    print(f"{'solver':<22}{'steps':>6}{'NFE':>5}{'RMS error':>12}")
    for name, solver in solvers.items():
        try:
            grid = finest_grid(solver, schedule, args.nfe, kind, final="zero", t_start=t_start)
        except ValueError as err:
            print(f"{name:<22}  {err}")
            continue
        denoiser = Denoiser(net, prediction)
        out = sample(denoiser, x_T, grid, solver, noise=args.seed)
        rms = ((out - exact) ** 2).mean().sqrt().item()
        print(f"{name:<22}{grid.steps:>6}{denoiser.nfe:>5}{rms:>12.3e}")
    return 0


def _solvers(_: argparse.Namespace) -> int:
    print("ODE solvers (theoretical order):")
    for name, preset in ODE_PRESETS.items():
        print(f"  {name:<24} {preset.order}")
    print("SDE solvers:")
    for name in SDE_PRESETS:
        print(f"  {name}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dsample", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="compare solvers on the analytic Gaussian mixture (offline)")
    demo.add_argument("--nfe", type=int, default=10, help="model evaluations per solver (default 10)")
    demo.add_argument("--schedule", choices=sorted(SCHEDULES), default="vp")
    demo.add_argument(
        "--solvers",
        type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
        default=list(DEMO_SOLVERS),
        help="comma-separated preset names (see `dsample solvers`)",
    )
    demo.add_argument("--dim", type=int, default=32)
    demo.add_argument("--batch", type=int, default=256)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    sub.add_parser("solvers", help="list solver presets").set_defaults(func=_solvers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "nfe", 1) < 1 or getattr(args, "dim", 1) < 1 or getattr(args, "batch", 1) < 1:
        parser.error("--nfe, --dim and --batch must be positive")
    try:
        return args.func(args)
    except ValueError as err:
        parser.exit(2, f"dsample: error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
