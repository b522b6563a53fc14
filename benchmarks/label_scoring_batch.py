"""Evaluate-stage label scoring throughput by batch size, on the full Instacart test split (SmolLM2-135M, NF4).

The base is loaded as the evaluate stage loads it (`--layers dense`: a small NF4 model dequantized once,
`finetune.model.base_model.dense_copy`), and with its 4-bit layers kept (`--layers 4bit`: loaded with `dense=False`).

Label scoring's speed does not depend on the adapter's values, so a fresh LoRA adapter (zero
update, as PEFT initialises it) stands in for a trained one; the predictions are checked to be
valid labels. On the GPU machine, after `instacart_smollm2 export`:

    python3 -m benchmarks.label_scoring_batch --model /root/smol --batches 64 256 512 1024 --layers dense 4bit
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

import torch

from benchmarks.instacart_lib import DATA, lib_load, lib_prompt, lib_task, lib_tokenizer, read_split
from benchmarks.measure import free, peak_gib, reset_peak, sync
from finetune import params
from finetune.evaluate import scoring
from finetune.model.adapters import lora_config
from peft import get_peft_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256, 512])
    parser.add_argument("--layers", nargs="+", choices=["dense", "4bit"], default=["dense", "4bit"],
                        help="the base as evaluate holds it (dense when small), and with its 4-bit layers kept")
    parser.add_argument("--limit", type=int, default=None, help="test examples (smoke tests only)")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()

    train, test = read_split("train", None), read_split("test", args.limit)
    labels = sorted({r["label"] for r in train})
    tokenizer = lib_tokenizer(args.model)
    prompts = [lib_prompt(r["text"]) for r in test]
    answer_prefix = lib_task().prompt.answer_prefix
    rows = []
    for layers in args.layers:
        model = lib_load(args.model, dense=layers == "dense")
        lora = params.replace(params.read("lora"), r=16, alpha=32, target_modules="all-linear")
        model = get_peft_model(model, lora_config(model, lora))
        scoring.label_scores(model, tokenizer, prompts[:256], labels, answer_prefix, 64)  # warm-up
        for batch in args.batches:
            rows.append({"layers": layers, **timed_scoring(model, tokenizer, prompts, labels, answer_prefix, batch)})
            print(rows[-1], flush=True)
        del model
        free()
    result = {
        "benchmark": "label_scoring_batch",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "libraries": {m.__name__: m.__version__ for m in (torch, __import__("transformers"), __import__("peft"),
                                                           __import__("bitsandbytes"))},
        "data": str(DATA), "cases": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"label_scoring_batch_{result['date'][:19].replace(':', '')}Z.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print("| layers | batch | examples/s | seconds | peak GiB | invalid |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['layers']} | {r['batch']} | {r['examples_per_s']} | {r['seconds']} | {r['peak_gib']} | {r['invalid']} |")


def timed_scoring(model, tokenizer, prompts: list[str], labels: list[str], answer_prefix: str, batch: int) -> dict:
    """One pass of `label_scores` over every prompt at `batch`: speed, peak memory, predictions that are no label."""
    sync()
    reset_peak()
    start = time.perf_counter()
    scores = scoring.label_scores(model, tokenizer, prompts, labels, answer_prefix, batch)
    sync()
    seconds = time.perf_counter() - start
    predicted = scoring.predict_by_scoring(scores, labels)
    return {"batch": batch, "examples": len(prompts), "seconds": round(seconds, 2),
            "examples_per_s": round(len(prompts) / seconds, 1), "peak_gib": peak_gib(),
            "invalid": sum(p not in labels for p in predicted)}


if __name__ == "__main__":
    main()
