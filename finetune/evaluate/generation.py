"""Batched greedy generation from token ids, and the perplexity of reference answers."""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from finetune.text.prompts import end_token_id
from finetune.train import distributed
from finetune.train.batching import AnswerOnlyCollator, any_length_attention, left_pad, length_batches


@torch.no_grad()
@any_length_attention()
def generate(model, tokenizer, prompts: list[list[int]], batch_size: int, max_new_tokens: int,
             desc: str = "generating", no_repeat_ngram_size: int = 0,
             on_batch: Callable[[int], None] | None = None) -> list[str]:
    """Greedy answers to tokenized prompts: batches of similar length, left padding, stopping at the end token.

    `no_repeat_ngram_size` > 0 forbids repeating any n-gram of that many tokens (greedy decoding of small
    models otherwise loops on one sentence). `on_batch`, if given, is told how many prompts each batch
    answered (and replaces the progress bar).
    """
    options = {"no_repeat_ngram_size": no_repeat_ngram_size} if no_repeat_ngram_size > 0 else {}
    batches = length_batches([len(p) for p in prompts], batch_size)
    model.eval()

    def answer(idx: list[int]) -> list[str]:
        ids, mask = left_pad([prompts[i] for i in idx], tokenizer.pad_token_id)
        out = model.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                             max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                             eos_token_id=end_token_id(tokenizer), pad_token_id=tokenizer.pad_token_id, **options)
        if on_batch is not None:
            on_batch(len(idx))
        return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in out[:, ids.shape[1]:]]

    bar = lambda ks: tqdm(ks, desc=desc, unit="batch", disable=on_batch is not None or not distributed.is_main())  # noqa: E731
    answers: list[str] = [""] * len(prompts)
    for idx, texts in zip(batches, distributed.map_batches(answer, batches, bar)):
        for i, text in zip(idx, texts):
            answers[i] = text
    return answers


@torch.no_grad()
@any_length_attention()
def perplexity(model, tokenizer, examples: list[dict], batch_size: int, desc: str = "perplexity") -> float:
    """exp(mean negative log-likelihood) over every labelled token of `examples` (encoded, with labels)."""
    collate = AnswerOnlyCollator(tokenizer.pad_token_id)
    batches = length_batches([len(ex["input_ids"]) for ex in examples], batch_size)
    model.eval()

    def nll_and_count(idx: list[int]) -> tuple[float, int]:
        batch = collate([examples[i] for i in idx])
        labels = batch.pop("labels").to(model.device)
        logits = model(**{k: v.to(model.device) if torch.is_tensor(v) else v for k, v in batch.items()}).logits
        nll = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                              ignore_index=-100, reduction="sum")
        return float(nll), int((labels[:, 1:] != -100).sum())

    bar = lambda ks: tqdm(ks, desc=desc, unit="batch", disable=not distributed.is_main())  # noqa: E731
    total, count = 0.0, 0
    for nll, n in distributed.map_batches(nll_and_count, batches, bar):  # summed in batch order, as one process does
        total += nll
        count += n
    return math.exp(total / count)
