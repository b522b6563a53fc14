"""The loss of the same examples packed in one row and padded in one batch, on a 7B shape in 4-bit on a GPU.

Run by `qlora_throughput.py run --packing-check`; on CPU, tests/train/test_batching.py and tests/train/test_sft.py
check the same in fp32 on tiny models.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from benchmarks.measure import free
from benchmarks.workloads import SEQUENCE, stand_in_tokenizer


def packing_check(folder: Path, examples: list[dict], n: int = 64) -> dict:
    """The loss and the LoRA weights' gradient of the same `n` examples in one padded batch and in one packed row,
    through build_trainer's batches: on a GPU the packed row's attention is flash varlen, the padded batch's SDPA;
    `masked_*`: the packed row through SDPA and its mask, as before flash varlen (the same kernel as the padded batch,
    so its difference is the bf16 rounding of the rows' other shapes, and the packed one's beyond it the kernels')."""
    import tempfile

    from finetune import params
    from finetune.model import base_model, methods
    from finetune.param_schemas import TaskTrainParams
    from finetune.train import sft
    from finetune.train.batching import PackedAttention, flash_over_examples
    from finetune.train.training import step_plan

    model = base_model.load_model(str(folder), "main", base_model.quantization_config(True, "nf4", True))
    lora = params.replace(params.read("lora"), r=16, alpha=32)
    trained = methods.trainable(model, "qlora", lora, False, "")
    task_train = TaskTrainParams(epochs=1, batch_size=n, learning_rate=2e-4, max_length=SEQUENCE)
    tokenizer = stand_in_tokenizer()
    losses, grads = {}, {}
    weights = [p for p in trained.model.parameters() if p.requires_grad]
    with tempfile.TemporaryDirectory() as work, torch.autocast("cuda", dtype=torch.bfloat16), \
            base_model.key_value_heads_repeated(trained.model):
        # key/value heads repeated as training runs Falcon: its kernel sees equal heads
        for name in ("padded", "packed", "packed_masked"):  # packed_masked: SDPA over the row with its mask
            padding_free = name != "padded"
            # gpu_batch_tokens 0: the plan keeps the batch at the n examples compared
            train_p = params.replace(params.read("train"), padding_free=padding_free, gpu_batch_tokens=0)
            plan = step_plan(trained.model, examples[:n], task_train, train_p, lora)
            trainer = sft.build_trainer(trained, tokenizer, examples[:n], [], plan, train_p, lora, task_train.epochs,
                                        Path(work) / name, [])
            kernel = flash_over_examples if name == "packed" else None
            with PackedAttention(trained.model, kernel) if padding_free else contextlib.nullcontext():
                batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
                loss = trainer.compute_loss(trained.model.eval(), batch)
                loss.backward()
            losses[name] = float(loss)
            grads[name] = torch.cat([p.grad.float().flatten() for p in weights if p.grad is not None])
            trained.model.zero_grad(set_to_none=True)

    out = {"examples": n, **{k: round(v, 5) for k, v in losses.items()},
           "relative_difference": round(abs(losses["packed"] - losses["padded"]) / losses["padded"], 6),
           "gradient_relative_difference": gradient_difference(grads["packed"], grads["padded"]),
           "masked_relative_difference": round(abs(losses["packed_masked"] - losses["padded"]) / losses["padded"], 6),
           "masked_gradient_relative_difference": gradient_difference(grads["packed_masked"], grads["padded"])}
    del trained, model, grads
    free()
    return out


def gradient_difference(gradient: torch.Tensor, padded: torch.Tensor) -> float:
    """How far a gradient is from the padded batch's, relative to the padded one's norm."""
    return round(float((gradient - padded).norm() / padded.norm()), 6)
