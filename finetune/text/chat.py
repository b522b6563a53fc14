"""Conversations as token ids: the tokenizer's chat template, or a plain format; loss on the assistant's turns only.

The plain format, for base models with no chat template (Falcon-7B, Llama-2-7B base), is the one the
OpenAssistant guanaco data is written in:

    {system}                           (only if there is one, then a blank line)
    ### Human: {user turn}
    ### Assistant: {assistant turn}<end of sequence>
"""

from __future__ import annotations

from finetune.errors import PipelineError
from finetune.text.prompts import IGNORE_INDEX, end_token_id

def uses_template(tokenizer, chat_template: str) -> bool:
    """`auto` takes the tokenizer's own chat template when it has one (`plain` never does)."""
    return chat_template == "auto" and bool(getattr(tokenizer, "chat_template", None))


def with_system(messages: list[dict], system: str) -> list[dict]:
    """Put the task's system message first (before a system message the data brings, e.g. a persona)."""
    if not system:
        return messages
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": f"{system}\n{messages[0]['content']}"}] + messages[1:]
    return [{"role": "system", "content": system}] + messages


def _plain_segments(messages: list[dict], eos: str) -> list[tuple[str, bool]]:
    segments = []
    for m in messages:
        if m["role"] == "system":
            segments.append((f"{m['content']}\n\n", False))
        elif m["role"] == "user":
            segments.append((f"### Human: {m['content']}\n### Assistant:", False))
        else:
            segments.append((f" {m['content']}{eos}", True))
            segments.append(("\n", False))
    return segments


def _template_segments(tokenizer, messages: list[dict]) -> list[tuple[str, bool]]:
    """Cut the rendered conversation where each assistant turn starts and ends (the template must be prefix-stable)."""
    def render(part: list[dict], prompt: bool) -> str:
        try:
            return tokenizer.apply_chat_template(part, tokenize=False, add_generation_prompt=prompt)
        except Exception as e:  # jinja raises TemplateError for e.g. a system role the template refuses
            raise PipelineError(f"the tokenizer's chat template refused this conversation ({str(e).splitlines()[0]}); "
                                "set prompt.chat_template: plain") from None

    full = render(messages, False)
    segments, done = [], 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt, turn = render(messages[:i], True), render(messages[: i + 1], False)
        if not (full.startswith(prompt) and full.startswith(turn)):
            raise PipelineError("the tokenizer's chat template renders a conversation differently from its prefixes; "
                                "set prompt.chat_template: plain")
        segments += [(full[done:len(prompt)], False), (full[len(prompt):len(turn)], True)]
        done = len(turn)
    segments.append((full[done:], False))
    return [s for s in segments if s[0]]


def encode_conversation(tokenizer, messages: list[dict], system: str, chat_template: str,
                        max_length: int) -> dict[str, list[int] | int]:
    """Input ids and labels (IGNORE_INDEX except on assistant turns, up to and including their end token).

    Also returns `response_start`, where the last assistant turn begins: the ids before it are that
    turn's prompt, for generation and perplexity. A conversation longer than `max_length` loses whole exchanges
    (a user turn and the assistant's answer) from its start, its system turn kept; only when its last exchange
    alone is too long does that exchange's prompt lose its first tokens.
    """
    messages = with_system(messages, system)
    if not messages or messages[-1]["role"] != "assistant":
        raise PipelineError("a conversation must end with the assistant's turn")
    encoded = _encode(tokenizer, messages, chat_template)
    while len(encoded["input_ids"]) > max_length and sum(m["role"] == "assistant" for m in messages) > 1:
        messages = _without_first_exchange(messages)
        encoded = _encode(tokenizer, messages, chat_template)
    ids, labels, response_start = encoded["input_ids"], encoded["labels"], encoded["response_start"]
    cut = max(0, len(ids) - max_length)
    return {"input_ids": ids[cut:], "attention_mask": [1] * (len(ids) - cut), "labels": labels[cut:],
            "response_start": max(0, response_start - cut)}


def _without_first_exchange(messages: list[dict]) -> list[dict]:
    """The conversation without its first user turn and the assistant's answer to it (a system turn stays)."""
    system = messages[:1] if messages[0]["role"] == "system" else []
    rest = messages[len(system):]
    first_answer = next(i for i, m in enumerate(rest) if m["role"] == "assistant")
    return system + rest[first_answer + 1:]


def _encode(tokenizer, messages: list[dict], chat_template: str) -> dict:
    eos = end_token_id(tokenizer)
    template = uses_template(tokenizer, chat_template)
    segments = _template_segments(tokenizer, messages) if template else _plain_segments(messages, tokenizer.eos_token)
    ids, labels, response_start = [], [], 0
    for n, (text, trained) in enumerate(segments):
        # The template writes its own special tokens; the plain format takes the tokenizer's start token, if any.
        piece = tokenizer(text, add_special_tokens=(n == 0 and not template))["input_ids"]
        if trained:
            response_start = len(ids)
            if eos in piece:  # learn up to the end-of-turn token, not the template's newline after it
                cut = piece.index(eos) + 1
                piece_labels = piece[:cut] + [IGNORE_INDEX] * (len(piece) - cut)
            else:
                piece_labels = list(piece)
            labels += piece_labels
        else:
            labels += [IGNORE_INDEX] * len(piece)
        ids += piece
    last_trained = max(i for i, label in enumerate(labels) if label != IGNORE_INDEX) + 1
    return {"input_ids": ids[:last_trained], "labels": labels[:last_trained], "response_start": response_start}


def conversation_prompt_ids(tokenizer, messages: list[dict], system: str, chat_template: str, max_length: int) -> list[int]:
    """The ids a model continues to answer `messages` (which end with a user turn), as in training."""
    encoded = encode_conversation(tokenizer, messages + [{"role": "assistant", "content": "x"}], system,
                                  chat_template, max_length + 8)
    return encoded["input_ids"][: encoded["response_start"]][-max_length:]


def last_response_only(encoded: dict) -> dict:
    """The same example with the loss on its last assistant turn only (the reference a test scores)."""
    start = encoded["response_start"]
    return {**encoded, "labels": [IGNORE_INDEX] * start + encoded["labels"][start:]}
