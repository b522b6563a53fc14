"""How the benchmarks measure: GPU sync and peak memory, MFU, timed predictions, the seeds' pipeline loop.

Shared by `qlora_throughput.py`, `seeds_stack.py`, `packing_check.py`, `instacart_smollm2.py` and `label_scoring_batch.py`.
"""

from __future__ import annotations

import contextlib
import gc
import time

import torch

from benchmarks.instacart_lib import NO_LABEL, lib_collate, lib_match, lib_prompt

MATMUL_CEILING_TFLOPS = 802.0  # bf16, measured on the H100 these were written for
SEEDS_LENGTH = 512             # the seed notebooks padded every example to this many tokens


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


def free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def mfu(tokens_per_s: float, n_params: int) -> float | None:
    """4N FLOPs per trained token (frozen base: forward + input gradients) against the matmul ceiling."""
    return round(tokens_per_s * 4 * n_params / (MATMUL_CEILING_TFLOPS * 1e12), 4) if torch.cuda.is_available() else None


def accuracy(actual: list[str], predicted: list[str]) -> dict:
    n = len(actual)
    return {"examples": n, "accuracy": round(sum(a == p for a, p in zip(actual, predicted)) / n, 4),
            "no_label_rate": round(sum(p == NO_LABEL for p in predicted) / n, 4)}


def timed_predict(fn, *args) -> tuple[list[str], dict]:
    """Run a predict function; its wall time, examples/s and peak memory."""
    sync()
    reset_peak()
    start = time.perf_counter()
    predictions = fn(*args)
    sync()
    seconds = time.perf_counter() - start
    n = len(args[2])
    return predictions, {"seconds": round(seconds, 2), "examples_per_s": round(n / seconds, 2), "peak_gib": peak_gib()}


def pipeline_predict(model, tokenizer, texts: list[str], labels: list[str]) -> list[str]:
    """The seeds' evaluation: pipeline("text-generation"), one example at a time, greedy, exact match."""
    from transformers import pipeline

    pipe = pipeline("text-generation", model=model, tokenizer=tokenizer)
    kwargs = dict(max_new_tokens=8, do_sample=False, return_full_text=False, use_cache=True,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model.eval()
    answers = [pipe(lib_prompt(t), **kwargs)[0]["generated_text"] for t in texts]
    return lib_match(answers, labels)


def warm_pipeline(model, tokenizer, texts, labels) -> None:
    pipeline_predict(model, tokenizer, texts[:2], labels)


@torch.no_grad()
def loss_check(model, tokenizer, encoded: list[dict], batches: int, size: int) -> dict:
    """The project's loss (left-padded per batch, answer-only logits) against the plain path on the same
    batches: every logit of the same batch, and each example right-padded to 512 (as the seeds padded)."""
    dev = next(model.parameters()).device
    model.eval()
    rows = []
    for b in range(min(batches, len(encoded) // size)):
        features = encoded[b * size:(b + 1) * size]
        fast = {k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in lib_collate(tokenizer, features).items()}
        width = fast["input_ids"].shape[1]
        full_labels = torch.full((len(features), width), -100, dtype=torch.long)
        for i, f in enumerate(features):
            full_labels[i, width - len(f["labels"]):] = torch.tensor(f["labels"])
        padded = torch.full((len(features), SEEDS_LENGTH), tokenizer.pad_token_id, dtype=torch.long)
        padded_mask = torch.zeros_like(padded)
        padded_labels = torch.full_like(padded, -100)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            padded[i, :n], padded_mask[i, :n], padded_labels[i, :n] = (torch.tensor(f["input_ids"]), 1,
                                                                        torch.tensor(f["labels"]))
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            project = model(**fast).loss
            plain = model(input_ids=fast["input_ids"], attention_mask=fast["attention_mask"],
                          position_ids=fast["position_ids"], labels=full_labels.to(dev)).loss
            pad512 = model(input_ids=padded.to(dev), attention_mask=padded_mask.to(dev), labels=padded_labels.to(dev)).loss
        rows.append([round(float(x), 5) for x in (project, plain, pad512)])
    diff = max(max(abs(r[0] - r[1]), abs(r[0] - r[2])) for r in rows)
    return {"batches": rows, "columns": ["project", "same batch, all logits", "each padded to 512"],
            "max_abs_diff": round(diff, 5)}


def figures(batch: int, seconds: float, steps: int, real_tokens: int, padded_tokens: int | None,
            checkpointing: bool, loss: float, peak_gib: float | None = None) -> dict:
    """A timed window's training figures: step time, real (and padded) tokens a second, peak memory, the last loss."""
    peak = peak_gib if peak_gib is not None else torch.cuda.max_memory_allocated() / 2**30
    return {"batch": batch, "steps_timed": steps, "step_s": round(seconds / steps, 4),
            "tokens_per_s": round(real_tokens / seconds, 1),
            "padded_tokens_per_s": round(padded_tokens / seconds, 1) if padded_tokens else None,
            "peak_gib": round(peak, 2), "gradient_checkpointing": checkpointing, "loss": round(loss, 4)}


@contextlib.contextmanager
def restored(module, name: str):
    """Put `module.name` back as it was on leaving, whatever the block set it to."""
    before = getattr(module, name)
    try:
        yield
    finally:
        setattr(module, name, before)
