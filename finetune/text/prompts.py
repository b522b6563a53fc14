"""Prompts and answers as token ids, with the loss masked to the answer."""

from __future__ import annotations

from finetune.errors import PipelineError

IGNORE_INDEX = -100  # the label value PyTorch's cross-entropy skips


def render_prompt(template: str, text: str) -> str:
    """Fill the prompt template's `{text}` slot (params check that it has one)."""
    return template.replace("{text}", text)


def answer_ids(tokenizer, answer_prefix: str, label: str) -> list[int]:
    """Token ids of an answer as the model is trained to write it (without the end token)."""
    return tokenizer(answer_prefix + label, add_special_tokens=False)["input_ids"]


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """Token ids of a prompt, with the tokenizer's own start token if it adds one."""
    return tokenizer(prompt, add_special_tokens=True)["input_ids"]


def end_token_id(tokenizer) -> int:
    """The token that ends an answer: the tokenizer's end-of-sequence (end-of-turn for chat models)."""
    if tokenizer.eos_token_id is None:
        raise PipelineError("the base model's tokenizer has no end-of-sequence token; choose another base model")
    return tokenizer.eos_token_id


def check_room(tokenizer, template: str, answer_prefix: str, labels: list[str], max_length: int, key: str) -> None:
    """Refuse a max length that cannot hold the template, one token of text and the longest answer."""
    if not labels:
        return
    fixed = len(prompt_ids(tokenizer, render_prompt(template, "")))
    longest = max(labels, key=lambda label: len(answer_ids(tokenizer, answer_prefix, label)))
    answer = len(answer_ids(tokenizer, answer_prefix, longest)) + 1  # and the end token
    needed = fixed + 1 + answer
    if max_length < needed:
        raise PipelineError(f"params.yaml: {key} is {max_length}; the prompt template takes {fixed} tokens and the "
                            f"longest answer ({longest!r}) {answer} with its end token, so it must be at least {needed}")


def encode_example(tokenizer, prompt: str, answer: list[int], max_length: int) -> dict[str, list[int]]:
    """Input ids for prompt + answer + end token; labels are IGNORE_INDEX on every prompt token.

    Long prompts lose their start, never the answer. No padding here: the collator pads per batch.
    """
    target = answer + [end_token_id(tokenizer)]
    context = prompt_ids(tokenizer, prompt)
    room = max_length - len(target)
    if room < 1:
        raise PipelineError(f"train.max_length={max_length} leaves no room for a prompt; raise it")
    context = context[-room:]
    return {
        "input_ids": context + target,
        "attention_mask": [1] * (len(context) + len(target)),
        "labels": [IGNORE_INDEX] * len(context) + target,
    }
