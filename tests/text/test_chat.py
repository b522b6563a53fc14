"""Conversations as tokens: loss on the assistant's turns only, end-of-turn included; chat template or plain format."""

import copy

import pytest

from finetune.errors import PipelineError
from finetune.text.chat import conversation_prompt_ids, encode_conversation, last_response_only, uses_template, with_system
from finetune.text.prompts import IGNORE_INDEX

CONVERSATION = [
    {"role": "user", "content": "hi, how are you?"},
    {"role": "assistant", "content": "great, thanks!"},
    {"role": "user", "content": "any plans tonight?"},
    {"role": "assistant", "content": "pizza and a movie"},
]


@pytest.fixture
def plain_tokenizer(tokenizer):
    """The same tokenizer without a chat template, like Falcon-7B's or Llama-2-7B's base tokenizer."""
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    return plain


def trained_text(tokenizer, encoded) -> list[str]:
    """The labelled stretches, decoded: what the loss is on."""
    spans, current = [], []
    for token, label in zip(encoded["input_ids"], encoded["labels"]):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            spans.append(tokenizer.decode(current))
            current = []
    if current:
        spans.append(tokenizer.decode(current))
    return spans


def test_chat_template_trains_assistant_turns_with_their_end_token(tokenizer):
    encoded = encode_conversation(tokenizer, CONVERSATION, "Be brief.", "auto", 512)
    assert trained_text(tokenizer, encoded) == ["great, thanks!<|im_end|>", "pizza and a movie<|im_end|>"]
    text = tokenizer.decode(encoded["input_ids"])
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>") and text.endswith("pizza and a movie<|im_end|>")


def test_plain_format_when_the_tokenizer_has_no_chat_template(plain_tokenizer):
    assert not uses_template(plain_tokenizer, "auto")
    encoded = encode_conversation(plain_tokenizer, CONVERSATION, "", "auto", 512)
    eos = plain_tokenizer.eos_token
    assert plain_tokenizer.decode(encoded["input_ids"]) == (
        f"### Human: hi, how are you?\n### Assistant: great, thanks!{eos}\n"
        f"### Human: any plans tonight?\n### Assistant: pizza and a movie{eos}")
    assert trained_text(plain_tokenizer, encoded) == [f" great, thanks!{eos}", f" pizza and a movie{eos}"]


@pytest.mark.parametrize("chat_template", ["auto", "plain"])
def test_the_prompt_a_model_answers_is_the_training_prefix(tokenizer, chat_template):
    encoded = encode_conversation(tokenizer, CONVERSATION, "Be brief.", chat_template, 512)
    prefix = encoded["input_ids"][: encoded["response_start"]]
    assert conversation_prompt_ids(tokenizer, CONVERSATION[:-1], "Be brief.", chat_template, 512) == prefix
    last = last_response_only(encoded)
    assert trained_text(tokenizer, last) == trained_text(tokenizer, encoded)[-1:]


@pytest.mark.parametrize("chat_template", ["auto", "plain"])
def test_a_long_conversation_loses_whole_exchanges_from_its_start_never_part_of_a_turn(tokenizer, chat_template):
    system = [{"role": "system", "content": "Be brief."}]
    full = encode_conversation(tokenizer, system + CONVERSATION, "", chat_template, 512)
    last_exchange = encode_conversation(tokenizer, system + CONVERSATION[2:], "", chat_template, 512)
    between = len(last_exchange["input_ids"]) + 2  # too short for both exchanges, long enough for the last
    assert between < len(full["input_ids"])
    assert encode_conversation(tokenizer, system + CONVERSATION, "", chat_template, between) == last_exchange
    assert trained_text(tokenizer, last_exchange)[0].strip().startswith("pizza and a movie")
    # The last exchange alone too long: only then does its prompt lose its first tokens; the answer stays whole.
    short = encode_conversation(tokenizer, system + CONVERSATION, "", chat_template, 12)
    assert short["input_ids"] == last_exchange["input_ids"][-12:] and short["labels"] == last_exchange["labels"][-12:]
    assert short["response_start"] == last_exchange["response_start"] - (len(last_exchange["input_ids"]) - 12)


def test_system_messages_combine_and_errors_are_clear(tokenizer):
    persona = [{"role": "system", "content": "Your persona: i surf."}] + CONVERSATION
    assert with_system(persona, "Be kind.")[0] == {"role": "system", "content": "Be kind.\nYour persona: i surf."}
    assert with_system(CONVERSATION, "")[0] == CONVERSATION[0]
    with pytest.raises(PipelineError, match="end with the assistant"):
        encode_conversation(tokenizer, CONVERSATION[:-1], "", "auto", 64)
