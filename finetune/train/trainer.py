"""What every trainer of this pipeline shares, whatever it trains the model to do (write its answers:
finetune/train/sft.py; fill a classification head: finetune/train/head.py): the Trainer's settings from the plan
and params, the divergence guards, LoRA+'s optimizer, and the Trainer's behaviour the pipeline changes."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import torch
from transformers import TrainerCallback

from finetune.model.methods import Trainable
from finetune.param_schemas import LoraParams, TrainParams
from finetune.train import distributed
from finetune.train.guards import GradientGuard, LossGuard, advice
from finetune.train.plan import StepPlan


def trainer_arguments(plan: StepPlan, params: TrainParams, epochs: float, output_dir: str, has_validation: bool,
                      fields: set[str]) -> dict:
    """The transformers Trainer's settings this pipeline depends on, set explicitly: the plan's batch and rate, the
    params' schedule. `fields`: the settings the arguments class takes (its names change between versions).

    Padded batches are grouped by length (little padding); padding-free ones are drawn in random order, so that every
    step packs about the batch size times the mean length (grouped, some steps would pack only the longest examples).
    """
    on_gpu = torch.cuda.is_available()
    kwargs = dict(
        output_dir=output_dir, seed=params.seed, data_seed=params.seed,
        num_train_epochs=epochs, per_device_train_batch_size=plan.batch_per_process,
        per_device_eval_batch_size=plan.batch_per_process * 2,
        gradient_accumulation_steps=plan.accumulation,
        learning_rate=plan.learning_rate,
        weight_decay=params.weight_decay, lr_scheduler_type="cosine",
        logging_steps=params.logging_steps, logging_first_step=True, save_strategy="no", report_to=[],
        eval_strategy="epoch" if has_validation else "no",
        bf16=on_gpu and torch.cuda.is_bf16_supported(), fp16=False,
        remove_unused_columns=False, disable_tqdm=False, dataloader_num_workers=0, dataloader_pin_memory=on_gpu,
        # Every trainable weight takes part in every step, so DDP need not search the graph for unused ones (and
        # activation checkpointing is non-reentrant, methods.checkpointing_on, which DDP supports).
        ddp_find_unused_parameters=False,
    )
    kwargs["warmup_ratio" if "warmup_ratio" in fields else "warmup_steps"] = params.warmup_ratio
    # Switched on on the model itself, by `methods.trainable`, when the plan asks. transformers 5.2x renamed
    # gradient_checkpointing (a deprecated alias now, which warns).
    kwargs["activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"] = False
    if "train_sampling_strategy" in fields:
        kwargs["train_sampling_strategy"] = "random" if plan.padding_free else "group_by_length"
    else:
        kwargs["group_by_length"] = not plan.padding_free
    return kwargs


def field_names(arguments_class) -> set[str]:
    return {f.name for f in dataclasses.fields(arguments_class)}


def guards_and_optimizer(trained: Trainable, plan: StepPlan, params: TrainParams, lora: LoraParams,
                         callbacks: list) -> tuple[str, list, torch.optim.Optimizer | None]:
    """What to advise when training diverges, the callbacks (the gradient guard first; functions in `callbacks` are
    called here, once the model is ready) and LoRA+'s optimizer where asked (None: the Trainer's AdamW)."""
    what_to_try = advice(plan.task_learning_rate, params.warmup_ratio, scaled_to=plan.learning_rate)
    callbacks = [GradientGuard(what_to_try), *(c if isinstance(c, TrainerCallback) else c() for c in callbacks)]
    optimizer = loraplus_optimizer(trained.model, lora, plan.learning_rate, params.weight_decay) if (
        trained.method != "full" and lora.plus_lr_ratio > 0) else None
    return what_to_try, callbacks, optimizer


def loraplus_optimizer(model, lora: LoraParams, learning_rate: float, weight_decay: float):
    """LoRA+: AdamW with B's learning rate `lora.plus_lr_ratio` times A's (PEFT's optimizer; the schedule scales both)."""
    from peft.optimizers import create_loraplus_optimizer

    return create_loraplus_optimizer(model, torch.optim.AdamW, lr=learning_rate, loraplus_lr_ratio=lora.plus_lr_ratio,
                                     weight_decay=weight_decay)


class PipelineSteps(LossGuard):
    """The Trainer as this pipeline runs it, for a trainer class to inherit first: the loss guard, the same examples
    in the same order whatever the number of processes, checkpoints written by rank 0 alone, a cheap FLOP count."""

    def _get_train_sampler(self, train_dataset=None):
        """Length grouping over the global batch: the Trainer groups by the per-process batch, which would make the
        order depend on the process count; the processes then take turns at consecutive per-process batches."""
        if self.args.world_size == 1 or self.args.train_sampling_strategy != "group_by_length":
            return super()._get_train_sampler(train_dataset)
        from transformers.trainer_pt_utils import LengthGroupedSampler

        dataset = train_dataset if train_dataset is not None else self.train_dataset
        return LengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps
                                    * self.args.world_size, dataset=dataset,
                                    model_input_name=self.processing_class.model_input_names[0])

    def _save_rng_state(self, output_dir: str) -> None:
        """Every rank's RNG state in the checkpoint, written by rank 0 alone (the Trainer has each rank write its own)."""
        if self.args.world_size == 1:
            return super()._save_rng_state(output_dir)
        with tempfile.TemporaryDirectory(prefix="rng-state-") as own:
            super()._save_rng_state(own)
            states = {p.name: p.read_bytes() for p in Path(own).iterdir()}
        every = distributed.gathered([states])
        if distributed.is_main():
            for files in every:
                for name, data in files.items():
                    (Path(output_dir) / name).write_bytes(data)

    def floating_point_ops(self, inputs: dict) -> int:
        """The Trainer's FLOP count of a step (6 x tokens x non-embedding parameters), with the parameters counted
        once: the Trainer counts them again every step, a walk over every module, in a small model's step that
        is bound by the CPU."""
        main_input = getattr(self.model, "main_input_name", "input_ids")
        if main_input not in inputs or not hasattr(self.model, "num_parameters"):
            return 0
        if getattr(self, "_flops_per_token", None) is None:
            self._flops_per_token = 6 * self.model.num_parameters(exclude_embeddings=True)
        return inputs[main_input].numel() * self._flops_per_token
