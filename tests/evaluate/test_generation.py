"""Perplexity of reference answers: batched with left padding, it equals the one-example-at-a-time value."""

import math

import pytest
import torch

from finetune.evaluate.generation import perplexity
from finetune.text.chat import encode_conversation, last_response_only


def test_batched_perplexity_equals_the_plain_loss(tokenizer, tiny_model):
    conversations = [
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there, friend"}],
        [{"role": "user", "content": "what did you have for dinner last night?"}, {"role": "assistant", "content": "soup"}],
        [{"role": "user", "content": "ok"}, {"role": "assistant", "content": "see you tomorrow then"}],
    ]
    examples = [last_response_only(encode_conversation(tokenizer, c, "", "auto", 128)) for c in conversations]
    total, count = 0.0, 0
    with torch.no_grad():
        for e in examples:  # the textbook way: one unpadded example at a time, mean loss times token count
            labels = torch.tensor([e["labels"]])
            n = int((labels[:, 1:] != -100).sum())
            total += float(tiny_model(input_ids=torch.tensor([e["input_ids"]]), labels=labels).loss) * n
            count += n
    expected = math.exp(total / count)
    # exp() turns the mean loss's absolute error into perplexity's relative one; fp32 log-softmax over 49k
    # tokens in another summation order: ~4e-7 measured. A token counted wrongly moves it by 1e-2 or more.
    assert perplexity(tiny_model, tokenizer, examples, batch_size=3) == pytest.approx(expected, rel=1e-5)
    assert perplexity(tiny_model, tokenizer, examples, batch_size=2) == pytest.approx(expected, rel=1e-5)
