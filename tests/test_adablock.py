"""AdaBlock's adaptive block size (samplers.masked.AdaBlock) in the masked-diffusion chain: the block rule,
the chain against an independent transcription of AdaBlock's decoding loop (Lu et al. 2025,
arXiv:2509.26432) on a tiny random masked LM, per-row blocks in a batch, and search over chains whose
particles carry their own blocks."""

import math

import pytest
import torch
from tiny_text import WordCount, counting_logits_fn, logits_fn

from samplers.masked import AdaBlock, ReMDM
from samplers.state import SolverState
from search import run_search
from search.chain import ChainState, advance
from search.masked_chain import MaskedDiffusionChain

GEN, DEFAULT_BLOCK = 9, 4  # prompt of 3 + 9 generated = 12 positions: no padding
THRESHOLD, TAU = 0.5, 0.5  # commit threshold (Fast-dLLM rule); delimiter confidence threshold


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def lm(tiny_lm):
    return tiny_lm


def delimiters(tok) -> tuple[int, ...]:
    return (tok.convert_tokens_to_ids("eight"),)  # the random model's most frequent prediction


def adaptive_chain(lm, prompt="a b c", **kw) -> MaskedDiffusionChain:
    model, tok = lm
    options = {"policy": "threshold", "policy_options": {"threshold": THRESHOLD}, "eos_stop": False, **kw}
    return MaskedDiffusionChain(
        logits_fn(model),
        tok(prompt)["input_ids"],
        gen_length=GEN,
        mask_token_id=tok.mask_token_id,
        eos_token_id=tok.eos_token_id,
        block_length=DEFAULT_BLOCK,
        adaptive_blocks=AdaBlock(delimiters(tok), threshold=TAU),
        **options,
    )


def reference_adablock(model, prompt_ids: list[int], mask_id: int, delims: tuple[int, ...]):
    """AdaBlock's greedy decoding loop, written out position by position (Lu et al. 2025's decoder, with the
    confidence-threshold commit of Fast-dLLM and at least the most confident token per call; the mask token
    is never a candidate). Returns (generated ids, model calls, block lengths)."""
    x = list(prompt_ids) + [mask_id] * GEN
    p = len(prompt_ids)
    calls, lengths, generated = 0, [], 0

    def forward():
        ids = torch.tensor([x])
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids),
                       position_ids=torch.arange(len(x))[None]).logits[0].double()  # fmt: skip
        logits[:, mask_id] = -math.inf
        confidence, predicted = logits.softmax(-1).max(-1)
        return predicted.tolist(), confidence.tolist()

    while generated < GEN:
        predicted, confidence = forward()
        calls += 1
        start = p + generated
        window = range(start, start + min(max(1, int(0.25 * GEN)), GEN - generated))
        found = [q for q in window if predicted[q] in delims]
        best = max(found, key=lambda q: confidence[q]) if found else None  # first of equals, like torch.max
        if best is not None and confidence[best] >= TAU:
            length = best - start + 1
        else:
            length = min(DEFAULT_BLOCK, GEN - generated)
        lengths.append(length)
        end = start + length
        while True:
            masked = [q for q in range(start, end) if x[q] == mask_id]
            most = max(masked, key=lambda q: confidence[q])
            chosen = {q for q in masked if confidence[q] > THRESHOLD} | {most}
            for q in chosen:
                x[q] = predicted[q]
            if all(x[q] != mask_id for q in range(start, end)):
                break
            predicted, confidence = forward()
            calls += 1
        generated += length
    return x[p:], calls, lengths


def reference_for(lm, prompt: str):
    model, tok = lm
    return reference_adablock(model, tok(prompt)["input_ids"], tok.mask_token_id, delimiters(tok))


def run(chain: MaskedDiffusionChain, state: ChainState, seed: int = 0) -> ChainState:
    return advance(chain, state, generator=torch.Generator().manual_seed(seed))


def test_block_end_takes_the_most_confident_delimiter_in_the_window():
    rule = AdaBlock((7, 8), threshold=0.3, window_fraction=0.5)  # window: 4 of 8 positions
    candidates = torch.tensor(
        [
            [1, 7, 2, 8, 1, 1, 1, 1],  # delimiters at 1 (0.4) and 3 (0.9): ends after 3
            [1, 7, 1, 1, 1, 1, 1, 1],  # only one, too unsure (0.2): the default length
            [1, 1, 1, 1, 1, 7, 1, 1],  # from 2: window [2, 6) holds it: ends after 5
            [1, 1, 1, 1, 1, 1, 1, 8],
        ]
    )  # from 2: at 7, outside the window: the default
    confidence = torch.tensor([[0.1, 0.4, 0.1, 0.9, 0.1, 0.1, 0.1, 0.1],
                               [0.1, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1],
                               [0.1, 0.1, 0.1, 0.1, 0.1, 0.8, 0.1, 0.1],
                               [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.9]])  # fmt: skip
    start = torch.tensor([0, 0, 2, 2])
    ends = rule.block_end(candidates, confidence, start, default_length=3)
    assert ends.tolist() == [4, 3, 6, 5]
    later = rule.block_end(candidates[3:], confidence[3:], torch.tensor([6]), default_length=3)
    assert later.tolist() == [8]  # from 6 the delimiter at 7 is in the window [6, 8)
    unsure = rule.block_end(candidates[1:2], confidence[1:2], torch.tensor([6]), default_length=3)
    assert unsure.tolist() == [8]  # no delimiter: the default length, capped at the end of the region


@pytest.mark.parametrize("prompt", ["a b c", "copy : f", "two two one", "sort d e"])
def test_the_chain_makes_adablocks_tokens_calls_and_blocks(lm, prompt):
    model, tok = lm
    chain = adaptive_chain(lm, prompt)
    final = run(chain, chain.prior(1))
    p = chain.layout.prompt_length
    expected, calls, lengths = reference_for(lm, prompt)
    assert final.x[0, p : p + GEN].tolist() == expected
    assert chain.budget.nfe == calls <= GEN  # idle steps after the end make no call
    assert final.solver.cond["block_end"].tolist() == [GEN] and sum(lengths) == GEN


def test_some_blocks_end_at_delimiters_and_some_take_the_default(lm):
    model, tok = lm
    seen = set()
    for prompt in ["a b c", "copy : f", "two two one", "sort d e"]:
        seen.update(reference_for(lm, prompt)[2])
    assert DEFAULT_BLOCK in seen and seen - {DEFAULT_BLOCK}, seen


def test_rows_of_a_batch_keep_their_own_blocks(lm):
    model, tok = lm
    prompts = ["a b c", "copy : f", "two two one"]
    chain = adaptive_chain(lm)
    tokens = chain.prior(len(prompts)).x.clone()
    for row, prompt in enumerate(prompts):
        tokens[row, :3] = torch.tensor(tok(prompt)["input_ids"])
    start = ChainState(SolverState(x=tokens, step=0, cond={"block_end": torch.zeros(3, dtype=torch.long)}))
    final = run(chain, start)
    for row, prompt in enumerate(prompts):
        expected, _, _ = reference_for(lm, prompt)
        assert final.x[row, 3:].tolist() == expected


def test_renoise_keeps_a_decoded_prefix(lm):
    chain = adaptive_chain(lm, temperature=1.0)
    final = run(chain, chain.prior(2), seed=1)
    back = chain.renoise(final, 2)
    mask = lm[1].mask_token_id
    region = back.x[:, 3:]
    assert back.step == 2 and (region[:, :2] != mask).all() and (region[:, 2:] == mask).all()
    assert torch.equal(region[:, :2], final.x[:, 3:5]) and back.solver.cond["block_end"].tolist() == [2, 2]
    again = run(chain, back, seed=2)
    assert not (again.x == mask).any()


@pytest.mark.parametrize("method", ["bon", "smc", "dts", "beam", "paths", "rbf"])
def test_search_runs_on_adaptive_blocks_with_exact_nfe(lm, method):
    model, tok = lm
    chain = adaptive_chain(lm, temperature=1.0, lookahead="sample", decode_fn=tok.batch_decode)
    chain.logits_fn, rows = counting_logits_fn(model)
    generator = torch.Generator().manual_seed(0)
    result = run_search(method, chain, WordCount("six"), particles=4, generator=generator)
    assert result.nfe == sum(rows) > 0
    assert all(isinstance(t, str) and "[MASK]" not in t for t in result.samples)


def test_adaptive_blocks_refuse_what_they_cannot_do(lm):
    with pytest.raises(ValueError, match="context='full'"):
        adaptive_chain(lm, context="window")
    with pytest.raises(ValueError, match="ReMDM"):
        adaptive_chain(lm, remasking=ReMDM(0.1))
    with pytest.raises(ValueError, match="delimiter"):
        AdaBlock(())
