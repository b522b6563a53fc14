"""Unsloth's QLoRA on the same checkpoint and workloads, measured beside the project's in one run.

Unsloth pins older releases of TRL and datasets than the project's, so it runs in a child process whose PYTHONPATH
puts its own folder of packages first (`UNSLOTH_SITE`, installed from carried wheels) before the project's.
The child trains with Unsloth's `FastLanguageModel` (its 4-bit loader, its fused LoRA kernels, and its offloaded
checkpointing when asked for), LoRA r16/alpha32 on every linear layer, in a plain loop: length-grouped padded
batches (the loss on the answers), fused AdamW, no Trainer, so that nothing of ours slows it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

UNSLOTH_SITE = os.environ.get("UNSLOTH_SITE", ".whl/unsloth")
TARGETS = {  # every linear layer of each shape, by its model_type (Unsloth wants the names, not "all-linear")
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "falcon": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
}


def unsloth_measure(folder: Path, examples: list[dict], batch: int, steps: int, warmup: int,
                    offloaded_checkpointing: bool) -> dict:
    """The figures (as measure.figures gives them) of `warmup + steps` Unsloth steps, from a child process."""
    with tempfile.TemporaryDirectory() as work:
        spec = Path(work) / "spec.json"
        spec.write_text(json.dumps({"folder": str(folder), "examples": examples, "batch": batch, "steps": steps,
                                    "warmup": warmup, "offloaded": offloaded_checkpointing,
                                    "out": str(Path(work) / "out.json")}))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(UNSLOTH_SITE).resolve()),
                                                            os.environ.get("PYTHONPATH", ""), os.getcwd()]),
               "HF_HUB_OFFLINE": "1", "UNSLOTH_DISABLE_STATISTICS": "1"}
        proc = subprocess.run([sys.executable, "-c", "from benchmarks.unsloth_path import worker; worker()",
                               str(spec)], env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"unsloth child failed: {proc.stderr[-1500:]}")
        return json.loads((Path(work) / "out.json").read_text())


def _batches(examples: list[dict], batch: int, count: int) -> list[list[dict]]:
    """`count` batches of examples of similar length (sorted, then cut), in a seeded random order."""
    import random

    ordered = sorted(examples, key=lambda ex: len(ex["input_ids"]))
    batches = [ordered[i:i + batch] for i in range(0, len(ordered) - batch + 1, batch)]
    random.Random(1).shuffle(batches)
    return batches[:count]


def worker() -> None:
    """In the child: import Unsloth first (it patches transformers and PEFT as it loads), train, write the figures."""
    spec = json.loads(Path(sys.argv[1]).read_text())
    import unsloth  # noqa: F401
    import torch
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    from unsloth import FastLanguageModel

    from benchmarks.measure import figures, timed_step
    from benchmarks.workloads import stand_in_tokenizer

    folder = Path(spec["folder"])
    if not (folder / "tokenizer.json").is_file():  # the random checkpoint has none; Unsloth's loader wants one
        stand_in_tokenizer().save_pretrained(folder)
    assert isinstance(AutoTokenizer.from_pretrained(folder), PreTrainedTokenizerFast)
    model, _ = FastLanguageModel.from_pretrained(str(folder), max_seq_length=512, dtype=torch.bfloat16,
                                                 load_in_4bit=True, local_files_only=True)
    model = FastLanguageModel.get_peft_model(model, r=16, lora_alpha=32, lora_dropout=0, bias="none",
                                             target_modules=TARGETS[model.config.model_type], random_state=0,
                                             use_gradient_checkpointing="unsloth" if spec["offloaded"] else False)
    FastLanguageModel.for_training(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4, fused=True)
    torch.cuda.reset_peak_memory_stats()
    times, real = [], []
    for step, rows in enumerate(_batches(spec["examples"], spec["batch"], spec["warmup"] + spec["steps"])):
        width = max(len(ex["input_ids"]) for ex in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for r, ex in enumerate(rows):
            n = len(ex["input_ids"])
            ids[r, :n], mask[r, :n], labels[r, :n] = torch.tensor(ex["input_ids"]), 1, torch.tensor(ex["labels"])
        seconds, loss = timed_step(model, optimizer, ids, mask, labels)
        if step >= spec["warmup"]:
            times.append(seconds)
            real.append(int(mask.sum()))
    out = figures(spec["batch"], sum(times), len(times), sum(real), None, checkpointing=spec["offloaded"],
                  loss=float(loss))
    out["unsloth"] = unsloth.__version__
    Path(spec["out"]).write_text(json.dumps(out))
