"""The trained model as the server holds it: its names, its context, what its kind lets it answer, and the two kinds
of work its batcher runs (generation a token at a time; predictions as `finetune predict` makes them)."""

from __future__ import annotations

import copy
from pathlib import Path

from finetune.deliver.trained import TrainedRun
from finetune.serve import decode
from finetune.serve.batcher import Job
from finetune.serve.limits import Limits
from finetune.text.chat import conversation_prompt_ids
from finetune.text.prompts import end_token_id, prompt_ids


class Served:
    """A loaded run (`finetune.deliver.trained.load_trained`) and what it can be asked."""

    def __init__(self, run: TrainedRun, model, tokenizer, name: str | None, limits: Limits):
        self.run, self.model, self.tokenizer, self.limits = run, model, tokenizer, limits
        self.name = name or run.folder.resolve().name
        self.aliases = {self.name, str(run.folder), str(run.folder.resolve())}
        self.created = int(Path(run.folder, "run.json").stat().st_mtime)
        # the request side tokenizes while the worker thread decodes: a fast tokenizer is not to be shared by threads
        self.front = copy.deepcopy(tokenizer)
        self.context = context_length(model, tokenizer)
        self.eos = end_token_id(tokenizer)
        kind = run.kind
        self.task = f"a {kind.name} task ({run.info['task']['name']})"
        self.chats = kind.can_chat
        self.writes_text = run.head(tokenizer) is None  # a classification head scores labels; it cannot write
        self.predicts_labels = "label" in kind.predict_fields

    def knows(self, model: str) -> bool:
        return model in self.aliases

    def chat_ids(self, messages: list[dict]) -> list[int]:
        """The prompt of a conversation, as training formatted it (the run's system message and chat format), cut to
        training's max_length as `finetune chat` and `predict` cut it."""
        prompt = self.run.prompt
        return conversation_prompt_ids(self.front, messages, prompt.system, prompt.chat_template, self.run.max_length)

    def completion_ids(self, text: str) -> list[int]:
        return prompt_ids(self.front, text)

    def generate(self, jobs: list[Job]) -> None:
        decode.generate(self.model, self.tokenizer, jobs, self.eos)

    def predict(self, jobs: list[Job]) -> None:
        """Every job's texts in one call of the kind's predict, as `finetune predict` calls it; each job gets its own
        rows, its top-k cut from the longest asked (a prefix of the same ranking)."""
        live = [job for job in jobs if not job.cancelled]
        texts = [text for job in live for text in job.request["texts"]]
        if not texts:
            return
        options = {"top_k": max(job.request["top_k"] for job in live), "batch_size": self.limits.max_batch,
                   "memory_gib": self.limits.memory_gib}
        predictions = self.run.kind.predict(self.run, self.model, self.tokenizer, texts, options, on_batch=_quiet)
        at = 0
        for job in live:
            mine = predictions[at:at + len(job.request["texts"])]
            at += len(mine)
            k = job.request["top_k"]
            job.emit("done", [{**p, "top_k": p["top_k"][:k]} if "top_k" in p else p for p in mine])


def _quiet(rows: int) -> None:
    """The kind's progress callback: a server shows no progress bars."""


def context_length(model, tokenizer) -> int:
    """The most tokens the model attends to: its config's positions, else what the tokenizer says."""
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions:
        return int(positions)
    return int(min(tokenizer.model_max_length, 1 << 20))
