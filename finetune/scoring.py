"""Classify by scoring every allowed label after the prompt, or by greedy generation as the seeds did."""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from finetune.batching import any_length_attention, left_pad, positions
from finetune.errors import PipelineError
from finetune.generation import generate
from finetune.prompts import answer_ids, end_token_id, prompt_ids

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


@torch.no_grad()
def _score_batch(model, prompts: list[list[int]], label_ids: list[list[int]], pad_id: int) -> torch.Tensor:
    """Log-likelihood of every label after each prompt: one prompt pass, then continuations from its KV cache."""
    dev = model.device
    ids, mask = left_pad(prompts, pad_id)
    ids, mask = ids.to(dev), mask.to(dev)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask), use_cache=True, logits_to_keep=1)
    first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
    scores = first[:, [x[0] for x in label_ids]]

    multi = [j for j, x in enumerate(label_ids) if len(x) > 1]
    if not multi:
        return scores.cpu()
    batch, n = ids.shape[0], len(multi)
    width = max(len(label_ids[j]) - 1 for j in multi)
    cont = torch.full((n, width), pad_id, dtype=torch.long)
    cont_mask = torch.zeros((n, width), dtype=torch.long)
    for m, j in enumerate(multi):
        fed = label_ids[j][:-1]
        cont[m, : len(fed)] = torch.tensor(fed)
        cont_mask[m, : len(fed)] = 1
    cache = out.past_key_values
    cache.batch_repeat_interleave(n)
    cont, cont_mask = cont.repeat(batch, 1).to(dev), cont_mask.repeat(batch, 1).to(dev)
    full_mask = torch.cat([mask.repeat_interleave(n, dim=0), cont_mask], dim=1)
    start = mask.sum(-1).repeat_interleave(n).unsqueeze(1)
    cont_positions = start + torch.arange(width, device=dev).unsqueeze(0)
    out = model(input_ids=cont, attention_mask=full_mask, position_ids=cont_positions,
                past_key_values=cache, use_cache=True)
    logp = torch.log_softmax(out.logits.float(), dim=-1).view(batch, n, width, -1)
    for m, j in enumerate(multi):
        targets = torch.tensor(label_ids[j][1:], device=dev)
        steps = torch.arange(len(targets), device=dev)
        scores[:, j] += logp[:, m, steps, targets].sum(-1)
    return scores.cpu()


@any_length_attention()
def label_scores(model, tokenizer, prompts: list[str], labels: list[str], answer_prefix: str,
                 batch_size: int, desc: str = "scoring") -> np.ndarray:
    """An (examples x labels) array of log-likelihoods; the argmax is always a valid label."""
    label_ids = label_token_ids(tokenizer, labels, answer_prefix)
    encoded = [prompt_ids(tokenizer, p) for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: (len(encoded[i]), i))  # less padding per batch
    scores = np.zeros((len(prompts), len(labels)), dtype=np.float64)
    model.eval()
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch"):
        idx = order[start: start + batch_size]
        batch_scores = _score_batch(model, [encoded[i] for i in idx], label_ids, tokenizer.pad_token_id)
        scores[idx] = batch_scores.double().numpy()
    return scores


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
