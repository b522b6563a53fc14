import pytest

from finetune.errors import PipelineError
from finetune.model.adapters import lora_config, target_modules
from tests.conftest import lora_params, tiny_falcon, tiny_llama


def test_all_linear_finds_every_llama_projection_but_not_the_head():
    model = tiny_llama(vocab_size=128)
    assert target_modules(model, "all-linear") == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj",
                                                   "up_proj", "v_proj"]


def test_all_linear_finds_every_falcon_projection_but_not_the_head():
    model = tiny_falcon(vocab_size=128)
    assert target_modules(model, "all-linear") == ["dense", "dense_4h_to_h", "dense_h_to_4h", "query_key_value"]


def test_explicit_list_is_checked_against_the_model():
    model = tiny_llama(vocab_size=128)
    assert target_modules(model, ["v_proj", "q_proj"]) == ["q_proj", "v_proj"]
    with pytest.raises(PipelineError, match="query_key_value"):
        target_modules(model, ["q_proj", "query_key_value"])


def test_lora_config_carries_the_params():
    config = lora_config(tiny_falcon(vocab_size=128), lora_params(r=8, alpha=16, dropout=0.1, target_modules="all-linear"))
    assert (config.r, config.lora_alpha, config.lora_dropout) == (8, 16, 0.1)
    assert set(config.target_modules) == {"dense", "dense_4h_to_h", "dense_h_to_4h", "query_key_value"}
