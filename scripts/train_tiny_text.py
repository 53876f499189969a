"""Train the bundled tiny masked-diffusion text model on CPU (``pipelines/assets/text``).

Task family: :mod:`rewards.list_tasks` (copy / reverse / sort / shuffle lists of digits, add two integers;
shuffle's target is a fresh uniformly random ordering each time it is drawn), drawn
on the fly with :func:`rewards.list_tasks.random_example`; the held-out evaluation prompts (200 per task,
seed :data:`EVAL_SEED`) are excluded from training.

Sequence layout (training and generation): ``[PAD]* prompt gen`` where the prompt is left-padded with
``[PAD]`` (attention_mask 0) to :data:`PROMPT_LENGTH` tokens and the generation region has
:data:`GEN_LENGTH` tokens: the answer, then ``[EOS]`` repeated to fill it (LLaDA's convention, so answers
have variable length). Pads are invisible (attention_mask 0), so an unpadded prompt works too. Position ids:
for half of the sequences they count from 0 at the first prompt token; for the other half they start at a
random offset in 1..:data:`MAX_POSITION_OFFSET`, so the model is indifferent to whether a caller's position
ids count left padding (LLaDA2Pipeline does: ``arange`` over the padded row) or not.

Objective: the masked-diffusion loss of LLaDA (Nie et al. 2025, "Large Language Diffusion Models", eq. 3;
its SFT form masks only the response) = MDLM (Sahoo et al. 2024, "Simple and Effective Masked Diffusion
Language Models"): per sequence draw ``t ~ U(eps, 1)``, mask every generation-region token independently
with probability ``t`` (never the prompt), and minimise ``(1 / L_gen) * sum_masked CE / t``. With
probability :data:`BLOCK_VIEW_P` per sequence the semi-autoregressive block view of diffusers'
``LLaDA2Pipeline`` is trained instead: blocks of :data:`BLOCK_LENGTH` tokens aligned on absolute position
ids (as LLaDA2Pipeline aligns them), a random block ``b`` that overlaps the generation region; generation
tokens before block ``b`` are clean, those in block ``b`` are masked with ratio ``t``, and everything after
block ``b`` is cut off (attention_mask 0 there, which for a bidirectional model is the same as truncating;
position ids stay absolute). The loss is then normalised by the generation tokens in block ``b``.

Model: ``transformers.BertForMaskedLM`` (bidirectional) from a tiny ``BertConfig``, AdamW with linear
warm-up and cosine decay, one CPU thread, fixed seeds. Evaluation decodes greedily by confidence (from an
all-masked generation region, commit the k most confident masked positions per step, k = 1, 2, 4) and
reports exact match with :class:`rewards.list_tasks.ListTaskVerifier`.

Writes the model and tokenizer (``save_pretrained``) and ``training.json`` to ``--out``::

    .venv/bin/python scripts/train_tiny_text.py            # the shipped model
    .venv/bin/python scripts/train_tiny_text.py --steps 300 --out /tmp/text  # a quick try
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rewards.list_tasks import (  # noqa: E402
    ADD_DIGITS,
    EOS,
    LIST_LENGTHS,
    MASK,
    PAD,
    SPECIAL_TOKENS,
    TASKS,
    UNK,
    VOCAB,
    ListTaskVerifier,
    random_example,
)

#: Tokens in the generation region (answer + ``[EOS]`` padding).
GEN_LENGTH = 12
#: Prompts are left-padded to this many tokens (the longest prompt the task family draws).
PROMPT_LENGTH = max(LIST_LENGTHS[1] + 3, 2 * ADD_DIGITS[1] + 4)
#: Block size of the semi-autoregressive (LLaDA2Pipeline) view.
BLOCK_LENGTH = 4
#: Probability, per sequence, of training the block view instead of the full sequence.
BLOCK_VIEW_P = 0.5
#: Largest random offset added to the position ids (half the sequences get offset 0).
MAX_POSITION_OFFSET = 12
EPS = 1e-3
TRAIN_SEED = 0
EVAL_SEED = 12345
EVAL_PER_TASK = 200
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "pipelines" / "assets" / "text"
MODEL_CONFIG = dict(
    hidden_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=256,
    max_position_embeddings=64,
    type_vocab_size=1,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)


# --------------------------------------------------------------------------------------------------------
# Tokenizer and model
# --------------------------------------------------------------------------------------------------------


def build_tokenizer():
    """A word-level ``PreTrainedTokenizerFast`` over :data:`rewards.list_tasks.VOCAB`; no special tokens are
    added when encoding (no post-processor), no BOS."""
    from tokenizers import Tokenizer, decoders
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(WordLevel({tok: i for i, tok in enumerate(VOCAB)}, unk_token=UNK))
    core.pre_tokenizer = WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins word-level tokens with spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        unk_token=UNK,
        mask_token=MASK,
        eos_token=EOS,
        padding_side="left",
        model_max_length=MODEL_CONFIG["max_position_embeddings"],
    )
    return tokenizer


def build_model(vocab_size: int, pad_id: int, mask_id: int, eos_id: int):
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(vocab_size=vocab_size, pad_token_id=pad_id, **MODEL_CONFIG)
    config.mask_token_id = mask_id
    config.eos_token_id = eos_id
    config.gen_length = GEN_LENGTH
    return BertForMaskedLM(config)


# --------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------


class Encoder:
    """Prompt / answer text -> id rows in the training layout."""

    def __init__(self):
        self.ids = {tok: i for i, tok in enumerate(VOCAB)}
        self.pad, self.mask, self.eos = self.ids[PAD], self.ids[MASK], self.ids[EOS]

    def prompt_row(self, prompt: str) -> list[int]:
        tokens = prompt.split()
        if len(tokens) > PROMPT_LENGTH:
            raise ValueError(f"prompt of {len(tokens)} tokens is longer than {PROMPT_LENGTH}")
        return [self.pad] * (PROMPT_LENGTH - len(tokens)) + [self.ids[t] for t in tokens]

    def answer_row(self, answer: str) -> list[int]:
        tokens = answer.split()
        if len(tokens) > GEN_LENGTH:
            raise ValueError(f"answer of {len(tokens)} tokens is longer than {GEN_LENGTH}")
        return [self.ids[t] for t in tokens] + [self.eos] * (GEN_LENGTH - len(tokens))


def eval_prompts() -> dict[str, list[tuple[str, str]]]:
    """The held-out prompts: :data:`EVAL_PER_TASK` distinct ones per task from :data:`EVAL_SEED`."""
    rng = random.Random(EVAL_SEED)
    out = {}
    for task in TASKS:
        seen: dict[str, str] = {}
        while len(seen) < EVAL_PER_TASK:
            prompt, answer = random_example(rng, task)
            seen.setdefault(prompt, answer)
        out[task] = list(seen.items())
    return out


def training_batch(
    rng: random.Random, gen: torch.Generator, enc: Encoder, batch: int, exclude: set[str]
) -> dict[str, torch.Tensor]:
    """One batch: noised ids, attention mask, position ids, clean targets, loss weights (B, L)."""
    prompts, answers = [], []
    while len(prompts) < batch:
        prompt, answer = random_example(rng)
        if prompt not in exclude:
            prompts.append(enc.prompt_row(prompt))
            answers.append(enc.answer_row(answer))
    prompt_ids, answer_ids = torch.tensor(prompts), torch.tensor(answers)
    clean = torch.cat([prompt_ids, answer_ids], 1)  # (B, L)
    B, L = clean.shape
    P = PROMPT_LENGTH
    attention = (clean != enc.pad).long()
    n_pad = P - attention[:, :P].sum(1)  # (B,)
    offset = torch.randint(1, MAX_POSITION_OFFSET + 1, (B,), generator=gen)
    offset = torch.where(torch.rand(B, generator=gen) < 0.5, torch.zeros_like(offset), offset)
    positions = (torch.arange(L).unsqueeze(0) - n_pad.unsqueeze(1) + offset.unsqueeze(1)).clamp(min=0)

    t = EPS + (1 - EPS) * torch.rand(B, generator=gen)
    in_gen = torch.zeros(B, L, dtype=torch.bool)
    in_gen[:, P:] = True
    # Block view: block index b (in position-id space, blocks [4b, 4b + 4)) overlapping the generation region.
    block_view = torch.rand(B, generator=gen) < BLOCK_VIEW_P
    gen_first, gen_last = positions[:, P], positions[:, L - 1]
    b_low, b_high = gen_first // BLOCK_LENGTH, gen_last // BLOCK_LENGTH
    b = b_low + (torch.rand(B, generator=gen) * (b_high - b_low + 1)).long().clamp(max=b_high - b_low)
    block_start, block_end = (b * BLOCK_LENGTH).unsqueeze(1), ((b + 1) * BLOCK_LENGTH).unsqueeze(1)
    maskable = torch.where(
        block_view.unsqueeze(1), in_gen & (positions >= block_start) & (positions < block_end), in_gen
    )
    visible = torch.where(block_view.unsqueeze(1), positions < block_end, torch.ones_like(in_gen))
    masked = maskable & (torch.rand(B, L, generator=gen) < t.unsqueeze(1))

    ids = torch.where(masked, torch.full_like(clean, enc.mask), clean)
    ids = torch.where(visible, ids, torch.full_like(clean, enc.pad))
    attention = attention * visible.long()
    denominator = maskable.sum(1).clamp(min=1).float()  # L_gen, or the generation tokens of block b
    weights = masked.float() / (t * denominator).unsqueeze(1)
    return {
        "input_ids": ids,
        "attention_mask": attention,
        "position_ids": positions,
        "labels": clean,
        "weights": weights,
    }


def diffusion_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``mean_batch (1 / L_gen) sum_masked CE / t`` (the weights carry the 1/t and 1/L_gen factors)."""
    logits = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
    ).logits
    where = batch["weights"] > 0
    ce = F.cross_entropy(logits[where].float(), batch["labels"][where], reduction="none")
    return (ce * batch["weights"][where]).sum() / batch["weights"].shape[0]


# --------------------------------------------------------------------------------------------------------
# Evaluation: confidence-ordered greedy unmasking
# --------------------------------------------------------------------------------------------------------


@torch.no_grad()
def decode(model, enc: Encoder, prompts: list[str], per_step: int = 1) -> list[str]:
    """Answers of ``prompts``: from an all-masked generation region, commit the ``per_step`` most confident
    masked positions (argmax token, special tokens other than ``[EOS]`` excluded) per forward pass; the
    answer is the generation region up to its first ``[EOS]``."""
    model.eval()
    prompt_ids = torch.tensor([enc.prompt_row(p) for p in prompts])
    B, P = prompt_ids.shape
    x = torch.cat([prompt_ids, torch.full((B, GEN_LENGTH), enc.mask)], 1)
    attention = (x != enc.pad).long()
    positions = (attention.cumsum(1) - 1).clamp(min=0)
    banned = torch.tensor([VOCAB.index(t) for t in SPECIAL_TOKENS if t != EOS])
    while True:
        still = x[:, P:] == enc.mask
        if not still.any():
            break
        logits = model(input_ids=x, attention_mask=attention, position_ids=positions).logits[:, P:].float()
        logits[..., banned] = -math.inf
        probs, tokens = logits.softmax(-1).max(-1)
        confidence = torch.where(still, probs, torch.full_like(probs, -1.0))
        k = min(per_step, GEN_LENGTH)
        top = confidence.topk(k, dim=1).indices
        chosen = torch.zeros_like(still).scatter(1, top, True) & still
        x[:, P:] = torch.where(chosen, tokens, x[:, P:])
    answers = []
    for row in x[:, P:].tolist():
        words = [VOCAB[i] for i in row]
        answers.append(" ".join(words[: words.index(EOS)] if EOS in words else words))
    return answers


def evaluate(
    model, enc: Encoder, held_out: dict[str, list[tuple[str, str]]], per_step: int, limit: int | None = None
) -> dict[str, float]:
    verifier = ListTaskVerifier()
    accuracy = {}
    for task, pairs in held_out.items():
        prompts = [p for p, _ in pairs[:limit]]
        answers = decode(model, enc, prompts, per_step)
        accuracy[task] = round(float(verifier(answers, prompts).mean()), 4)
    accuracy["mean"] = round(sum(accuracy[t] for t in held_out) / len(held_out), 4)
    return accuracy


# --------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=7000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--eval-every", type=int, default=1500)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(TRAIN_SEED)
    rng, gen = random.Random(TRAIN_SEED), torch.Generator().manual_seed(TRAIN_SEED)
    tokenizer = build_tokenizer()
    enc = Encoder()
    assert tokenizer.convert_tokens_to_ids(list(VOCAB)) == list(range(len(VOCAB)))
    model = build_model(len(VOCAB), enc.pad, enc.mask, enc.eos)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"vocab {len(VOCAB)}, parameters {n_params}, layout {PROMPT_LENGTH} + {GEN_LENGTH}", flush=True)

    held_out = eval_prompts()
    exclude = {p for pairs in held_out.values() for p, _ in pairs}
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embeddings" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embeddings" not in n)]
    optimiser = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
    )

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return (step + 1) / args.warmup
        progress = (step - args.warmup) / max(1, args.steps - args.warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lr_at)
    loss_curve, progress, running, start = [], [], 0.0, time.time()
    for step in range(args.steps):
        model.train()
        batch = training_batch(rng, gen, enc, args.batch, exclude)
        loss = diffusion_loss(model, batch)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        scheduler.step()
        running += loss.item()
        if (step + 1) % args.log_every == 0:
            mean = running / args.log_every
            running = 0.0
            loss_curve.append([step + 1, round(mean, 5)])
            print(
                f"step {step + 1} loss {mean:.4f} lr {scheduler.get_last_lr()[0]:.2e} "
                f"{time.time() - start:.0f}s",
                flush=True,
            )
        if args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            accuracy = evaluate(model, enc, held_out, per_step=1, limit=50)
            progress.append({"step": step + 1, "accuracy_1_per_step_first50": accuracy})
            print(f"step {step + 1} held-out accuracy (50 per task, 1 token/step) {accuracy}", flush=True)
    train_seconds = time.time() - start

    final = {f"{k}_per_step": evaluate(model, enc, held_out, per_step=k) for k in (1, 2, 4)}
    for name, accuracy in final.items():
        print(f"held-out exact match, {name.replace('_', ' ')}: {accuracy}", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    record = {
        "command": "python scripts/train_tiny_text.py " + " ".join(sys.argv[1:]),
        "train_seconds": round(train_seconds, 1),
        "threads": 1,
        "objective": "LLaDA (Nie et al. 2025, eq. 3) / MDLM masked-diffusion loss on the generation region; "
        f"block view (LLaDA2Pipeline) with probability {BLOCK_VIEW_P}",
        "tasks": list(TASKS),
        "list_lengths": list(LIST_LENGTHS),
        "add_digits": list(ADD_DIGITS),
        "vocab": list(VOCAB),
        "layout": {
            "prompt_length": PROMPT_LENGTH,
            "gen_length": GEN_LENGTH,
            "padding": "prompt left-padded with [PAD] (attention_mask 0); generation = answer then [EOS]s",
            "position_ids": "0 at the first prompt token, or any offset up to "
            f"{MAX_POSITION_OFFSET} (e.g. counting left pads)",
            "block_length": BLOCK_LENGTH,
        },
        "model": {"class": "BertForMaskedLM", **MODEL_CONFIG, "parameters": n_params},
        "steps": args.steps,
        "batch": args.batch,
        "optimiser": {
            "name": "AdamW",
            "lr": args.lr,
            "betas": [0.9, 0.98],
            "weight_decay": args.weight_decay,
            "warmup": args.warmup,
            "schedule": "linear warm-up, cosine to 5% of lr",
            "grad_clip": 1.0,
        },
        "eps": EPS,
        "seeds": {"train": TRAIN_SEED, "eval": EVAL_SEED},
        "eval": {
            "prompts_per_task": EVAL_PER_TASK,
            "excluded_from_training": True,
            "decoding": "greedy, k most confident masked positions per forward pass",
        },
        "accuracy": final,
        "progress": progress,
        "loss_curve": loss_curve,
    }
    (args.out / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"saved to {args.out} ({train_seconds:.0f}s training)", flush=True)


if __name__ == "__main__":
    main()
