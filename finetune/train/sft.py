"""TRL's SFTTrainer as this pipeline runs it: the config it sets in full, the examples as TRL takes them, the trainer."""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback
from trl import SFTConfig

from finetune.model.methods import Trainable
from finetune.param_schemas import LoraParams, TrainParams
from finetune.text.prompts import IGNORE_INDEX
from finetune.train import distributed
from finetune.train.batching import AnswerOnlyCollator
from finetune.train.guards import GradientGuard, GuardedTrainer, advice
from finetune.train.plan import StepPlan


def sft_config(plan: StepPlan, params: TrainParams, epochs: float, output_dir: str, has_validation: bool) -> SFTConfig:
    """TRL's SFTConfig with every setting this pipeline depends on set explicitly: the plan's batch, rate and packing,
    the params' schedule.

    SFTConfig's own defaults differ from the Trainer's and would change the recipe: bf16 on (~20x
    slower on CPU), activation checkpointing on (it is switched on on the model itself, by
    `methods.trainable`, when the plan asks), learning rate 2e-5, max_length 1024.
    Padded batches are grouped by length (little padding); padding-free ones are drawn in random order, so that every
    step packs about the batch size times the mean length (grouped, some steps would pack only the longest examples).
    """
    fields = {f.name for f in dataclasses.fields(SFTConfig)}
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
        # The examples come tokenized and cut to max_length by the task's kind (the prompt loses its start, never the
        # answer); TRL would cut the end, and refuses a max_length with padding-free batches.
        max_length=None, padding_free=plan.padding_free, packing=False,
        completion_only_loss=True,  # else TRL ignores the completion_mask of padding-free examples
        assistant_only_loss=False,  # it needs {% generation %} tags SmolLM2's chat template lacks; labels mask instead
        shuffle_dataset=False,
        # Every trainable weight takes part in every step, so DDP need not search the graph for unused ones (and
        # activation checkpointing is non-reentrant, methods.checkpointing_on, which DDP supports).
        ddp_find_unused_parameters=False,
    )
    kwargs["warmup_ratio" if "warmup_ratio" in fields else "warmup_steps"] = params.warmup_ratio
    # transformers 5.2x renamed gradient_checkpointing (a deprecated alias now, which warns)
    kwargs["activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"] = False
    if "train_sampling_strategy" in fields:
        kwargs["train_sampling_strategy"] = "random" if plan.padding_free else "group_by_length"
    else:
        kwargs["group_by_length"] = not plan.padding_free
    return SFTConfig(**kwargs)


def as_dataset(examples: list[dict], padding_free: bool):
    """Encoded examples as TRL takes them: input ids and labels for the answer-only collator, or input ids and a
    completion mask for TRL's own padding-free collator (TRL builds the labels from it)."""
    from datasets import Dataset

    if padding_free:
        rows = [{"input_ids": ex["input_ids"], "completion_mask": [int(lab != IGNORE_INDEX) for lab in ex["labels"]]}
                for ex in examples]
    else:
        rows = [{"input_ids": ex["input_ids"], "labels": ex["labels"]} for ex in examples]
    return Dataset.from_list(rows)


class PipelineTrainer(GuardedTrainer):
    """TRL's SFTTrainer (with the divergence guard), which takes the answer-only collator's batches at their speed,
    and trains the same examples in the same order whatever the number of processes.

    SFTTrainer computes the loss through its fused LM head, over every position on CPU. The answer-only
    collator's batches ask for the logits of the answer positions only (`logits_to_keep`), so their loss
    is the model's own, as the transformers Trainer computes it: the same numbers, a fraction of the head.
    Padding-free (packed) batches take the model's own loss too: the same numbers, fewer kernels and no
    read-backs a step, which is what a small model's GPU step is bound by.
    """

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

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        packed = "position_ids" in inputs and "attention_mask" not in inputs and "labels" in inputs
        if "logits_to_keep" in inputs or packed:
            # Packed rows: TRL's collator masks the label of each example's first token, so the model's own
            # shifted loss never crosses from one example into the next; it skips TRL's chunked LM head and
            # its per-step entropy and token accuracy, read back from the GPU three times a step.
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def build_trainer(trained: Trainable, tokenizer, train_set: list[dict], validation_set: list[dict], plan: StepPlan,
                  params: TrainParams, lora: LoraParams, epochs: float, work_dir: Path,
                  callbacks: list) -> PipelineTrainer:
    """The SFTTrainer for `trained` as `plan` says: the answer-only collator (or TRL's padding-free one), the
    divergence guards, LoRA+'s optimizer where asked, and the trainable weights as they were before TRL's bf16 cast.
    `callbacks` may hold functions that make a callback (called here, once the model is ready)."""
    model = trained.model
    args = sft_config(plan, params, epochs, str(work_dir), has_validation=bool(validation_set))
    what_to_try = advice(plan.task_learning_rate, params.warmup_ratio, scaled_to=plan.learning_rate)
    callbacks = [GradientGuard(what_to_try), *(c if isinstance(c, TrainerCallback) else c() for c in callbacks)]
    optimizer = loraplus_optimizer(model, lora, plan.learning_rate, params.weight_decay) if (
        trained.method != "full" and lora.plus_lr_ratio > 0) else None
    with weights_kept(model):  # SFTTrainer casts a quantized base's LoRA weights to bf16, even on CPU
        return PipelineTrainer(
            model=model, args=args, processing_class=tokenizer,
            train_dataset=as_dataset(train_set, plan.padding_free),
            eval_dataset=as_dataset(validation_set, plan.padding_free) if validation_set else None,
            data_collator=None if plan.padding_free else AnswerOnlyCollator(tokenizer.pad_token_id),
            callbacks=callbacks, optimizers=(optimizer, None), what_to_try=what_to_try)


@contextlib.contextmanager
def weights_kept(model):
    """Give the trainable weights back their values and dtype on leaving, as they were on entering.

    TRL's SFTTrainer rounds the LoRA weights of a quantized base to bf16 (no argument avoids it): a cast
    back to fp32 would keep the rounding, so the adapter would start elsewhere than PEFT put it. Only a
    quantized model is affected, so only its (adapter-sized) trainable weights are copied.
    """
    quantized = getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)
    kept = {name: p.data.clone() for name, p in model.named_parameters() if p.requires_grad} if quantized else {}
    try:
        yield
    finally:
        for name, p in model.named_parameters():
            if name in kept:
                p.data = kept[name]


def loraplus_optimizer(model, lora: LoraParams, learning_rate: float, weight_decay: float):
    """LoRA+: AdamW with B's learning rate `lora.plus_lr_ratio` times A's (PEFT's optimizer; the schedule scales both)."""
    from peft.optimizers import create_loraplus_optimizer

    return create_loraplus_optimizer(model, torch.optim.AdamW, lr=learning_rate, loraplus_lr_ratio=lora.plus_lr_ratio,
                                     weight_decay=weight_decay)
