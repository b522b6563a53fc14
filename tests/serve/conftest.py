"""Tiny trained folders (tests/deliver/conftest.py's), loaded once for the serve tests, and a server over one of them
run by uvicorn in a thread of the test process on a free port."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

import pytest
import torch

from finetune.deliver.trained import load_trained
from finetune.model import base_model, methods
from finetune.serve.app import build_app
from finetune.serve.limits import Limits
from finetune.serve.served import Served
from finetune.train.training import save_trained
from tests.conftest import lora_params, tiny_llama
from tests.deliver.conftest import CLASSIFY, LABELS, make_adapter

HEAD = {**CLASSIFY, "train": {**CLASSIFY["train"], "objective": "head"}}
LIMITS = dict(window_ms=10.0, max_batch=8, max_queue=64, timeout_s=30.0, max_tokens=64, max_body_kib=64,
              memory_gib=1.0)


def make_head_adapter(folder: Path, tokenizer) -> Path:
    """A tiny base and a QLoRA adapter with a classification head (random, not zero), saved as train_qlora saves it."""
    from finetune import kinds

    base = folder / "base"
    tiny_llama(vocab_size=len(tokenizer)).save_pretrained(base)
    tokenizer.save_pretrained(base)
    head = kinds.get("classification").model_head(HEAD, LABELS, tokenizer)
    model = base_model.dense_copy(base_model.load_model(str(base), "main",
                                                        base_model.quantization_config(True, "nf4", True), head=head))
    trained = methods.trainable(model, "qlora", lora_params(r=4, alpha=8, target_modules="all-linear"), False,
                                str(base))
    torch.manual_seed(4)
    for name, p in trained.model.named_parameters():
        if "lora_B" in name or "score" in name:  # labels with distinct probabilities
            torch.nn.init.normal_(p, std=0.2)
    run_info = {"task": HEAD, "labels": LABELS,
                "params": {"base_model": {"name": str(base), "revision": "main"},
                           "quantization": {"quant_type": "nf4", "double_quant": True}, "train": {"method": "qlora"},
                           "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}},
                "base_model": base_model.identity(str(base), "main"), "data_sha256": "0" * 64, "libraries": {},
                "result": {}}
    save_trained(trained, tokenizer, folder / "adapter", run_info)
    return folder / "adapter"


@pytest.fixture(scope="package")
def chatter(tmp_path_factory, tokenizer) -> Path:
    return make_adapter(tmp_path_factory.mktemp("chatter"), tokenizer, kind="generation")


@pytest.fixture(scope="package")
def classifier(tmp_path_factory, tokenizer) -> Path:
    return make_adapter(tmp_path_factory.mktemp("classifier"), tokenizer)


@pytest.fixture(scope="package")
def head_classifier(tmp_path_factory, tokenizer) -> Path:
    return make_head_adapter(tmp_path_factory.mktemp("head"), tokenizer)


@pytest.fixture(scope="package")
def loaded_chatter(chatter):
    return load_trained(chatter)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(loaded, api_key: str | None = None, name: str | None = None, **limits):
    """A server over a loaded (run, model, tokenizer) in a thread; yields (its base URL, the app); stops it after."""
    import uvicorn

    settings = Limits(**{**LIMITS, **limits})
    app = build_app(Served(*loaded, name, settings), settings, api_key)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning",
                                           timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{server.config.port}", app
    finally:
        server.should_exit = True
        thread.join(10)
