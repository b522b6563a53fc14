"""A classification head on the base model's last token: transformers' `...ForSequenceClassification` of the
base's architecture, one output per label, read at each text's last token.

The base's own weights are loaded as they are; the head (`score`, hidden size x labels) is new. It is trained
with the adapter (PEFT's `modules_to_save`) or with every weight, and saved with them.
"""

from __future__ import annotations

import torch

from finetune.errors import PipelineError

HEAD = "score"  # the head's name in transformers' ...ForSequenceClassification models (Llama, Falcon, Mistral, ...)


def head_config(labels: list[str], tokenizer) -> dict:
    """What `base_model.load_model(head=...)` gives the model's config: the labels, in order, and the pad token the
    head's pooling skips to find each text's last token."""
    return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
            "label2id": {label: i for i, label in enumerate(labels)}, "pad_token_id": tokenizer.pad_token_id}


def is_classifier(model) -> bool:
    """The model (or the model inside a PEFT wrapper) has a classification head."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return type(inner).__name__.endswith("ForSequenceClassification")


def labels_of(model) -> list[str]:
    """The head's labels, in the order of its outputs."""
    id2label = model.config.id2label
    return [id2label[i] for i in range(len(id2label))]


@torch.no_grad()
def start_head(model) -> None:
    """Draw the new head's weights from the run's seed (set before), as the model's own init does: the same start
    for the same seed, whatever was drawn while loading."""
    layer = getattr(model, HEAD, None)
    if layer is None:
        raise PipelineError(f"{type(model).__name__} has no classification head named {HEAD!r}; "
                            "set the task's train.objective: label_scoring for this model")
    layer.weight.normal_(0.0, getattr(model.config, "initializer_range", 0.02))
    if layer.bias is not None:
        layer.bias.zero_()
