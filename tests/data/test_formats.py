"""The conversation formats: one conversation set reads the same from every format and file type; keys and roles
are renamed by params; `auto` says what it chose; rows that are not conversations are counted by reason."""

from __future__ import annotations

import json
import typing
from types import SimpleNamespace

import pandas as pd
import pytest

from finetune.data import formats
from finetune.data.dialogues import build_dialogues
from finetune.data.sources import load_chitchat, load_source
from finetune.errors import PipelineError
from finetune.kinds.generation import Generation
from finetune.param_schemas import FORMATS, DataParams
from tests import conversation_files
from tests.text.test_chat import trained_text

CONVERSATIONS = 120  # of the embedded chitchat corpus: enough to hold every shape (lengths, leading system turns)


def data(fmt, source="f", **changes) -> DataParams:
    values = dict(source=source, format=fmt, input_field="", target_field="", drop_labels=[], turns=0,
                  encoding="utf-8", keys={}, roles={})
    return DataParams(**{**values, **changes})


@pytest.fixture(scope="module")
def chitchat():
    """The chitchat task's examples (its middle four turns of each conversation), a system turn on every third."""
    examples, _ = build_dialogues(load_chitchat().head(CONVERSATIONS), "chitchat", data("chitchat", turns=4))
    examples["messages"] = [([{"role": "system", "content": f"You are speaker {i}."}] if i % 3 == 0 else []) + m
                            for i, m in enumerate(examples["messages"])]
    return examples


def encode(tokenizer, examples, max_length: int) -> list[dict]:
    """The examples as train_qlora encodes them (the tokenizer's chat template, no system message of the task's)."""
    task = SimpleNamespace(prompt=SimpleNamespace(system="", chat_template="auto"),
                           train=SimpleNamespace(max_length=max_length))
    return Generation().encode(tokenizer, examples.to_dict("records"), task)


def encoded(tokenizer, examples) -> bytes:
    return json.dumps(encode(tokenizer, examples, 96)).encode()


@pytest.mark.parametrize("fmt", conversation_files.FORMATS)
def test_one_conversation_set_gives_byte_identical_training_examples_in_every_format(tmp_path, tokenizer, chitchat, fmt):
    expected = encoded(tokenizer, chitchat)
    path = conversation_files.write(tmp_path / f"chats.{fmt}.jsonl", fmt, list(chitchat["messages"]), list(chitchat["id"]))
    table = pd.read_json(path, lines=True)
    as_json = tmp_path / f"chats.{fmt}.json"  # the same rows as one JSON list, and as Parquet
    as_json.write_text(json.dumps(table.to_dict("records")))
    as_parquet = tmp_path / f"chats.{fmt}.parquet"
    table.to_parquet(as_parquet)
    for source in (path, as_json, as_parquet):
        for name in (fmt, "auto"):
            examples, summary = build_dialogues(*load_source(str(source)), data(name, source=str(source)))
            assert examples.equals(chitchat), (source.name, name)
            assert encoded(tokenizer, examples) == expected
            assert summary["dropped_rows"] == dict.fromkeys(summary["dropped_rows"], 0)


THREE_TURNS = [{"role": "system", "content": "You are a travel agent."},
               {"role": "user", "content": "I want to see Lisbon."}, {"role": "assistant", "content": "In spring or autumn?"},
               {"role": "user", "content": "Spring."}, {"role": "assistant", "content": "Then April: mild and sunny."},
               {"role": "user", "content": "Hotel?"}, {"role": "assistant", "content": "Try Alfama, near the castle."}]


@pytest.mark.parametrize("fmt", conversation_files.FORMATS)
def test_the_trained_tokens_of_a_three_turn_conversation_are_exactly_its_assistant_turns(tmp_path, tokenizer, fmt):
    path = conversation_files.write(tmp_path / "three.jsonl", fmt, [THREE_TURNS])
    examples, _ = build_dialogues(*load_source(str(path)), data(fmt))
    example, = encode(tokenizer, examples, 512)
    assistant = [m["content"] for m in THREE_TURNS if m["role"] == "assistant"]
    assert trained_text(tokenizer, example) == [f"{text}<|im_end|>" for text in assistant]


def test_auto_says_which_format_it_chose_and_refuses_a_file_it_cannot_place(capsys):
    table = pd.DataFrame({"conversations": [[{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]]})
    build_dialogues(table, "chats.jsonl", data("auto"))
    assert "data.format auto: chats.jsonl reads as sharegpt" in capsys.readouterr().out
    with pytest.raises(PipelineError, match="match none of the conversation formats .*set data.format"):
        build_dialogues(pd.DataFrame({"question": ["q"], "answer": ["a"]}), "qa.jsonl", data("auto"))


def test_keys_and_role_names_are_renamed_by_params():
    turns = [{"speaker": "human", "text": "hi"}, {"speaker": "bot", "text": "hello"}]
    expected = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    table = pd.DataFrame({"conversation": [[{"role": t["speaker"], "content": t["text"]} for t in turns]]})
    examples, _ = build_dialogues(table, "m.jsonl", data("messages", input_field="conversation",
                                                         roles={"human": "user", "bot": "assistant"}))
    assert examples["messages"][0] == expected
    examples, _ = build_dialogues(pd.DataFrame({"conversations": [turns]}), "s.jsonl",
                                  data("sharegpt", keys={"from": "speaker", "value": "text"}, roles={"bot": "assistant"}))
    assert examples["messages"][0] == expected
    alpaca = pd.DataFrame({"question": ["Add"], "context": ["2 and 3"], "answer": ["5"], "system": ["Be brief."]})
    examples, _ = build_dialogues(alpaca, "a.jsonl", data("alpaca", input_field="question", target_field="answer",
                                                          keys={"input": "context"}))
    assert examples["messages"][0] == [{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": "Add\n2 and 3"}, {"role": "assistant", "content": "5"}]
    with pytest.raises(PipelineError, match="data.keys has 'from'; the messages format renames only role, content"):
        build_dialogues(table, "m.jsonl", data("messages", input_field="conversation", keys={"from": "speaker"}))


GOOD = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
BAD_ROWS = {  # reason -> a messages row that is not a conversation for that reason
    "not_a_list": "hi there",
    "unknown_role": [{"role": "narrator", "content": "Once"}, *GOOD],
    "empty_content": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "hello"}],
    "roles_not_alternating": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, GOOD[1]],
    "no_assistant_turn": [{"role": "system", "content": "Be kind."}, GOOD[0]],
}


def test_rows_that_are_not_conversations_are_dropped_and_counted_by_reason():
    table = pd.DataFrame({"messages": [GOOD, *BAD_ROWS.values(), GOOD + [{"role": "user", "content": "bye"}]]})
    examples, summary = build_dialogues(table, "m.jsonl", data("messages"))
    assert summary["dropped_rows"] == dict.fromkeys(BAD_ROWS, 1)
    assert examples["id"].tolist() == ["1"]  # the last row is the first's conversation once its unanswered turn is cut
    assert summary["duplicates_removed"] == 1 and summary["examples"] == 1


@pytest.mark.parametrize("reason", BAD_ROWS)
def test_a_file_of_bad_rows_is_one_line_naming_the_first_and_why(reason):
    table = pd.DataFrame({"messages": [BAD_ROWS[reason]] * 2})
    with pytest.raises(PipelineError, match=f"no row reads as data.format messages; row 1: .*\\({reason}: ") as error:
        build_dialogues(table, "m.jsonl", data("messages"))
    assert len(str(error.value).splitlines()) == 1


def test_a_long_conversation_keeps_its_last_turns_and_a_window_starts_with_the_user():
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i}"} for i in range(6)]
    examples, _ = build_dialogues(pd.DataFrame({"messages": [turns]}), "m.jsonl", data("messages", turns=2))
    assert examples["messages"][0] == turns[-2:]
    for keep in (1, 3):  # a window that would start with the assistant's turn takes the user's before it
        examples, _ = build_dialogues(pd.DataFrame({"messages": [turns]}), "m.jsonl", data("messages", turns=keep))
        assert examples["messages"][0] == turns[-(keep + 1):]


def test_params_allow_exactly_the_format_modules_and_auto():
    names = formats._module_names()
    assert set(typing.get_args(FORMATS)) == names | {formats.AUTO}
    assert all(formats.get(name).name == name for name in names)
