"""A trained adapter on a tiny base, as train_qlora leaves it: PEFT files, tokenizer and run.json."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from finetune.model import base_model, methods
from finetune.train.training import save_trained
from tests.conftest import lora_params, tiny_falcon, tiny_llama

LABELS = ["dairy eggs", "dry goods pasta", "frozen", "produce", "snacks"]
CLASSIFY = {"name": "instacart", "kind": "classification",
            "data": {"input_field": "product", "target_field": "department"},
            "prompt": {"template": "Product: {text}\nDepartment:", "answer_prefix": " "},
            "train": {"epochs": 1, "batch_size": 2, "learning_rate": 0.001, "max_length": 64}}
CHAT = {"name": "chitchat", "kind": "generation", "data": {"input_field": "", "target_field": ""},
        "prompt": {"system": "", "chat_template": "auto"},
        "train": {"epochs": 1, "batch_size": 2, "learning_rate": 0.001, "max_length": 64}}


def make_adapter(folder: Path, tokenizer, arch: str = "llama", kind: str = "classification") -> Path:
    """Save a tiny base under folder/base and a non-zero LoRA adapter for it under folder/adapter."""
    base = folder / "base"
    (tiny_llama if arch == "llama" else tiny_falcon)(vocab_size=len(tokenizer)).save_pretrained(base)
    tokenizer.save_pretrained(base)
    quantization = {"quant_type": "nf4", "double_quant": True}
    model = base_model.dense_copy(base_model.load_model(str(base), "main",
                                                            base_model.quantization_config(True, "nf4", True)))
    trained = methods.trainable(model, "qlora", lora_params(r=4, alpha=8, target_modules="all-linear"), False, str(base))
    model = trained.model
    torch.manual_seed(3)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # a trained adapter is not zero: make the merge matter
            torch.nn.init.normal_(p, std=0.05)
    run_info = {"task": CLASSIFY if kind == "classification" else CHAT,
                "labels": LABELS if kind == "classification" else None,
                "params": {"base_model": {"name": str(base), "revision": "main"}, "quantization": quantization,
                           "train": {"method": "qlora"},
                           "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}},
                "base_model": base_model.identity(str(base), "main"),
                "data_sha256": "0" * 64, "libraries": {}, "result": {}}
    save_trained(trained, tokenizer, folder / "adapter", run_info)
    return folder / "adapter"


@pytest.fixture(scope="module")
def classifier(tmp_path_factory, tokenizer) -> Path:
    return make_adapter(tmp_path_factory.mktemp("classifier"), tokenizer)


@pytest.fixture(scope="module")
def chatter(tmp_path_factory, tokenizer) -> Path:
    return make_adapter(tmp_path_factory.mktemp("chatter"), tokenizer, kind="generation")


def classify_texts(run, model, tokenizer, texts: list[str], batch_size: int, memory_gib: float) -> list[str]:
    """The labels a classification run gives (by its objective, with the prompt and labels it recorded)."""
    from finetune.kinds.classification import objective_of

    scores = objective_of(run.info["task"]).scores(model, tokenizer, texts, run.labels, run.prompt, run.max_length,
                                                    batch_size, memory_gib)
    return [run.labels[i] for i in scores.argmax(axis=1)]


def answer_conversations(run, model, tokenizer, conversations: list[list[dict]], batch_size: int, max_new_tokens: int,
                         no_repeat_ngram_size: int) -> list[str]:
    """The answers a generation run gives (its system message and chat format, greedy)."""
    from finetune.kinds.generation import answer_conversations as answer

    return answer(model, tokenizer, conversations, run.prompt, run.max_length, batch_size, max_new_tokens,
                  no_repeat_ngram_size)
