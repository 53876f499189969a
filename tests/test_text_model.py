"""The bundled masked-diffusion text model (pipelines/assets/text) in diffusers' LLaDA2Pipeline with our
scheduler and through our chain: it solves held-out copy / reverse / sort / shuffle prompts (10 of 12 or more,
one token per step; docs/benchmarks/text.md has the full accuracy table), the pipeline and the chain agree
token for token, committing several tokens per call costs accuracy on shuffle (ParallelBench's effect) but
not on copy, and ``dsample text`` uses it by default."""

import pytest
import torch

from pipelines.cli import main
from pipelines.text import load_text_pipeline, text_chains
from rewards.list_tasks import TASKS, ListTaskVerifier, random_example
from search.chain import advance

CALL = {"gen_length": 12, "block_length": 4, "num_inference_steps": 4}


@pytest.fixture(scope="module")
def pipe():
    return load_text_pipeline()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("task", ["copy", "reverse", "sort", "shuffle"])
def test_the_bundled_model_solves_held_out_prompts_through_pipeline_and_chain(pipe, task):
    g = torch.Generator().manual_seed(999)
    prompts = [random_example(g, task)[0] for _ in range(12)]
    verifier = ListTaskVerifier()
    correct = 0
    for prompt in prompts:
        out = pipe(prompt, **CALL, editing_threshold=None)
        correct += int(float(verifier(out.texts, [prompt])[0]) == 1.0)
        chain = text_chains(pipe, [prompt], **CALL)[0]
        state = advance(chain, chain.prior(1))
        p = chain.layout.prompt_length
        generated = state.x[0, p : p + CALL["gen_length"]]
        committed = generated != pipe.tokenizer.mask_token_id
        assert torch.equal(generated[committed], out.sequences[0][committed])
        assert chain.decode(state.x) == out.texts
    assert correct >= 10, f"{task}: {correct} of {len(prompts)}"


def test_dsample_text_runs_the_bundled_model_by_default(capsys):
    assert main(["text", "--quiet"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(" :")[0] for line in lines] == list(TASKS)
    verifier = ListTaskVerifier()
    solved = [float(verifier([line.split(" -> ")[1]], [line.split(" -> ")[0]])[0]) for line in lines[:3]]
    assert solved == [1.0, 1.0, 1.0], lines


def test_parallel_commits_cost_accuracy_where_answer_tokens_must_agree(pipe):
    """ParallelBench's effect on the bundled model, through LLaDA2Pipeline: ``shuffle`` (any ordering of the
    operands is right, so each position alone is uniform over them) is solved one token per call and mostly
    failed four tokens per call (operands repeated), while ``copy`` (every token fixed by the prompt) is not
    hurt."""
    g = torch.Generator().manual_seed(999)
    verifier = ListTaskVerifier()

    def solved(task: str, steps: int) -> int:
        prompts = [random_example(g, task)[0] for _ in range(12)]
        call = {**CALL, "num_inference_steps": steps}
        texts = [pipe(p, **call, editing_threshold=None).texts[0] for p in prompts]
        return int(verifier(texts, prompts).sum().item())

    one_per_call, four_per_call = solved("shuffle", 4), solved("shuffle", 1)
    assert one_per_call >= 10 and four_per_call <= one_per_call // 2, (one_per_call, four_per_call)
    assert solved("copy", 1) >= 10
