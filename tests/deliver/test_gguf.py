"""GGUF export: llama.cpp's converter on tiny models, each file read back through transformers' GGUF loader."""

from __future__ import annotations

import json

import pytest

from finetune.deliver import gguf
from finetune.errors import PipelineError
from tests.conftest import tiny_falcon, tiny_llama

# Both compare max |logit difference| / max |source logit| on 4 x 32 random tokens; measured over seeds 0-2 of the
# tiny Llama and Falcon: f16 4.0e-4 to 5.3e-4, q8_0 1.05e-2 to 1.32e-2.
F16_TOLERANCE = 1e-3  # f16 rounds each weight by at most 2^-12: 2x the worst measured; one matrix 1% off gives 1.7e-3
Q8_0_TOLERANCE = 3e-2  # q8_0 rounds each weight by up to 1/254 of its 32-block's largest: 2.3x the worst measured


def _saved(model, tokenizer, folder):
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)  # SmolLM2's: the converter knows its pre-tokenizer by hash
    return folder


@pytest.fixture(scope="module")
def llama_dir(tokenizer, tmp_path_factory):
    return _saved(tiny_llama(len(tokenizer)), tokenizer, tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def llama_files(llama_dir, tmp_path_factory):
    return gguf.convert(llama_dir, tmp_path_factory.mktemp("gguf"), ("f16", "q8_0"))


def test_convert_writes_one_file_per_type(llama_files):
    assert {t: p.name for t, p in llama_files.items()} == {"f16": "model-f16.gguf", "q8_0": "model-q8_0.gguf"}
    assert llama_files["q8_0"].stat().st_size < 0.6 * llama_files["f16"].stat().st_size  # 8.5 bits against 16


def test_f16_reads_back_as_the_source_model(llama_dir, llama_files):
    assert gguf.check_readback(llama_dir, llama_files["f16"])["max_rel"] < F16_TOLERANCE


def test_q8_0_reads_back_close_and_really_quantized(llama_dir, llama_files):
    diff = gguf.check_readback(llama_dir, llama_files["q8_0"])["max_rel"]
    assert diff < Q8_0_TOLERANCE
    assert diff > F16_TOLERANCE  # so the f16 tolerance would catch the q8_0 file read back in the f16 file's place


def test_falcon_multi_query_converts_and_reads_back(tokenizer, tmp_path):
    # transformers saves num_kv_heads = num_attention_heads for it; convert() must give the converter one
    folder = _saved(tiny_falcon(len(tokenizer)), tokenizer, tmp_path / "falcon")
    assert json.loads((folder / "config.json").read_text())["num_kv_heads"] != 1
    files = gguf.convert(folder, tmp_path / "gguf", ("f16",))
    assert gguf.check_readback(folder, files["f16"])["max_rel"] < F16_TOLERANCE


def test_converter_failure_is_a_pipeline_error_with_its_reason(llama_dir, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for file in llama_dir.iterdir():
        (broken / file.name).symlink_to(file)
    config = json.loads((llama_dir / "config.json").read_text())
    (broken / "config.json").unlink()
    (broken / "config.json").write_text(json.dumps({**config, "architectures": ["NoSuchModelForCausalLM"]}))
    with pytest.raises(PipelineError, match="could not write f16 GGUF.*NoSuchModelForCausalLM"):
        gguf.convert(broken, tmp_path / "out", ("f16",))
    assert not list((tmp_path / "out").glob("*.gguf"))


def test_missing_sdist_says_run_make_setup(tmp_path):
    with pytest.raises(PipelineError, match="make setup"):
        gguf.converter_script(tmp_path / "llama_cpp_python-0.3.36.tar.gz")
