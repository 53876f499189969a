"""The ``dsample`` command line.

``dsample demo`` compares solvers at a fixed number of model evaluations on the analytic Gaussian-mixture
model, against its exact probability-flow ODE solution. It runs offline in seconds.
``dsample solvers`` lists the solver presets.
``dsample generate`` writes images from prompts (the bundled digits model by default, or any diffusers
text-to-image model): deterministic per image, resumable, and split across processes under
``accelerate launch``; see :mod:`pipelines.generate`.
``dsample score`` scores a ``generate`` run's images with a reward (``dsample rewards`` lists them).
``dsample text`` generates text by masked diffusion (the bundled tiny model by default), optionally searched.
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


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (``dsample: error: ...``) with exit code 2."""

    def error(self, message: str):
        self.exit(2, f"dsample: error: {message}\n")


def _generate(args: argparse.Namespace) -> int:
    from .generate import GenerateOptions, generate

    result = generate(_options(GenerateOptions, args))
    if result["is_main"]:
        rate = result["images"] / result["seconds"] if result["seconds"] > 0 else 0.0
        kind = "videos" if result.get("videos") else "images"
        print(
            f"dsample: {result['images']} {kind} in {result['seconds']:.1f} s ({rate:.2f} {kind}/s), "
            f"{result['skipped']} already done; {kind} in {result['out']}/{kind}, "
            f"grids in {result['out']}/grids"
        )
        found = result.get("search")
        if found and found["mean_reward"] is not None:
            print(
                f"dsample: search {found['search']} ({found['particles']} particles): mean "
                f"{found['reward_name']} reward {found['mean_reward']:.4g}, mean NFE {found['mean_nfe']:.4g} "
                "per image (this run's images; each one's in manifest.jsonl)"
            )
    return 0


def _add_generate(sub) -> None:
    from .sampler_names import DEFAULT_SAMPLER

    gen = sub.add_parser(
        "generate",
        help="generate images from prompts (bundled digits model by default)",
        description="Generate images. The bundled digits model takes prompts '0'-'9' or 'zero'-'nine' "
        "(all ten if none are given); --model takes any diffusers text-to-image id or directory.",
    )
    gen.add_argument("--prompt", dest="prompts", action="append", help="a prompt (repeatable)")
    gen.add_argument(
        "--prompts",
        dest="prompt_file",
        metavar="FILE",
        help="prompt file: .txt one per line, "
        "or .jsonl with per-line overrides (steps, guidance, seed, num_images, sampler, ...)",
    )
    gen.add_argument("--model", default="digits", help="'digits' (bundled, default), a hub id or a directory")
    gen.add_argument(
        "--sampler",
        default=DEFAULT_SAMPLER,
        help=f"e.g. 'DPM++ 2M Karras', dpmpp_2m, uni_pc_bh2, DEIS, DDIM, Euler, or a preset "
        f"from `dsample solvers` (default {DEFAULT_SAMPLER!r})",
    )
    gen.add_argument("--steps", type=int, default=20, help="model evaluations per image (default 20)")
    gen.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--num-images", type=int, default=1, help="images per prompt (default 1)")
    gen.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="images per model call (with --search: images searched side by side, sharing model calls)",
    )
    gen.add_argument("--negative-prompt", default=None)
    gen.add_argument("--width", type=int, default=None)
    gen.add_argument("--height", type=int, default=None)
    gen.add_argument(
        "--device", default=None, help="cpu, cuda, ... (default: cpu for digits, else cuda if present)"
    )
    gen.add_argument("--out", default="outputs", help="output directory (default ./outputs)")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")
    from search.registry import SEARCH_METHODS

    gen.add_argument(
        "--search",
        default=None,
        metavar="METHOD",
        help=f"inference-time search for each image: {', '.join(SEARCH_METHODS)} (or an alias: best-of-n, "
        "fk, dts*, evosearch, zo); needs --reward; images are then made one at a time",
    )
    gen.add_argument(
        "--particles", type=int, default=None, help="the search's size (particles, beams, ...; default 8)"
    )
    gen.add_argument("--max-nfe", type=int, default=None, help="the search's NFE budget per image")
    gen.add_argument(
        "--reward", default=None, help="what --search maximises: a name of `dsample rewards` or module:Class"
    )
    gen.add_argument(
        "--reward-option",
        dest="reward_options",
        action="append",
        metavar="KEY=VALUE",
        help="reward constructor option, repeatable (as `dsample score --option`)",
    )
    gen.add_argument(
        "--num-frames",
        type=int,
        default=None,
        help="video models: frames per video (default: the pipeline's own, e.g. Wan 81, CogVideoX 49)",
    )
    gen.add_argument(
        "--fps",
        type=float,
        default=None,
        help="video models: frames per second of the GIF/MP4 (default 16 for Wan, else 8)",
    )
    gen.add_argument(
        "--video-format",
        dest="video_formats",
        action="append",
        metavar="FORMAT",
        help="video models: gif, frames, mp4 (repeatable or a comma list; default gif,frames); the GIF "
        "(videos/P_S.gif) is always written, frames go to videos/P_S/, mp4 needs the [video] extra",
    )
    gen.set_defaults(func=_generate)


def _score(args: argparse.Namespace) -> int:
    from .score import ScoreOptions, parse_option, score_run

    reward_options = dict(parse_option(text) for text in args.options or [])
    options = ScoreOptions(args.run, args.reward, reward_options, args.batch_size, args.device, args.quiet)
    summary = score_run(options)
    print(f"dsample: {summary['images']} images scored with {summary['reward']} ({summary['scale']})")
    print(f"  mean {summary['mean']:.4g}, min {summary['min']:.4g}, max {summary['max']:.4g}")
    for prompt, mean in summary["per_prompt"].items():
        print(f"  {prompt!r}: mean {mean:.4g}")
    print(f"  scores in {summary['file']}")
    return 0


def _rewards(_: argparse.Namespace) -> int:
    from rewards.registry import REWARD_NAMES

    print("Rewards (load_reward(name, **options); dsample score --reward NAME --option key=value):")
    for name, (_, attribute, description) in REWARD_NAMES.items():
        print(f"  {name:<24} {attribute:<26} {description}")
    return 0


def _add_score(sub) -> None:
    score = sub.add_parser(
        "score",
        help="score the images of a `generate` run with a reward",
        description="Score every image listed in RUN/manifest.jsonl with a reward (its prompt as the "
        "reward's prompt); writes RUN/scores/REWARD.jsonl. `dsample rewards` lists the rewards.",
    )
    score.add_argument("run", metavar="RUN", help="a `dsample generate` output directory")
    score.add_argument("--reward", default="digits", help="reward name (default 'digits')")
    score.add_argument(
        "--option",
        dest="options",
        action="append",
        metavar="KEY=VALUE",
        help="reward constructor option, repeatable (e.g. --option model=local-dir:/path/to/clip)",
    )
    score.add_argument("--batch-size", type=int, default=None, help="images per reward call")
    score.add_argument("--device", default=None, help="cpu, cuda, ... (default cpu)")
    score.add_argument("--quiet", action="store_true", help="no progress bar")
    score.set_defaults(func=_score)


def _report(args: argparse.Namespace) -> int:
    from .report import write_report

    print(write_report(args.run, out=args.out, reward=args.reward))
    return 0


def _add_report(sub) -> None:
    report = sub.add_parser(
        "report",
        help="write a self-contained HTML gallery of a `generate` run",
        description="Write RUN/report.html: the run's parameters, every image (embedded) best reward "
        "first, a per-prompt summary and, for search runs, reward against NFE. The reward is the "
        "manifest's search reward or RUN/scores/NAME.jsonl from `dsample score`.",
    )
    report.add_argument("run", metavar="RUN", help="a `dsample generate` output directory")
    report.add_argument(
        "--reward",
        default=None,
        metavar="NAME",
        help="sort by RUN/scores/NAME.jsonl, or 'manifest' for the search reward "
        "(default: the search reward, else the only scores file)",
    )
    report.add_argument("--out", default=None, metavar="FILE", help="output file (default RUN/report.html)")
    report.set_defaults(func=_report)


def _text(args: argparse.Namespace) -> int:
    from .text_cli import TextOptions, run_text

    options = _options(TextOptions, args)
    records = run_text(options)
    for r in records:
        found = f"  [reward {r['reward']:.4g}, NFE {r['nfe']}]" if "reward" in r else ""
        print(f"{r['prompt']} -> {r['text']}{found}")
    if options.out:
        print(f"dsample: {len(records)} samples in {options.out}")
    return 0


def _add_text(sub) -> None:
    text = sub.add_parser(
        "text",
        help="generate text by masked diffusion (bundled tiny model by default), optionally with search",
        description="Masked discrete diffusion in diffusers' LLaDA2Pipeline with our stateless scheduler. "
        "The bundled model solves list tasks, e.g. --prompt 'sort : 3 1 2 ='.",
    )
    text.add_argument("--prompt", dest="prompts", action="append", help="a prompt (repeatable)")
    text.add_argument("--prompt-file", default=None, help="a text file, one prompt per line")
    text.add_argument("--model", default=None, help="hub id or directory (default: the bundled model)")
    text.add_argument("--trust-remote-code", action="store_true", help="for LLaDA-style remote-code models")
    text.add_argument("--policy", default="low-confidence", choices=["low-confidence", "random", "threshold",
                      "entropy"], help="unmasking policy (default low-confidence)")  # fmt: skip
    text.add_argument("--threshold", type=float, default=0.9, help="the threshold policy's confidence")
    text.add_argument("--entropy-bound", type=float, default=0.5, help="the entropy policy's bound")
    text.add_argument("--remask-eta", type=float, default=0.0, help="ReMDM remasking cap (0: off)")
    text.add_argument(
        "--adaptive-blocks",
        action="store_true",
        help="AdaBlock: size each block up to a confident delimiter (full context)",
    )
    text.add_argument(
        "--delimiter",
        dest="delimiters",
        action="append",
        metavar="TOKEN",
        help="an AdaBlock delimiter token (repeatable; default: newline and EOS)",
    )
    text.add_argument("--delimiter-threshold", type=float, default=0.3,
                      help="AdaBlock's delimiter confidence threshold (default 0.3)")  # fmt: skip
    text.add_argument("--gen-length", type=int, default=None, help="generated tokens")
    text.add_argument("--block-length", type=int, default=None, help="semi-autoregressive block size")
    text.add_argument("--steps", type=int, default=None, help="steps per block (default: block length)")
    text.add_argument("--temperature", type=float, default=0.0)
    text.add_argument("--seed", type=int, default=0)
    text.add_argument("--num-samples", type=int, default=1, help="samples per prompt")
    text.add_argument("--search", default=None, help="bon, paths, beam, smc, dts or rbf")
    text.add_argument("--particles", type=int, default=8)
    text.add_argument("--max-nfe", type=int, default=None)
    text.add_argument("--reward", default=None, help="a text reward (list-task, sentence-similarity, ...)")
    text.add_argument("--reward-option", dest="reward_options", action="append", metavar="KEY=VALUE")
    text.add_argument("--out", default=None, help="also write one JSON line per sample to this file")
    text.add_argument("--device", default=None)
    text.add_argument("--quiet", action="store_true")
    text.set_defaults(func=_text)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dsample", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
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
    _add_generate(sub)
    _add_score(sub)
    _add_report(sub)
    _add_text(sub)
    sub.add_parser("rewards", help="list the rewards by name").set_defaults(func=_rewards)
    return parser


def _options(cls, args: argparse.Namespace):
    """An options dataclass from the parsed arguments of the same names."""
    return cls(**{k: v for k, v in vars(args).items() if k in cls.__dataclass_fields__})


def main(argv: Sequence[str] | None = None) -> int:
    from .prompts import UsageError

    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "nfe", 1) < 1 or getattr(args, "dim", 1) < 1 or getattr(args, "batch", 1) < 1:
        parser.error("--nfe, --dim and --batch must be positive")
    try:
        return args.func(args)
    except UsageError as err:  # bad user input: one line, exit code 2, nothing written
        print(f"dsample: error: {err}", file=sys.stderr)
        return 2
    except ValueError as err:
        parser.exit(2, f"dsample: error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
