"""How the benchmarks measure: GPU sync and peak memory, MFU, timed predictions, a Trainer step clock, the machine.

Every other benchmark module may import this one; it imports none of them.
"""

from __future__ import annotations

import contextlib
import gc
import subprocess
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

RESULTS = Path(__file__).parent / "results"
MATMUL_CEILING_TFLOPS = 802.0  # bf16, measured on the H100 these were written for


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


def timed_step(model, optimizer, ids, mask, labels) -> tuple[float, torch.Tensor]:
    """One plain training step on the GPU (forward, backward, optimizer), timed between synchronisations."""
    ids, mask, labels = ids.cuda(), mask.cuda(), labels.cuda()
    torch.cuda.synchronize()
    start = time.perf_counter()
    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    return time.perf_counter() - start, loss


def mfu(tokens_per_s: float, n_params: int) -> float | None:
    """4N FLOPs per trained token (frozen base: forward + input gradients) against the matmul ceiling."""
    return round(tokens_per_s * 4 * n_params / (MATMUL_CEILING_TFLOPS * 1e12), 4) if torch.cuda.is_available() else None


def timed_predict(fn, *args) -> tuple[list[str], dict]:
    """Run a predict function `fn(model, tokenizer, texts, ...)`; its wall time, examples/s and peak memory."""
    sync()
    reset_peak()
    start = time.perf_counter()
    predictions = fn(*args)
    sync()
    seconds = time.perf_counter() - start
    n = len(args[2])
    return predictions, {"seconds": round(seconds, 2), "examples_per_s": round(n / seconds, 2), "peak_gib": peak_gib()}


def figures(batch: int, seconds: float, steps: int, real_tokens: int, padded_tokens: int | None,
            checkpointing: bool, loss: float, peak_gib: float | None = None) -> dict:
    """A timed window's training figures: step time, real (and padded) tokens a second, peak memory, the last loss."""
    peak = peak_gib if peak_gib is not None else torch.cuda.max_memory_allocated() / 2**30
    return {"batch": batch, "steps_timed": steps, "step_s": round(seconds / steps, 4),
            "tokens_per_s": round(real_tokens / seconds, 1),
            "padded_tokens_per_s": round(padded_tokens / seconds, 1) if padded_tokens else None,
            "peak_gib": round(peak, 2), "gradient_checkpointing": checkpointing, "loss": round(loss, 4)}


class StepClock(TrainerCallback):
    """Each step's end, in seconds since training began (the GPU synced first); stops training after
    `warmup + steps` steps, or at the first step that ends past `budget_s`."""

    def __init__(self, warmup: int = 0, steps: int | None = None, budget_s: float | None = None):
        self.warmup, self.steps, self.budget_s = warmup, steps, budget_s
        self.begin, self.ends = 0.0, []

    def on_train_begin(self, args, state, control, **kwargs):
        sync()
        self.begin, self.ends = time.perf_counter(), []

    def on_step_end(self, args, state, control, **kwargs):
        sync()
        self.ends.append(time.perf_counter() - self.begin)
        enough = self.steps is not None and len(self.ends) >= self.warmup + self.steps
        if enough or (self.budget_s and self.ends[-1] > self.budget_s):
            control.should_training_stop = True

    def warmup_end(self) -> float:
        """Seconds from the start of training to the end of the warm-up steps."""
        return self.ends[self.warmup - 1] if self.warmup else 0.0

    def warmup_s(self) -> float:
        """Seconds from the start of training to the end of the warm-up steps (compilation included), rounded."""
        return round(self.warmup_end(), 1)

    def window(self) -> tuple[float, int]:
        """Seconds and step count from the end of the last warm-up step to the end of the last step."""
        return self.ends[-1] - self.warmup_end(), len(self.ends) - self.warmup

    def step_times(self) -> list[float]:
        """Each step's seconds, the first one's counted from the start of training."""
        return [b - a for a, b in zip([0.0, *self.ends], self.ends)]


@contextlib.contextmanager
def patched(module, name: str, value):
    """`module.name` is `value` inside the block, and what it was again on leaving."""
    before = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, before)


def cpu_model() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?")
