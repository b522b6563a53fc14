"""Batched generation a token at a time over the KV cache, each row's text handed to its request as it is made.

Written by hand because transformers' generate() streams to a streamer only with a batch of one: here each row of
a batch (left padded, positions from its attention mask) stops on its own, at the end token, its max_tokens or a
stop string, and leaves the batch.
"""

from __future__ import annotations

import torch
from transformers.generation.logits_process import NoRepeatNGramLogitsProcessor, TopPLogitsWarper

from finetune.serve.batcher import Job
from finetune.train.batching import any_length_attention, left_pad


class Row:
    """One request's answer as it is made: its tokens, the text sent so far, and why it ended."""

    def __init__(self, job: Job, tokenizer, eos: int):
        request = job.request
        self.job, self.tokenizer, self.eos = job, tokenizer, eos
        self.prompt_ids: list[int] = request["prompt_ids"]
        self.max_tokens: int = request["max_tokens"]
        self.stop: list[str] = request["stop"]
        self.strip: bool = request["strip"]  # a chat answer starts at its first word, as `finetune chat` shows it
        self.temperature: float = request["temperature"] or 0.0
        self.top_p: float = request["top_p"] if request["top_p"] is not None else 1.0
        ngram = request.get("no_repeat_ngram_size", 0)
        self.no_repeat = NoRepeatNGramLogitsProcessor(ngram) if ngram else None
        seed = request.get("seed")
        self.generator = torch.Generator().manual_seed(seed) if seed is not None and self.temperature else None
        self.ids: list[int] = []
        self.sent = 0
        # text that could be the start of a stop string is held back until the next token says it is not
        self.hold = max((len(s) for s in self.stop), default=1) - 1

    def take(self, token: int) -> bool:
        """Add the next token; False once the row has ended (and its request was told)."""
        if self.job.cancelled:
            return False
        if token == self.eos:
            return self._finish("stop", self._text())
        self.ids.append(token)
        text = self._text()
        found = [at for at in (text.find(s) for s in self.stop) if at >= 0]
        if found:
            return self._finish("stop", text[:min(found)])
        if len(self.ids) >= self.max_tokens:
            return self._finish("length", text)
        # a character cut between two tokens decodes as U+FFFD until its last byte comes
        safe = min(len(text) - self.hold, len(text.rstrip("\ufffd")))
        if safe > self.sent:
            self.job.emit("text", text[self.sent:safe])
            self.sent = safe
        return True

    def _text(self) -> str:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        return text.lstrip() if self.strip else text

    def _finish(self, reason: str, text: str) -> bool:
        if len(text) > self.sent:
            self.job.emit("text", text[self.sent:])
        self.job.emit("done", reason, len(self.prompt_ids), len(self.ids))
        return False

    def choose(self, logits: torch.Tensor) -> int | None:
        """A sampled token where the request asked for a temperature, or the greedy one that repeats no n-gram of the
        prompt and answer (as generate()'s no_repeat_ngram_size); None: the plain greedy one."""
        scores = logits[None].float()
        if self.no_repeat is not None:
            scores = self.no_repeat(torch.tensor([self.prompt_ids + self.ids]), scores)
        if not self.temperature:
            return None if self.no_repeat is None else int(scores.argmax(-1))
        scores = scores / self.temperature
        if self.top_p < 1.0:
            scores = TopPLogitsWarper(self.top_p)(None, scores)
        return int(torch.multinomial(scores.softmax(-1), 1, generator=self.generator))


@torch.no_grad()
@any_length_attention()
def generate(model, tokenizer, jobs: list[Job], eos: int) -> None:
    """Answer every job's prompt, the batch shrinking as rows end."""
    rows = [Row(job, tokenizer, eos) for job in jobs]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    ids, mask = left_pad([row.prompt_ids for row in rows], pad)
    ids, mask = ids.to(model.device), mask.to(model.device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    live = rows
    while True:
        logits = out.logits[:, -1]
        tokens = logits.argmax(-1).tolist()
        for i, row in enumerate(live):
            sampled = row.choose(logits[i])
            tokens[i] = tokens[i] if sampled is None else sampled
        going = [i for i, row in enumerate(live) if row.take(tokens[i])]
        if not going:
            return
        cache = out.past_key_values
        if len(going) < len(live):
            keep = torch.tensor(going, device=mask.device)
            cache.batch_select_indices(keep)
            mask, positions = mask[keep], positions[keep]
            live, tokens = [live[i] for i in going], [tokens[i] for i in going]
        mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)
        positions = positions[:, -1:] + 1
        out = model(input_ids=torch.tensor(tokens, device=mask.device)[:, None], attention_mask=mask,
                    position_ids=positions, past_key_values=cache, use_cache=True)
