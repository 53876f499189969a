"""Masked-diffusion text on the bundled tiny model: accuracy against tokens per step for every unmasking
policy, search with the exact-match verifier, and steering by the MiniLM similarity reward.

The model (``pipelines/assets/text``, ``scripts/train_tiny_text.py``) solves list tasks (copy, reverse,
sort, add; ``rewards/list_tasks.py``). Every run is the LLaDA2Pipeline's own procedure (our stateless
scheduler; :func:`pipelines.text.text_chains` builds the same run as a search chain), on held-out prompts
drawn with a seed the training never used:

1. **Accuracy vs parallelism** (ParallelBench-style): exact-match accuracy per policy and steps per block
   (block 4: 4, 2 or 1 steps = 1, 2 or 4 tokens per step for the fixed-schedule policies; the threshold and
   entropy policies commit as many as their rule allows, at least the schedule's count), with the mean
   tokens committed per model call actually measured, greedy (temperature 0).
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
from pipelines.text import load_text_pipeline, text_chains  # noqa: E402
from pipelines.text_cli import bundled_defaults  # noqa: E402
from rewards.list_tasks import TASKS, ListTaskVerifier, random_example, solve  # noqa: E402
from samplers.masked import ConfidenceThreshold, EntropyBounded, LowConfidence, RandomOrder, ReMDM  # noqa: E402

HELD_OUT_SEED = 2026
POLICIES = {
    "low-confidence": (LowConfidence(), None),
    "random": (RandomOrder(), None),
    "threshold 0.9": (ConfidenceThreshold(0.9), None),
    "threshold 0.7": (ConfidenceThreshold(0.7), None),
    "entropy 0.1": (EntropyBounded(0.1), None),
    "entropy 0.5": (EntropyBounded(0.5), None),
    "low-confidence + ReMDM 0.1": (LowConfidence(), ReMDM(0.1)),
}


def prompts_per_task(per_task: int) -> list[tuple[str, str]]:
    g = torch.Generator().manual_seed(HELD_OUT_SEED)
    return [(task, random_example(g, task)[0]) for task in TASKS for _ in range(per_task)]


def run_chain(chain, generator) -> tuple[str, int, int]:
    """(decoded text, model calls, generated positions committed) of one run of the chain (a run that
    commits its EOS early stops there: the positions after it are never decoded)."""
    state = chain.prior(1)
    while state.step < chain.steps:
        state = chain.step(state, generator)
    start = chain.layout.prompt_length
    region = state.x[0, start : start + chain.layout.gen_length]
    return chain.decode(state.x)[0], chain.budget.nfe, int((region != chain.mask_token_id).sum())


def accuracy_table(pipe, prompts, block: int, gen_length: int) -> list[dict]:
    verifier = ListTaskVerifier()
    rows = []
    for name, (policy, remasking) in POLICIES.items():
        for steps in (block, block // 2, 1):
            correct, calls, committed, start = {t: 0 for t in TASKS}, 0, 0, time.perf_counter()
            for task, prompt in prompts:
                options = {"num_inference_steps": steps, "policy": policy, "remasking": remasking}
                chain = text_chains(pipe, [prompt], gen_length=gen_length, block_length=block, **options)[0]
                text, nfe, decoded = run_chain(chain, torch.Generator().manual_seed(0))
                correct[task] += int(float(verifier([text], [prompt])[0]) == 1.0)
                calls, committed = calls + nfe, committed + decoded
            n = len(prompts) // len(TASKS)
            rows.append(
                {"policy": name, "steps_per_block": steps, "calls": calls / len(prompts),
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
        "| policy | steps / block | model calls | tokens / call | " + " | ".join(TASKS) + " | mean |",
        "|---|---|---|---|" + "---|" * len(TASKS) + "---|",
    ]
    for r in accuracy:
        cells = " | ".join(f"{r['accuracy'][t]:.2f}" for t in TASKS)
        head = f"| {r['policy']} | {r['steps_per_block']} | {r['calls']:.1f} | {r['tokens_per_call']:.2f}"
        lines.append(f"{head} | {cells} | {r['mean']:.3f} |")
    lines += [
        "",
        f"## Search with the exact-match verifier (temperature 1, {block // 2} steps per block)",
        "",
        "| method | NFE per prompt | accuracy | " + " | ".join(TASKS) + " |",
        "|---|---|---|" + "---|" * len(TASKS),
    ]
    for r in search:
        cells = " | ".join(f"{r['per_task'][t]:.2f}" for t in TASKS)
        lines.append(f"| {r['method']} | {r['nfe']:.0f} | {r['accuracy']:.3f} | {cells} |")
    lines += [
        "",
        "## Steering by the MiniLM similarity reward",
        "",
        "| method | target | mean cosine similarity | NFE per prompt | example |",
        "|---|---|---|---|---|",
    ]
    for r in steering:
        lines.append(
            f"| {r['method']} | `{r['target']}` | {r['similarity']:.3f} | {r['nfe']:.0f} | `{r['example']}` |"
        )
    lines.append("")
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
