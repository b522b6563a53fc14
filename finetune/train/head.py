"""The classification head's trainer: the transformers Trainer, as this pipeline runs it (finetune/train/trainer.py),
on texts and their label numbers; the loss is the model's own cross-entropy over the labels at each text's last token.

Texts are padded on the right, so each keeps the positions it has alone, and the head reads the last token that is
not padding (transformers' pooling for these models).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments

from finetune.model.methods import Trainable
from finetune.param_schemas import LoraParams, TrainParams
from finetune.train.batching import right_pad
from finetune.train.plan import StepPlan
from finetune.train.trainer import PipelineSteps, field_names, guards_and_optimizer, trainer_arguments


class HeadCollator:
    """A batch of texts padded to its longest, and their label numbers."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict]) -> dict:
        ids, mask = right_pad([f["input_ids"] for f in features], self.pad_token_id)
        return {"input_ids": ids, "attention_mask": mask,
                "labels": torch.tensor([f["label"] for f in features], dtype=torch.long)}


class HeadTrainer(PipelineSteps, Trainer):
    """The transformers Trainer as this pipeline runs it (`trainer.PipelineSteps`)."""


def build_trainer(trained: Trainable, tokenizer, train_set: list[dict], validation_set: list[dict], plan: StepPlan,
                  params: TrainParams, lora: LoraParams, epochs: float, work_dir: Path,
                  callbacks: list) -> HeadTrainer:
    """The Trainer for `trained` (a model with a classification head) as `plan` says, on examples of `input_ids` and
    `label` (the label's number): the divergence guards, LoRA+'s optimizer where asked. `callbacks` may hold
    functions that make a callback (called here, once the model is ready)."""
    args = TrainingArguments(**trainer_arguments(plan, params, epochs, str(work_dir), bool(validation_set),
                                                 field_names(TrainingArguments)))
    what_to_try, callbacks, optimizer = guards_and_optimizer(trained, plan, params, lora, callbacks)
    return HeadTrainer(model=trained.model, args=args, processing_class=tokenizer, train_dataset=train_set,
                       eval_dataset=validation_set or None, data_collator=HeadCollator(tokenizer.pad_token_id),
                       callbacks=callbacks, optimizers=(optimizer, None), what_to_try=what_to_try)
