"""Train a tiny Llama through the pipeline's trainer and save its loss curve and weights: run as one process by the
tests, and as several under accelerate launch, one launch for several settings
(`python -m tests.distributed_training OUT METHOD:BATCH:ACCUMULATION ...`, each written to OUT/METHOD-BATCH-ACCUMULATION).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from transformers import AutoTokenizer, TrainerCallback

from finetune import param_schemas, params
from finetune.model import methods
from finetune.model.embedded import EMBEDDED_DIR
from finetune.train import distributed
from finetune.train.training import train_model
from tests.conftest import ROOT, tiny_llama

EXAMPLES = 72  # a multiple of every batch per update tested: accelerate fills a last, smaller batch of each process from the start of the data


class LossCurve(TrainerCallback):
    def __init__(self):
        self.losses: list[float] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))


def examples(vocab: int) -> list[dict]:
    """Random token rows of 6 to 25 tokens, the loss on their last two: the same on every process (seeded)."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(EXAMPLES):
        n = 6 + int(torch.randint(0, 20, (1,), generator=g))
        ids = torch.randint(0, vocab, (n,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * (n - 2) + ids[-2:], "attention_mask": [1] * n})
    return rows


def train(out: Path, method: str, batch: int, accumulation: int) -> None:
    """Train, then (rank 0) write `out`/result.json (the loss curve, the figures) and `out`/weights.pt."""
    distributed.start()
    tokenizer = AutoTokenizer.from_pretrained(ROOT / EMBEDDED_DIR)
    base = out / "base"
    if distributed.is_main():
        tiny_llama(len(tokenizer)).save_pretrained(base)
        tokenizer.save_pretrained(base)
    distributed.barrier()
    task_train = param_schemas.TaskTrainParams(epochs=1, batch_size=batch, learning_rate=1e-3, max_length=64)
    train_p = params.replace(params.read("train", ROOT / "params.yaml"), method=method, logging_steps=1,
                             gradient_accumulation=accumulation, checkpoint_minutes=0)
    model = methods.load_base(str(base), "main", method, params.read("quantization", ROOT / "params.yaml"), dense=False)
    curve = LossCurve()
    trained, result, _ = train_model(model, tokenizer, examples(len(tokenizer)), [], task_train, train_p,
                                  params.read("lora", ROOT / "params.yaml"), out / "work", callbacks=[curve])
    if distributed.is_main():
        weights = {k: v.detach().float().cpu() for k, v in trained.model.named_parameters() if v.requires_grad}
        torch.save(weights, out / "weights.pt")
        (out / "result.json").write_text(json.dumps({"losses": curve.losses, "processes": result.processes,
                                                     "batch_size": result.batch_size, "steps": result.steps}))


def folder_name(method: str, batch: int, accumulation: int) -> str:
    return f"{method}-{batch}-{accumulation}"


if __name__ == "__main__":
    for setting in sys.argv[2:]:
        method, batch, accumulation = setting.split(":")
        train(Path(sys.argv[1]) / folder_name(method, int(batch), int(accumulation)), method, int(batch),
              int(accumulation))
