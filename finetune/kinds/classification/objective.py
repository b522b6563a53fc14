"""What a classification task trains the model to do (`tasks.<task>.train.objective`), one module each beside this
one: how a row becomes a training example, which model it trains, and how that model gives every label a score."""

from __future__ import annotations

import numpy as np

from finetune.param_schemas import Task


class Objective:
    """A training objective of classification. Each method is one stage's or command's objective-specific part."""

    name: str                 # tasks.<task>.train.objective
    has_head: bool           # the model has a classification head (it cannot write text)
    auto_class: str           # the transformers class that loads the trained model, as the model cards write it

    def encode(self, tokenizer, rows: list[dict], task: Task, labels: list[str]) -> list[dict]:
        """A split's rows as training examples."""
        raise NotImplementedError

    def head(self, labels: list[str], tokenizer) -> dict | None:
        """The config of the classification head the model has (finetune.model.head), or None (it writes labels)."""
        return None

    def side_by_side(self, folder, load_base, labels: list[str], tokenizer):
        """Yield ("base", model) then ("finetuned", model), the base as it is (scored zero-shot), each let go before
        the next loads. `load_base(head=None)` loads the base as evaluate holds it."""
        raise NotImplementedError

    def scores(self, model, tokenizer, texts: list[str], labels: list[str], prompt, max_length: int, batch_size: int,
               memory_gib: float, desc: str = "scoring", on_batch=None) -> np.ndarray:
        """An (examples x labels) array whose softmax along a row is the model's probability of each label (`prompt`:
        the task's prompt params; `max_length`: training's, where the model cuts a prompt as training did)."""
        raise NotImplementedError

    def classify(self, model, tokenizer, texts: list[str], labels: list[str], task: Task, batch_size: int, name: str,
                 memory_gib: float) -> list[str]:
        """A label for each test text, as evaluate labels them."""
        scores = self.scores(model, tokenizer, texts, labels, task.prompt, task.train.max_length, batch_size,
                             memory_gib, desc=f"{name}: scoring labels")
        return [labels[i] for i in scores.argmax(axis=1)]

    def card_what_it_does(self, prompt: dict, field: str) -> list[str]:
        """How the model reads a text and answers, for the model card."""
        raise NotImplementedError

    def card_code(self, run_info: dict, example: str) -> list[str]:
        """Python lines that use the loaded `model` and `tokenizer` on `example`, as evaluate did."""
        raise NotImplementedError
