"""Evaluate-stage label scoring throughput by batch size, on the full Instacart test split (SmolLM2-135M, 4-bit).

Label scoring's speed does not depend on the adapter's values, so a fresh LoRA adapter (zero
update, as PEFT initialises it) stands in for a trained one; the predictions are checked to be
valid labels. On the GPU machine, after `instacart_smollm2 export`:

    python3 -m benchmarks.label_scoring_batch --model /root/smol --batches 64 256 512 1024
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

import torch

from benchmarks.instacart_lib import DATA, lib_load, lib_prompt, lib_task, lib_tokenizer, read_split
from finetune import params, scoring
from finetune.adapters import lora_config
from peft import get_peft_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256, 512])
    parser.add_argument("--limit", type=int, default=None, help="test examples (smoke tests only)")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()

    train, test = read_split("train", None), read_split("test", args.limit)
    labels = sorted({r["label"] for r in train})
    tokenizer = lib_tokenizer(args.model)
    model = lib_load(args.model)
    model = get_peft_model(model, lora_config(model, params.replace(params.read("lora"), r=16, alpha=32, target_modules="all-linear")))
    prompts = [lib_prompt(r["text"]) for r in test]
    answer_prefix = lib_task().prompt.answer_prefix
    scoring.label_scores(model, tokenizer, prompts[:256], labels, answer_prefix, 64)  # warm-up
    rows = []
    for batch in args.batches:
        torch.cuda.synchronize() if torch.cuda.is_available() else None
        torch.cuda.reset_peak_memory_stats() if torch.cuda.is_available() else None
        start = time.perf_counter()
        scores = scoring.label_scores(model, tokenizer, prompts, labels, answer_prefix, batch)
        torch.cuda.synchronize() if torch.cuda.is_available() else None
        seconds = time.perf_counter() - start
        predicted = scoring.predict_by_scoring(scores, labels)
        rows.append({"batch": batch, "examples": len(prompts), "seconds": round(seconds, 2),
                     "examples_per_s": round(len(prompts) / seconds, 1),
                     "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
                     "invalid": sum(p not in labels for p in predicted)})
        print(rows[-1], flush=True)
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
    print("| batch | examples/s | seconds | peak GiB | invalid |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['batch']} | {r['examples_per_s']} | {r['seconds']} | {r['peak_gib']} | {r['invalid']} |")


if __name__ == "__main__":
    main()
