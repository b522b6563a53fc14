"""QLoRA training throughput on one GPU: the seeds' plain HF stack vs this project's train path.

Both paths train the same randomly initialised 7B-shaped model (built from `LlamaConfig()` /
`FalconConfig()`, whose defaults are the 7B shapes; speed does not depend on the weights' values)
on the same full-length batches, with LoRA r=16 alpha=32 on all linear layers and paged 8-bit AdamW.

- seeds:   nf4 + double quantisation, bf16 compute, prepare_model_for_kbit_training with
           gradient checkpointing, LoRA dropout 0.05 (what the seed notebooks ran).
- project: finetune.base_model.load_model + finetune.training.attach_adapter, i.e. exactly what
           the train_qlora stage does on a GPU, with params.yaml's lora section.

Writes one JSON per run under benchmarks/results/ and prints a table. Usage (on the GPU machine):

    python3 -m benchmarks.qlora_throughput --models llama-7b --batches 4 8
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import importlib.metadata
import json
import time
from pathlib import Path

import torch

MATMUL_CEILING_TFLOPS = 802.0  # bf16, measured on the H100 this was written for
SEQUENCE = 512


def build_checkpoint(shape: str, folder: Path) -> int:
    """Save a random bf16 model of the given shape (once); returns its parameter count."""
    from transformers import AutoModelForCausalLM, FalconConfig, LlamaConfig

    config = {"llama-7b": LlamaConfig, "falcon-7b": FalconConfig}[shape]()
    with torch.device("meta"):
        n_params = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    if not (folder / "config.json").is_file():
        torch.manual_seed(0)
        with torch.device("cuda"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.save_pretrained(folder)
        del model
        gc.collect()
        torch.cuda.empty_cache()
    return n_params


def seeds_model(folder: Path):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=quant, dtype=torch.bfloat16,
                                                 device_map={"": 0}, attn_implementation="sdpa")
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def project_model(folder: Path):
    from finetune import base_model, params
    from finetune.training import attach_adapter

    lora = dataclasses.replace(params.read("lora"), r=16, alpha=32)
    train = params.read("train")
    model = base_model.load_model(str(folder), "main", base_model.quantization_config(True, "nf4", True))
    model, _ = attach_adapter(model, lora, train.gradient_checkpointing)
    return model


def measure(model, batch: int, steps: int, warmup: int) -> dict:
    """Tokens/s, step time and peak memory over `steps` optimizer steps on random full-length batches."""
    import bitsandbytes as bnb

    optimizer = bnb.optim.PagedAdamW8bit([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    vocab = model.get_input_embeddings().weight.shape[0]
    gen = torch.Generator(device="cuda").manual_seed(0)
    model.train()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(warmup + steps):
        ids = torch.randint(0, vocab, (batch, SEQUENCE), device="cuda", generator=gen)
        torch.cuda.synchronize()
        start = time.perf_counter()
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    step_s = sum(times) / len(times)
    return {"batch": batch, "step_s": round(step_s, 4), "tokens_per_s": round(batch * SEQUENCE / step_s, 1),
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2), "loss": round(float(loss), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["llama-7b", "falcon-7b"])
    parser.add_argument("--batches", nargs="+", type=int, default=[4, 8])
    parser.add_argument("--paths", nargs="+", default=["seeds", "project"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--work", default="/root/bench_models")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()

    versions = {name: importlib.metadata.version(name)
                for name in ("torch", "transformers", "peft", "bitsandbytes", "accelerate")}
    rows = []
    for shape in args.models:
        folder = Path(args.work) / shape
        n_params = build_checkpoint(shape, folder)
        for path in args.paths:
            model = (seeds_model if path == "seeds" else project_model)(folder)
            for batch in args.batches:
                try:
                    result = measure(model, batch, args.steps, args.warmup)
                except torch.OutOfMemoryError:
                    result = {"batch": batch, "error": "out of memory"}
                result.update(model=shape, path=path, parameters=n_params)
                if "tokens_per_s" in result:
                    result["mfu"] = round(result["tokens_per_s"] * 4 * n_params / (MATMUL_CEILING_TFLOPS * 1e12), 4)
                rows.append(result)
                print(json.dumps(result), flush=True)
            del model
            gc.collect()
            torch.cuda.empty_cache()

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"date": stamp, "machine": torch.cuda.get_device_name(0), "sequence": SEQUENCE,
              "matmul_ceiling_tflops": MATMUL_CEILING_TFLOPS, "libraries": versions, "cases": rows}
    (out / f"qlora_throughput_{stamp}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"{'model':10} {'path':8} {'batch':>5} {'tok/s':>8} {'peak GiB':>8} {'MFU':>6}")
    for r in rows:
        print(f"{r['model']:10} {r['path']:8} {r['batch']:>5} {r.get('tokens_per_s', 'OOM'):>8} "
              f"{r.get('peak_gib', '-'):>8} {r.get('mfu', '-'):>6}")


if __name__ == "__main__":
    main()
