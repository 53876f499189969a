"""Several prompts searched side by side (their particles sharing network calls) against one after another.

``SearchPipeline(batch_prompts=True)`` runs the searches of a call's prompts in lockstep
(:func:`search.lockstep.run_lockstep`): every UNet call carries the particles of all prompts. With
``batch_prompts=False`` the prompts are searched one at a time. Both draw each prompt's noise from its own
generator, so they make the same images up to the rounding of batched kernels; this script measures, in one
run and on the same machine:

* UNet forward calls and rows (a forward pre-hook; rows = particles x 2 with classifier-free guidance),
* wall time (median of ``--repeats`` alternating runs) and its ratio,
* the largest pixel difference between the two modes' images and whether their NFE agree.

Model: the bundled digits pipeline (8x8, 20 steps, guidance 2) with FK steering (``smc``) and best-of-N
(``bon``), ``--particles`` each, reward: the bundled classifier's log p(digit | image). Writes
``docs/benchmarks/lockstep.md``.

Run: ``.venv/bin/python scripts/bench_lockstep.py`` (about two minutes on two CPU cores).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.digits import DIGITS_MODEL, DigitsPipeline  # noqa: E402
from pipelines.search_pipeline import SearchPipeline  # noqa: E402
from rewards import digits_reward  # noqa: E402


class UNetCalls:
    """Counts the UNet's forward calls and rows."""

    def __init__(self, unet):
        self.unet, self.calls, self.rows = unet, 0, 0

    def __enter__(self):
        def hook(module, args, kwargs):
            self.calls += 1
            self.rows += (args[0] if args else kwargs["sample"]).shape[0]

        self.handle = self.unet.register_forward_pre_hook(hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def run(pipe, method: str, prompts: list[str], particles: int, batched: bool):
    searcher = SearchPipeline.from_pipeline(
        pipe, search=method, reward=digits_reward(), particles=particles, batch_prompts=batched
    )
    generators = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
    with UNetCalls(pipe.unet) as counted, torch.no_grad():
        start = time.perf_counter()
        out = searcher(
            prompts, num_inference_steps=20, guidance_scale=2.0, generator=generators, output_type="pt"
        )
        seconds = time.perf_counter() - start
    return out, seconds, counted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=20, help="prompts per call (digits 0-9 repeated)")
    parser.add_argument("--particles", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks/lockstep.md")
    args = parser.parse_args()

    pipe = DigitsPipeline.from_pretrained(DIGITS_MODEL)
    prompts = [str(i % 10) for i in range(args.prompts)]
    rows = []
    for method in ("smc", "bon"):
        times: dict[bool, list[float]] = {True: [], False: []}
        results = {}
        for _ in range(args.repeats):
            for batched in (True, False):  # alternating, so both modes see the same machine state
                out, seconds, counted = run(pipe, method, prompts, args.particles, batched)
                times[batched].append(seconds)
                results[batched] = (out, counted)
        (side, side_calls), (alone, alone_calls) = results[True], results[False]
        diff = float((side.images - alone.images).abs().max())
        side_s, alone_s = statistics.median(times[True]), statistics.median(times[False])
        rows.append(
            {
                "method": method,
                "calls": (side_calls.calls, alone_calls.calls),
                "rows": (side_calls.rows, alone_calls.rows),
                "seconds": (side_s, alone_s),
                "speedup": alone_s / side_s,
                "diff": diff,
                "same_nfe": side.nfe == alone.nfe,
                "mean_reward": (statistics.fmean(side.scores), statistics.fmean(alone.scores)),
            }
        )
        print(rows[-1], flush=True)

    lines = [
        "# Prompts searched side by side vs one after another",
        "",
        f"`scripts/bench_lockstep.py`: the bundled digits pipeline, {args.prompts} prompts (digits 0-9) per "
        f"call, {args.particles} particles each, 20 steps, guidance 2, reward log p(digit | image); torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats} alternating runs.",
        "",
        "| method | UNet calls (side by side / one by one) | UNet rows | seconds | speed-up | max pixel diff "
        "| same NFE | mean reward (side / one) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['calls'][0]} / {r['calls'][1]} | {r['rows'][0]} / {r['rows'][1]} "
            f"| {r['seconds'][0]:.2f} / {r['seconds'][1]:.2f} | {r['speedup']:.2f}x | {r['diff']:.1e} "
            f"| {r['same_nfe']} | {r['mean_reward'][0]:.4g} / {r['mean_reward'][1]:.4g} |"
        )
    lines += [
        "",
        "Side by side, every UNet call carries the particles of all prompts, so the number of calls drops by",
        "the number of prompts while the rows (and the NFE charged to each prompt) stay the same. Pixel",
        "differences come only from kernels rounding differently at another batch size ([-1, 1] scale).",
        "",
    ]
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
