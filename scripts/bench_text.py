"""Masked-diffusion text on the bundled tiny model: accuracy against tokens per step for every unmasking
policy, search with the exact-match verifier, and steering by the MiniLM similarity reward.

The model (``pipelines/assets/text``, ``scripts/train_tiny_text.py``) solves list tasks (copy, reverse,
sort, add, shuffle; ``rewards/list_tasks.py``). Every run is the LLaDA2Pipeline's own procedure (our
stateless scheduler; :func:`pipelines.text.text_chains` builds the same run as a search chain), except the
AdaBlock rows (full context, blocks sized as they go, which the pipeline cannot host), on held-out prompts
drawn with a seed the training never used:

1. **Accuracy vs parallelism** (ParallelBench-style): exact-match accuracy per policy and its parallelism
   knob -- steps per block for the fixed-schedule policies (block 4: 4, 2 or 1 steps = 1, 2 or 4 tokens per
   step), the threshold and the entropy bound for the adaptive ones (at 4 steps per block, so at least one
   token per step) and for AdaBlock (``[EOS]`` as the delimiter, threshold 0.3) -- with the mean tokens
   committed per model call actually measured, greedy (temperature 0). ``shuffle`` is the task whose tokens
   must agree with each other (any ordering of the operands is right, each position alone is uniform over
   them), so committing several tokens per call costs accuracy there first.
2. **Search with the verifier**: at temperature 1 and 2 tokens per step, best-of-1 (one sample), best-of-8
   and SMC with 8 particles (the same NFE as best-of-8) scored by ``ListTaskVerifier`` (exact match), accuracy
   of the returned answer.
3. **MiniLM steering**: mean cosine similarity (``SentenceSimilarity``, all-MiniLM-L6-v2, offline) of the
   generated text to a target text on ``add`` prompts (the task the model is unsure of, so samples differ),
   without search, and with best-of-8 and SMC (8 particles, equal NFE) on the similarity reward.

Writes ``docs/benchmarks/text.md``. Run: ``.venv/bin/python scripts/bench_text.py`` (a few minutes on two CPU
cores; ``--per-task`` for the number of prompts per task).
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

from pipelines.search_pipeline import SearchPipeline  # noqa: E402
from pipelines.text import adablock_for, load_text_pipeline, text_chains  # noqa: E402
from pipelines.text_cli import bundled_defaults  # noqa: E402
from rewards.list_tasks import TASKS, ListTaskVerifier, random_example, solve  # noqa: E402
from samplers.masked import ConfidenceThreshold, EntropyBounded, LowConfidence, RandomOrder, ReMDM  # noqa: E402
from search.chain import advance  # noqa: E402

HELD_OUT_SEED = 2026
#: (policy, its knob as printed, policy object, ReMDM, steps per block as a fraction of the block, AdaBlock)
SETTINGS = [
    *[("low-confidence", f"{f}", LowConfidence(), None, f, False) for f in (1, 1 / 2, 1 / 4)],
    *[("random", f"{f}", RandomOrder(), None, f, False) for f in (1, 1 / 2, 1 / 4)],
    *[("threshold", f"{t}", ConfidenceThreshold(t), None, 1, False) for t in (0.95, 0.9, 0.7, 0.5, 0.3)],
    *[("entropy", f"{g}", EntropyBounded(g), None, 1, False) for g in (0.1, 0.5, 1.0, 2.0)],
    *[("low-confidence + ReMDM 0.1", f"{f}", LowConfidence(), ReMDM(0.1), f, False) for f in (1, 1 / 2)],
    *[("AdaBlock + threshold", f"{t}", ConfidenceThreshold(t), None, 1, True) for t in (0.9, 0.7, 0.5)],
]


def standard_error(values: list[float]) -> float:
    """Standard error of the mean of ``values`` (the prompts differ, so this is the spread over prompts)."""
    return statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else float("nan")


def prompts_per_task(per_task: int) -> list[tuple[str, str]]:
    g = torch.Generator().manual_seed(HELD_OUT_SEED)
    return [(task, random_example(g, task)[0]) for task in TASKS for _ in range(per_task)]


def run_chain(chain, generator) -> tuple[str, int, int]:
    """(decoded text, model calls, generated positions committed) of one run of the chain (a run that
    commits its EOS early stops there: the positions after it are never decoded)."""
    state = advance(chain, chain.prior(1), generator=generator)
    start = chain.layout.prompt_length
    region = state.x[0, start : start + chain.layout.gen_length]
    return chain.decode(state.x)[0], chain.budget.nfe, int((region != chain.mask_token_id).sum())


def accuracy_table(pipe, prompts, block: int, gen_length: int) -> list[dict]:
    verifier = ListTaskVerifier()
    adablock = adablock_for(pipe.tokenizer, [pipe.tokenizer.eos_token], threshold=0.3)
    rows = []
    for name, knob, policy, remasking, fraction, adaptive in SETTINGS:
        steps = max(1, round(block * fraction))
        if name in ("low-confidence", "random") or name.endswith("ReMDM 0.1"):
            knob = f"{steps} step{'s' if steps > 1 else ''} / block"
        correct, calls, committed, start = {t: 0 for t in TASKS}, 0, 0, time.perf_counter()
        for task, prompt in prompts:
            options = {"num_inference_steps": steps, "policy": policy, "remasking": remasking,
                       "adaptive_blocks": adablock if adaptive else None}  # fmt: skip
            chain = text_chains(pipe, [prompt], gen_length=gen_length, block_length=block, **options)[0]
            text, nfe, decoded = run_chain(chain, torch.Generator().manual_seed(0))
            correct[task] += int(float(verifier([text], [prompt])[0]) == 1.0)
            calls, committed = calls + nfe, committed + decoded
        n = len(prompts) // len(TASKS)
        rows.append(
            {"policy": name, "knob": knob, "calls": calls / len(prompts),
             "tokens_per_call": committed / calls,
             "accuracy": {t: correct[t] / n for t in TASKS},
             "mean": sum(correct.values()) / len(prompts), "seconds": time.perf_counter() - start}
        )  # fmt: skip
        print(rows[-1], flush=True)
    return rows


def search_runs(pipe, reward, prompts: list[str], block: int, gen_length: int, particles: int, first: str):
    """(label, output) of the three searches compared at temperature 1, half a block per step: one sample
    (labelled ``first``), best-of-``particles`` and SMC with ``particles`` particles (the same NFE)."""
    call = {
        "gen_length": gen_length,
        "block_length": block,
        "num_inference_steps": block // 2,
        "temperature": 1.0,
    }
    for label, method, size in ((first, "bon", 1), (f"best-of-{particles}", "bon", particles),
                                (f"SMC, {particles} particles", "smc", particles)):  # fmt: skip
        searcher = SearchPipeline.from_pipeline(pipe, method, reward, particles=size)
        generators = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
        yield label, searcher(prompts, generator=generators, **call)


def search_table(pipe, prompts, block: int, gen_length: int, particles: int) -> list[dict]:
    verifier = ListTaskVerifier()
    texts = [p for _, p in prompts]
    rows = []
    for label, out in search_runs(pipe, verifier, texts, block, gen_length, particles, "best-of-1"):
        correct = [float(verifier([t], [p])[0]) for t, p in zip(out.texts, texts, strict=True)]
        per_task = {
            t: statistics.fmean(c for c, (task, _) in zip(correct, prompts) if task == t) for t in TASKS
        }
        rows.append(
            {
                "method": label,
                "nfe": statistics.fmean(out.nfe),
                "accuracy": statistics.fmean(correct),
                "stderr": standard_error(correct),
                "per_task": per_task,
            }
        )
        print(rows[-1], flush=True)
    return rows


def steering_table(pipe, block: int, gen_length: int, particles: int, count: int) -> list[dict]:
    from rewards.text import SentenceSimilarity

    target = "9 9 9 9"
    similarity = SentenceSimilarity(target=target)
    g = torch.Generator().manual_seed(HELD_OUT_SEED + 1)
    prompts = [random_example(g, "add")[0] for _ in range(count)]  # the task the model is unsure of
    rows = []
    for label, out in search_runs(pipe, similarity, prompts, block, gen_length, particles, "no search"):
        sims = similarity(out.texts, prompts).tolist()
        example = f"{prompts[0]} -> {out.texts[0]}"
        rows.append(
            {
                "method": label,
                "target": target,
                "similarity": statistics.fmean(sims),
                "stderr": standard_error(sims),
                "nfe": statistics.fmean(out.nfe),
                "example": example,
            }
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-task", type=int, default=50, help="held-out prompts per task")
    parser.add_argument("--particles", type=int, default=8)
    parser.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks/text.md")
    args = parser.parse_args()
    torch.set_num_threads(1)

    pipe = load_text_pipeline()
    defaults = bundled_defaults()
    block = defaults.get("block_length", pipe.scheduler.config.block_length)
    gen_length = defaults.get("gen_length", pipe.model.config.gen_length)
    prompts = prompts_per_task(args.per_task)
    assert all(solve(p) for _, p in prompts)
    accuracy = accuracy_table(pipe, prompts, block, gen_length)
    search = search_table(pipe, prompts, block, gen_length, args.particles)
    steering = steering_table(pipe, block, gen_length, args.particles, 4 * args.per_task // 2)

    lines = [
        "# Masked-diffusion text on the bundled tiny model",
        "",
        f"`scripts/bench_text.py`; {args.per_task} held-out prompts per task (seed {HELD_OUT_SEED}), "
        f"generation length {gen_length}, blocks of {block} (LLaDA2Pipeline layout), "
        f"torch {torch.__version__}.",
        "",
        "## Accuracy against tokens per model call (greedy)",
        "",
        "| policy | setting | model calls | tokens / call | " + " | ".join(TASKS) + " | mean |",
        "|---|---|---|---|" + "---|" * len(TASKS) + "---|",
    ]
    for r in accuracy:
        cells = " | ".join(f"{r['accuracy'][t]:.2f}" for t in TASKS)
        head = f"| {r['policy']} | {r['knob']} | {r['calls']:.1f} | {r['tokens_per_call']:.2f}"
        lines.append(f"{head} | {cells} | {r['mean']:.3f} |")
    lines += [
        "",
        f"## Search with the exact-match verifier (temperature 1, {block // 2} steps per block)",
        "",
        "| method | NFE per prompt | accuracy ± s.e. | " + " | ".join(TASKS) + " |",
        "|---|---|---|" + "---|" * len(TASKS),
    ]
    for r in search:
        cells = " | ".join(f"{r['per_task'][t]:.2f}" for t in TASKS)
        accuracy = f"{r['accuracy']:.3f} ± {r['stderr']:.3f}"
        lines.append(f"| {r['method']} | {r['nfe']:.0f} | {accuracy} | {cells} |")
    lines += [
        "",
        "## Steering by the MiniLM similarity reward",
        "",
        "| method | target | mean cosine similarity ± s.e. | NFE per prompt | example |",
        "|---|---|---|---|---|",
    ]
    for r in steering:
        lines.append(
            f"| {r['method']} | `{r['target']}` | {r['similarity']:.3f} ± {r['stderr']:.3f} | {r['nfe']:.0f} "
            f"| `{r['example']}` |"
        )
    lines.append("")
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
