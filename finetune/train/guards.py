"""Stop a diverging run at once: a non-finite loss or gradient norm ends training with one line, before the
optimizer step that would spread it into the adapter (the Trainer would otherwise log an average and go on)."""

from __future__ import annotations

import math

import torch
from transformers import TrainerCallback

from finetune.errors import PipelineError


def advice(learning_rate: float, warmup_ratio: float, scaled_to: float | None = None) -> str:
    """What to try, in the params' own words; `scaled_to`: the rate a GPU's grown batch trained at instead."""
    rate = f"now {learning_rate:g}"
    if scaled_to is not None and scaled_to != learning_rate:
        rate += f", which the GPU's grown batch scaled to {scaled_to:.3g}; or set train.gpu_lr_scaling: none"
    return (f"lower the task's train.learning_rate ({rate}) or raise train.warmup_ratio "
            f"(now {warmup_ratio:g}); no adapter was written")


def diverged(what: str, value: float, step: int, what_to_try: str) -> PipelineError:
    return PipelineError(f"training diverged at step {step}: the {what} is {value}; {what_to_try}")


class LossGuard:
    """A Trainer (inherited after this) with each micro-batch's loss checked (the Trainer already reads it back every
    step)."""

    def __init__(self, *args, what_to_try: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.what_to_try = what_to_try

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss).all():
            raise diverged("loss", float(loss.detach().float().mean()), self.state.global_step + 1, self.what_to_try)
        return loss


class GradientGuard(TrainerCallback):
    """Checks the gradient norm after clipping, before the optimizer step: it is finite only if the raw one was.

    The trainable weights are listed at the first check (the model is wrapped by then) and kept: walking a
    small model's 2,500 modules for its 700 weights at every step costs a dispatch-bound GPU step 5%.
    """

    def __init__(self, what_to_try: str):
        self.what_to_try = what_to_try
        self.trainable: list[torch.Tensor] | None = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.trainable is None:
            self.trainable = [p for p in model.parameters() if p.requires_grad]
        grads = [p.grad for p in self.trainable if p.grad is not None]
        if grads:
            norm = float(torch.nn.utils.get_total_norm(grads))
            if not math.isfinite(norm):
                raise diverged("gradient norm", norm, state.global_step + 1, self.what_to_try)
        return control
