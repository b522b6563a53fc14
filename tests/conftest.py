"""Shared fixtures: the real tokenizer and tiny Llama / Falcon models built from configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, FalconConfig, FalconForCausalLM, LlamaConfig, LlamaForCausalLM

from finetune import param_schemas, params
from finetune.model.embedded import EMBEDDED_DIR

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tokenizer():
    """SmolLM2's tokenizer from the exported embedded model (made by `make setup`)."""
    path = ROOT / EMBEDDED_DIR
    if not (path / "tokenizer.json").is_file():
        pytest.fail(f"{path} is missing: run `make setup` first")
    tok = AutoTokenizer.from_pretrained(path)
    return tok


def tiny_llama(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=False)
    return LlamaForCausalLM(config).eval()


def tiny_falcon(vocab_size: int, seed: int = 0) -> FalconForCausalLM:
    torch.manual_seed(seed)
    config = FalconConfig(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                          new_decoder_architecture=False, multi_query=True, parallel_attn=True, bias=False,
                          max_position_embeddings=256)
    return FalconForCausalLM(config).eval()


def lora_params(**changes) -> param_schemas.LoraParams:
    """params.yaml's lora section with some values changed (a small adapter for tiny models)."""
    return params.replace(params.read("lora"), **changes)


@pytest.fixture(params=["llama", "falcon"])
def tiny_model(request, tokenizer):
    """A 2-layer model of each architecture our users fine-tune, over the real tokenizer's vocabulary."""
    build = tiny_llama if request.param == "llama" else tiny_falcon
    return build(len(tokenizer))
