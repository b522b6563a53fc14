"""Each dialogue format becomes conversations that end with the response; bad rows are one-line errors."""

import pandas as pd
import pytest

from finetune.dialogues import build_dialogues
from finetune.errors import PipelineError
from tests.conftest import ROOT

FIXTURES = ROOT / "tests" / "fixtures"


def roles(messages):
    return [m["role"] for m in messages]


def test_guanaco_text_becomes_turns_and_an_unanswered_question_is_dropped():
    table = pd.DataFrame({"text": [
        "### Human: Hi?### Assistant: Hello!### Human: Tell me a joke.### Assistant: No.### Human: Why?",
        "### Human: What is 2+2?### Assistant: 4",
    ]})
    examples, summary = build_dialogues(table, "g.jsonl", "guanaco", "text", "", [], 0)
    assert roles(examples["messages"][0]) == ["user", "assistant", "user", "assistant"]
    assert examples["messages"][0][-1]["content"] == "No."
    assert examples["messages"][1] == [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]
    last_two = build_dialogues(table, "g.jsonl", "guanaco", "text", "", [], 2)[0]
    assert roles(last_two["messages"][0]) == ["user", "assistant"]
    assert summary["examples"] == 2


def test_persona_chat_reply_is_the_last_candidate_and_the_persona_is_the_system_message():
    table = pd.read_parquet(FIXTURES / "personachat.parquet")
    examples, summary = build_dialogues(table, "p.parquet", "persona_chat", "history", "candidates", [], 0)
    first = examples["messages"][0]
    assert first[0]["role"] == "system" and first[0]["content"].startswith("Your persona: i love to go hiking.")
    assert roles(first[1:]) == ["user", "assistant"]
    assert first[-1]["content"] == "great! just got back from a hike with my dog."
    assert summary["groups"] == table["personality"].map(tuple).nunique()
    # a history of even length starts with the bot's own turn, which is dropped: the user speaks first
    assert all(roles(m)[1] == "user" for m in examples["messages"])


def test_chitchat_takes_the_middle_turns_and_the_user_speaks_first():
    table = pd.DataFrame({"id": ["a", "b"], "turns": [["t1", "t2", "t3", "t4", "t5", "t6"], ["only one"]]})
    examples, summary = build_dialogues(table, "chitchat", "chitchat", "", "", [], 4)
    assert len(examples) == 1 and summary["rows"] == 2
    assert [m["content"] for m in examples["messages"][0]] == ["t2", "t3", "t4", "t5"]
    assert roles(examples["messages"][0]) == ["user", "assistant", "user", "assistant"]


def test_prompt_response_table_and_duplicates():
    table = pd.DataFrame({"prompt": ["Hi", "hi ", "Bye"], "response": ["Hello", "Hello", "See you"]})
    examples, summary = build_dialogues(table, "c.csv", "table", "prompt", "response", [], 0)
    assert summary["duplicates_removed"] == 1 and len(examples) == 2


@pytest.mark.parametrize("fmt, table, fragment", [
    ("table", pd.DataFrame({"prompt": ["Hi"], "answer": ["x"]}), "missing column 'response'"),
    ("table", pd.DataFrame({"prompt": ["Hi", " "], "response": ["x", "y"]}), "row 2 has an empty 'prompt'"),
    ("guanaco", pd.DataFrame({"text": ["no markers here"]}), "row 1 has no '### Human"),
    ("persona_chat", pd.DataFrame({"history": [["hi"]], "candidates": [["x"]]}), "missing column 'personality'"),
    ("yaml", pd.DataFrame({"a": [1]}), "data.format is 'yaml'"),
])
def test_bad_rows_are_one_line_errors(fmt, table, fragment):
    fields = {"table": ("prompt", "response"), "guanaco": ("text", ""), "persona_chat": ("history", "candidates"),
              "yaml": ("a", "")}[fmt]
    with pytest.raises(PipelineError, match=fragment) as error:
        build_dialogues(table, "f.csv", fmt, *fields, [], 0)
    assert len(str(error.value).splitlines()) == 1
