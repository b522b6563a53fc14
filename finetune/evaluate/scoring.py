"""Classify by scoring every allowed label after the prompt, or by greedy generation as the seeds did."""

from __future__ import annotations

import copy
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from finetune.errors import PipelineError
from finetune.evaluate.generation import generate
from finetune.text.prompts import answer_ids, end_token_id, prompt_ids
from finetune.train import distributed
from finetune.train.batching import any_length_attention, left_pad, length_batches, positions

NO_LABEL = "<no label>"


def label_token_ids(tokenizer, labels: list[str], answer_prefix: str) -> list[list[int]]:
    """Each label's answer tokens; with the end token added when one label's tokens start another's.

    Without the end token "dairy" would always outscore "dairy eggs"; a prefix-free set needs none,
    which saves a forward step per label.
    """
    ids = [answer_ids(tokenizer, answer_prefix, label) for label in labels]
    prefix_free = not any(a != b and b[: len(a)] == a for a in ids for b in ids)
    if len({tuple(x) for x in ids}) != len(ids):
        raise PipelineError("two labels have identical tokens after answer_prefix; they cannot be told apart")
    return ids if prefix_free else [x + [end_token_id(tokenizer)] for x in ids]


DEFAULT_MEMORY_GIB = 2.0  # label scoring's working memory when the caller names none


def _cache_bytes_per_token(cache, tokens: int) -> float:
    """Bytes the KV cache holds per cached token, read off the cache itself (any architecture, any dtype)."""
    total = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values)
                if t is not None)
    return total / max(1, tokens)


def _label_chunks(multi: list[int], label_ids: list[list[int]], per_label_bytes, budget: float) -> list[list[int]]:
    """Multi-token labels in chunks of similar length whose continuation pass fits `budget` bytes."""
    chunks, chunk = [], []
    for j in sorted(multi, key=lambda j: (len(label_ids[j]), j)):
        if chunk and per_label_bytes(len(label_ids[j]) - 1) * (len(chunk) + 1) > budget:
            chunks.append(chunk)
            chunk = []
        chunk.append(j)
    return chunks + [chunk] if chunk else chunks


@torch.no_grad()
def _score_batch(model, prompts: list[list[int]], label_ids: list[list[int]], pad_id: int,
                 memory_bytes: float) -> torch.Tensor:
    """Log-likelihood of every label after each prompt: one prompt pass, then continuations from its KV cache.

    The continuations run a chunk of labels at a time, each chunk sized so that its copies of the
    cache and its logits fit `memory_bytes`; only the label tokens' log-probabilities are kept
    (a log-sum-exp per position, not a log-softmax over the vocabulary for every position).
    """
    dev = model.device
    ids, mask = left_pad(prompts, pad_id)
    ids, mask = ids.to(dev), mask.to(dev)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask), use_cache=True, logits_to_keep=1)
    first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
    scores = first[:, [x[0] for x in label_ids]]

    multi = [j for j, x in enumerate(label_ids) if len(x) > 1]
    if not multi:
        return scores.cpu()
    batch, prompt_width = ids.shape
    cache = out.past_key_values
    kv_per_token = _cache_bytes_per_token(cache, batch * prompt_width)
    vocab = first.shape[-1]

    def per_label_bytes(width: int) -> float:  # one label's share: cache copies, then logits and their fp32 copy
        return batch * (kv_per_token * (prompt_width + width) + width * vocab * (out.logits.element_size() + 4))

    start = mask.sum(-1).unsqueeze(1)
    for chunk in _label_chunks(multi, label_ids, per_label_bytes, memory_bytes):
        n, width = len(chunk), max(len(label_ids[j]) - 1 for j in chunk)
        fed = torch.full((n, width), pad_id, dtype=torch.long)  # every label token but the last is fed
        targets = torch.zeros((n, width), dtype=torch.long)  # ... to predict the one after it
        real = torch.zeros((n, width), dtype=torch.long)
        for m, j in enumerate(chunk):
            tokens = label_ids[j]
            fed[m, : len(tokens) - 1] = torch.tensor(tokens[:-1])
            targets[m, : len(tokens) - 1] = torch.tensor(tokens[1:])
            real[m, : len(tokens) - 1] = 1
        chunk_cache = copy.deepcopy(cache)
        chunk_cache.batch_repeat_interleave(n)
        cont, cont_mask = fed.repeat(batch, 1).to(dev), real.repeat(batch, 1).to(dev)
        full_mask = torch.cat([mask.repeat_interleave(n, dim=0), cont_mask], dim=1)
        cont_positions = start.repeat_interleave(n, dim=0) + torch.arange(width, device=dev).unsqueeze(0)
        logits = model(input_ids=cont, attention_mask=full_mask, position_ids=cont_positions,
                       past_key_values=chunk_cache, use_cache=True).logits.float()
        del chunk_cache
        target_logits = logits.gather(-1, targets.repeat(batch, 1).to(dev).unsqueeze(-1)).squeeze(-1)
        logp = (target_logits - torch.logsumexp(logits, dim=-1)).view(batch, n, width)
        del logits
        scores[:, chunk] += (logp * real.to(dev).view(1, n, width)).sum(-1)
    return scores.cpu()


@any_length_attention()
def label_scores(model, tokenizer, prompts: list[str], labels: list[str], answer_prefix: str,
                 batch_size: int, desc: str = "scoring", memory_gib: float = DEFAULT_MEMORY_GIB,
                 on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """An (examples x labels) array of log-likelihoods; the argmax is always a valid label.

    Memory stays near `memory_gib` whatever the number of labels and their length. `on_batch`, if
    given, is told how many prompts each batch scored (and replaces this function's progress bar).
    Under accelerate launch the processes share the batches and every one gets the whole array.
    """
    label_ids = label_token_ids(tokenizer, labels, answer_prefix)
    encoded = [prompt_ids(tokenizer, p) for p in prompts]
    batches = length_batches([len(e) for e in encoded], batch_size)
    model.eval()

    def score(idx: list[int]) -> np.ndarray:
        batch_scores = _score_batch(model, [encoded[i] for i in idx], label_ids, tokenizer.pad_token_id,
                                    memory_gib * 2**30)
        if on_batch is not None:
            on_batch(len(idx))
        return batch_scores.double().numpy()

    bar = lambda ks: tqdm(ks, desc=desc, unit="batch", disable=on_batch is not None or not distributed.is_main())  # noqa: E731
    scores = np.zeros((len(prompts), len(labels)), dtype=np.float64)
    for idx, batch_scores in zip(batches, distributed.map_batches(score, batches, bar)):
        scores[idx] = batch_scores
    return scores


def label_probabilities(scores: np.ndarray) -> np.ndarray:
    """Softmax over the allowed labels' log-likelihoods: how the model splits its belief among them."""
    shifted = scores - scores.max(axis=1, keepdims=True)
    weights = np.exp(shifted)
    return weights / weights.sum(axis=1, keepdims=True)


def predict_by_scoring(scores: np.ndarray, labels: list[str]) -> list[str]:
    return [labels[i] for i in scores.argmax(axis=1)]


def generate_answers(model, tokenizer, prompts: list[str], batch_size: int, max_new_tokens: int,
                     desc: str = "generating") -> list[str]:
    """Greedy answers to prompt texts, batched with left padding, stopping at the end token."""
    return generate(model, tokenizer, [prompt_ids(tokenizer, p) for p in prompts], batch_size, max_new_tokens, desc)


def match_labels(answers: list[str], labels: list[str]) -> list[str]:
    """Exact (case-insensitive) match of a generated answer to a label, else NO_LABEL."""
    by_key = {label.casefold(): label for label in labels}
    return [by_key.get(a.strip().casefold(), NO_LABEL) for a in answers]
