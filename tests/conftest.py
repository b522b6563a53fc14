"""Shared fixtures: the real tokenizer and tiny Llama / Falcon models built from configs."""

from __future__ import annotations

import importlib
import os
import shlex
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoTokenizer, FalconConfig, FalconForCausalLM, LlamaConfig, LlamaForCausalLM

from finetune import param_schemas, params
from finetune.model.embedded import EMBEDDED_DIR

ROOT = Path(__file__).resolve().parents[1]

if os.environ.get("PYTEST_XDIST_WORKER"):  # `pytest -n`: a worker per core, so one thread per worker, and per stage
    os.environ["OMP_NUM_THREADS"] = "1"   # process it starts (the tiny models gain nothing from a second thread)
    torch.set_num_threads(1)


# The longest test files first, so that `pytest -n 2 --dist loadfile` hands them out before the short ones and no
# worker is left with a long file at the end. The first needs the tiny pipeline (and builds it); the second does not,
# so the other worker works instead of waiting for the build. Kept in step with `make test`'s slowest durations.
LONGEST_FIRST = ["test_pipeline.py", "deliver/test_gguf.py", "test_two_processes.py", "test_switching_task_and_format.py",
                 "test_presets.py", "test_team.py", "test_interrupted_training.py", "test_bad_commands.py",
                 "train/test_training.py", "test_bad_inputs.py", "train/test_distributed.py"]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    tests = Path(__file__).parent

    def order(item) -> int:
        return rank.get(Path(item.fspath).relative_to(tests).as_posix(), len(rank))

    items.sort(key=order)  # stable: each file's tests keep their order


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


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tokenizer) -> Path:
    """A tiny Llama over SmolLM2's tokenizer, saved once per test run: the base model of the tiny pipelines."""
    folder = tmp_path_factory.mktemp("tiny_llama")
    tiny_llama(len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory, tiny_llama_dir):
    """The tiny pipeline after its first `dvc repro`, committed (tests/tiny_pipeline.py): built once per test run, for
    every worker of `pytest -n`; a test takes a clone of it (`tiny_pipeline.clone`), never the pipeline itself."""
    from filelock import FileLock

    from tests.tiny_pipeline import build_once

    run_dir = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        run_dir = run_dir.parent  # each worker has a folder in the run's
    with FileLock(run_dir / "tiny_pipeline.lock"):
        return build_once(run_dir / "tiny_pipeline", tiny_llama_dir)


@pytest.fixture(params=["llama", "falcon"])
def tiny_model(request, tokenizer):
    """A 2-layer model of each architecture our users fine-tune, over the real tokenizer's vocabulary."""
    build = tiny_llama if request.param == "llama" else tiny_falcon
    return build(len(tokenizer))


def run_stages(monkeypatch, *names: str) -> None:
    """Each named stage's main() in this process, in order, with the command line dvc.yaml gives it."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name in names:
        argv = shlex.split(stages[name]["cmd"])[2:]  # python -m stages.<name> ...
        monkeypatch.setattr(sys, "argv", argv)
        importlib.import_module(argv[0]).main()
