"""CPU: train_qlora's training steps on the 4-bit layers vs on their NF4 weights dequantized once.

bitsandbytes has no fused 4-bit matmul on CPU, so each 4-bit layer dequantizes its weight at every
use (forward, and again for the input gradient). `finetune.model.base_model.dense_copy` does it once.
Same Instacart rows (.bench/instacart_all from `instacart_smollm2 prepare`), same params.yaml, same seed.

    python -m benchmarks.cpu_dense_training --rows 480
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import platform
from pathlib import Path

import torch

from benchmarks.instacart_lib import lib_encode, lib_load, lib_tokenizer, lib_train, read_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/base/smollm2-135m-instruct")
    parser.add_argument("--rows", type=int, default=480, help="training rows (params.yaml's batch size: 16 a step)")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    from finetune.model import base_model

    tokenizer = lib_tokenizer(args.model)
    train = lib_encode(tokenizer, read_split("train", args.rows))
    record = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ"),
              "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, no GPU",
              "libraries": {n: importlib.metadata.version(n) for n in ("torch", "transformers", "peft", "bitsandbytes")},
              "command": f"python -m benchmarks.cpu_dense_training --rows {args.rows}", "cases": {}}
    for case in ("4bit", "dense"):
        model = lib_load(args.model)
        if case == "dense":
            model = base_model.dense_copy(model)
        _, result, _ = lib_train(model, tokenizer, train, [], {}, Path(f"/tmp/cpu_dense_training/{case}"))
        record["cases"][case] = {k: result[k] for k in ("runtime_s", "steps", "final_loss", "tokens_per_s", "peak_memory_gib")}
        print(case, record["cases"][case], flush=True)
    record["speed_up"] = round(record["cases"]["4bit"]["runtime_s"] / record["cases"]["dense"]["runtime_s"], 2)
    path = Path(args.out) / f"cpu_dense_training_{record['date']}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"dense is {record['speed_up']}x the 4-bit layers' speed; {path}")


if __name__ == "__main__":
    main()
