"""TRL's SFTTrainer as this pipeline runs it: the config it sets in full, the examples as TRL takes them, the trainer."""

from __future__ import annotations

import contextlib
from pathlib import Path

from transformers import Trainer
from trl import SFTConfig, SFTTrainer

from finetune.model.methods import Trainable
from finetune.param_schemas import LoraParams, TrainParams
from finetune.text.prompts import IGNORE_INDEX
from finetune.train.batching import AnswerOnlyCollator
from finetune.train.plan import StepPlan
from finetune.train.trainer import PipelineSteps, field_names, guards_and_optimizer, trainer_arguments


def sft_config(plan: StepPlan, params: TrainParams, epochs: float, output_dir: str, has_validation: bool) -> SFTConfig:
    """TRL's SFTConfig with every setting this pipeline depends on set explicitly: the Trainer's
    (`trainer.trainer_arguments`), and the plan's packing.

    SFTConfig's own defaults differ from the Trainer's and would change the recipe: bf16 on (~20x
    slower on CPU), activation checkpointing on, learning rate 2e-5, max_length 1024.
    """
    kwargs = trainer_arguments(plan, params, epochs, output_dir, has_validation, field_names(SFTConfig))
    return SFTConfig(
        **kwargs,
        # The examples come tokenized and cut to max_length by the task's kind (the prompt loses its start, never the
        # answer); TRL would cut the end, and refuses a max_length with padding-free batches.
        max_length=None, padding_free=plan.padding_free, packing=False,
        completion_only_loss=True,  # else TRL ignores the completion_mask of padding-free examples
        assistant_only_loss=False,  # it needs {% generation %} tags SmolLM2's chat template lacks; labels mask instead
        shuffle_dataset=False,
    )


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


class PipelineTrainer(PipelineSteps, SFTTrainer):
    """TRL's SFTTrainer as this pipeline runs it (`trainer.PipelineSteps`), which takes the answer-only collator's
    batches at their speed.

    SFTTrainer computes the loss through its fused LM head, over every position on CPU. The answer-only
    collator's batches ask for the logits of the answer positions only (`logits_to_keep`), so their loss
    is the model's own, as the transformers Trainer computes it: the same numbers, a fraction of the head.
    Padding-free (packed) batches take the model's own loss too: the same numbers, fewer kernels and no
    read-backs a step, which is what a small model's GPU step is bound by.
    """

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
    what_to_try, callbacks, optimizer = guards_and_optimizer(trained, plan, params, lora, callbacks)
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
