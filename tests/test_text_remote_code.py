"""The remote-code path of pipelines/text.py, offline: a LLaDA-style model directory with custom code
(``configuration_tinyllada.py``, ``modeling_tinyllada.py``, ``auto_map`` in config.json -- a hub repo such as
LLaDA-8B's, but tiny and random) loads through ``load_text_pipeline(..., trust_remote_code=True)`` as the
custom class (through ``AutoModelForCausalLM``), refuses to load without it, runs in diffusers'
``LLaDA2Pipeline`` and through our chains token for token, and ``dsample text --trust-remote-code`` runs
it."""

import contextlib
import importlib
import importlib.util
import json
import shutil
import sys

import pytest
import torch
from tiny_text import SPECIALS, tiny_tokenizer

from pipelines.cli import main
from pipelines.text import load_text_pipeline, text_chains
from search.chain import advance

CONFIGURATION = """
from transformers import PretrainedConfig


class TinyLLaDAConfig(PretrainedConfig):
    model_type = "tinyllada"

    def __init__(self, vocab_size=31, d_model=32, n_heads=2, n_layers=2, max_sequence_length=64, **kwargs):
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.n_heads = n_heads
        self.n_layers = n_layers
        self.max_sequence_length = max_sequence_length
        super().__init__(**kwargs)
"""

MODELING = '''
import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from .configuration_tinyllada import TinyLLaDAConfig


class TinyLLaDAModelLM(PreTrainedModel):
    """Bidirectional: token + position embeddings, encoder layers without a causal mask, a vocabulary head."""

    config_class = TinyLLaDAConfig
    base_model_prefix = "model"

    def __init__(self, config):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.position = nn.Embedding(config.max_sequence_length, config.d_model)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                config.d_model, config.n_heads, 2 * config.d_model, dropout=0.0, batch_first=True
            )
            for _ in range(config.n_layers)
        )
        self.head = nn.Linear(config.d_model, config.vocab_size)
        self.post_init()

    def _init_weights(self, module):
        pass  # every weight is the checkpoint's

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kwargs):
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        h = self.embed(input_ids) + self.position(position_ids)
        padding = None if attention_mask is None else attention_mask == 0  # key padding: 0 = ignore
        for layer in self.layers:
            h = layer(h, src_key_padding_mask=padding)
        return CausalLMOutput(logits=self.head(h))
'''

PROMPT = "a b c"
CALL = {"gen_length": 8, "block_length": 4, "num_inference_steps": 4}  # 3 + 8 = 11 positions: 3 blocks
THRESHOLD = 0.3
SOURCE_PACKAGE = "tinyllada_source"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@contextlib.contextmanager
def _source_package(source):
    """The custom code imported as a package (its modeling file imports the configuration relatively, as hub
    code does), in ``sys.modules`` while in use: ``save_pretrained`` copies the files of the classes' modules
    (both, following the relative import) and writes ``auto_map``."""
    (source / "__init__.py").write_text("")
    spec = importlib.util.spec_from_file_location(
        SOURCE_PACKAGE, source / "__init__.py", submodule_search_locations=[str(source)]
    )
    package = importlib.util.module_from_spec(spec)
    sys.modules[SOURCE_PACKAGE] = package
    try:
        spec.loader.exec_module(package)
        configuration = importlib.import_module(f"{SOURCE_PACKAGE}.configuration_tinyllada")
        modeling = importlib.import_module(f"{SOURCE_PACKAGE}.modeling_tinyllada")
        yield configuration.TinyLLaDAConfig, modeling.TinyLLaDAModelLM
    finally:
        for name in [n for n in sys.modules if n == SOURCE_PACKAGE or n.startswith(f"{SOURCE_PACKAGE}.")]:
            del sys.modules[name]


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    """(directory, saved state dict): a model directory with custom code, weights and the tiny tokenizer."""
    source = tmp_path_factory.mktemp("source")
    (source / "configuration_tinyllada.py").write_text(CONFIGURATION)
    (source / "modeling_tinyllada.py").write_text(MODELING)
    directory = tmp_path_factory.mktemp("tinyllada")
    with _source_package(source) as (config_class, model_class):
        config_class.register_for_auto_class("AutoConfig")
        model_class.register_for_auto_class("AutoModelForCausalLM")
        tokenizer = tiny_tokenizer()
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(0)
            model = model_class(config_class(vocab_size=len(tokenizer))).eval()
            for parameter in model.parameters():  # std 0.5, as tiny_masked_lm: predictions depend on context
                if parameter.dim() >= 2:
                    torch.nn.init.normal_(parameter, std=0.5)
            # like a trained model, it never predicts [PAD], [UNK], [MASK] or [EOS]: all 8 positions are words
            model.head.bias[[tokenizer.convert_tokens_to_ids(t) for t in SPECIALS]] = -30.0
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
    return directory, {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def pipes(remote):
    directory, _ = remote
    return {
        policy: load_text_pipeline(directory, policy=policy, trust_remote_code=True, threshold=THRESHOLD)
        for policy in ("low-confidence", "threshold")
    }


def test_the_directory_is_a_remote_code_repo(remote):
    directory, _ = remote
    assert {"configuration_tinyllada.py", "modeling_tinyllada.py", "config.json"} <= {
        p.name for p in directory.iterdir()
    }
    config = json.loads((directory / "config.json").read_text())
    assert config["model_type"] == "tinyllada"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_tinyllada.TinyLLaDAConfig",
        "AutoModelForCausalLM": "modeling_tinyllada.TinyLLaDAModelLM",
    }


def test_trust_remote_code_loads_the_custom_class_with_its_weights(remote, pipes):
    _, state = remote
    model = pipes["low-confidence"].model
    assert type(model).__name__ == "TinyLLaDAModelLM"
    assert type(model).__module__.startswith("transformers_modules.")  # transformers' dynamic module
    assert type(model).__module__.endswith(".modeling_tinyllada")
    assert not model.training
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert pipes["low-confidence"].tokenizer.mask_token == "[MASK]"


def test_without_trust_remote_code_loading_fails(remote):
    directory, _ = remote
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        load_text_pipeline(directory)


@pytest.mark.parametrize("auto_class", ["AutoModel", "AutoModelForMaskedLM"])
def test_an_auto_map_without_a_causal_lm_loads_through_the_class_it_names(remote, tmp_path, auto_class):
    """An auto_map naming only ``AutoModel`` or only ``AutoModelForMaskedLM`` loads through that auto class
    (the causal-LM loader would fail on these configs: each auto class reads only its own auto_map key)."""
    directory, _ = remote
    copy = shutil.copytree(directory, tmp_path / auto_class)
    config = json.loads((copy / "config.json").read_text())
    config["auto_map"] = {
        "AutoConfig": "configuration_tinyllada.TinyLLaDAConfig",
        auto_class: "modeling_tinyllada.TinyLLaDAModelLM",
    }
    (copy / "config.json").write_text(json.dumps(config))
    pipe = load_text_pipeline(copy, trust_remote_code=True)
    assert type(pipe.model).__name__ == "TinyLLaDAModelLM"


@pytest.mark.parametrize("temperature", [0.0, 0.8])
@pytest.mark.parametrize("policy", ["low-confidence", "threshold"])
def test_the_pipeline_and_the_chain_agree_token_for_token(pipes, policy, temperature):
    pipe = pipes[policy]
    mask = pipe.tokenizer.mask_token_id
    chain = text_chains(pipe, [PROMPT], **CALL, temperature=temperature, threshold=THRESHOLD)[0]
    start = chain.layout.prompt_length
    runs = {}
    for seed in (0, 1):
        out = pipe(PROMPT, **CALL, temperature=temperature, threshold=THRESHOLD, editing_threshold=None,
                   generator=torch.Generator().manual_seed(seed))  # fmt: skip
        state = advance(chain, chain.prior(1), generator=torch.Generator().manual_seed(seed))
        generated = state.x[0, start : start + CALL["gen_length"]]
        assert torch.equal(generated, out.sequences[0]), (generated, out.sequences[0])
        assert chain.decode(state.x) == out.texts
        runs[seed] = generated
    tokens = runs[0]
    assert not (tokens == mask).any()  # every position filled
    assert len(set(tokens.tolist())) > 1  # and not one token everywhere: the model reads its context
    assert len(out.texts[0].split()) == CALL["gen_length"]
    if temperature > 0:  # another seed gives other tokens
        assert not torch.equal(runs[0], runs[1])
    else:
        assert torch.equal(runs[0], runs[1])


def test_dsample_text_runs_a_remote_code_model(remote, capsys):
    directory, _ = remote
    argv = ["text", "--model", str(directory), "--trust-remote-code", "--prompt", PROMPT,
            "--gen-length", "8", "--block-length", "4", "--steps", "4", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{PROMPT} -> "), lines
    assert len(lines[0].split(" -> ")[1].split()) == 8
