"""The seed notebooks' training stack on a GPU, the baseline of `qlora_throughput.py` and `instacart_smollm2.py`.

nf4 + double quantisation, bf16 compute, prepare_model_for_kbit_training with gradient checkpointing, LoRA r=16
alpha=32 dropout 0.05 on all linear layers, paged 8-bit AdamW at 2e-4, every example padded to 512 tokens and the
loss on every real token.
"""

from __future__ import annotations

from pathlib import Path

import torch

from benchmarks.measure import figures, timed_step
from benchmarks.workloads import IGNORE_INDEX, SEQUENCE


def seeds_model(folder: Path):
    """The seeds' 4-bit model with its LoRA adapter, from a saved checkpoint, on the first GPU."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=quant, dtype=torch.bfloat16,
                                                 device_map={"": 0}, attn_implementation="sdpa")
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def seeds_measure(model, examples: list[dict], batch: int, steps: int, warmup: int) -> dict:
    """The seeds' loop: shuffled examples padded to 512, loss on every real token, paged 8-bit AdamW."""
    import bitsandbytes as bnb

    optimizer = bnb.optim.PagedAdamW8bit([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(1)).tolist()
    model.train()
    torch.cuda.reset_peak_memory_stats()
    times, real = [], []
    for step in range(warmup + steps):
        rows = [examples[i] for i in order[step * batch:(step + 1) * batch]]
        ids = torch.zeros((batch, SEQUENCE), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, ex in enumerate(rows):
            ids[r, :len(ex["input_ids"])] = torch.tensor(ex["input_ids"])
            mask[r, :len(ex["input_ids"])] = 1
        labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
        seconds, loss = timed_step(model, optimizer, ids, mask, labels)
        if step >= warmup:
            times.append(seconds)
            real.append(int(mask.sum()))
    return figures(batch, sum(times), len(times), sum(real), batch * SEQUENCE * len(times),
                   checkpointing=True, loss=float(loss))
