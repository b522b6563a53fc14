"""Each dialogue format becomes conversations that end with the response; bad rows are one-line errors."""

import pandas as pd
import pytest

from finetune.data.conversations import clean_message
from finetune.data.dialogues import build_dialogues
from finetune.errors import PipelineError
from finetune.param_schemas import DataParams
from tests.conftest import ROOT

FIXTURES = ROOT / "tests" / "fixtures"


def roles(messages):
    return [m["role"] for m in messages]


def data(fmt, input_field="", target_field="", drop_labels=(), turns=0, **changes):
    """A task's data params for a table already read."""
    return DataParams(source="f", format=fmt, input_field=input_field, target_field=target_field,
                      drop_labels=list(drop_labels), turns=turns, encoding="utf-8", **{"keys": {}, "roles": {}, **changes})


def test_guanaco_text_becomes_turns_and_an_unanswered_question_is_dropped():
    table = pd.DataFrame({"text": [
        "### Human: Hi?### Assistant: Hello!### Human: Tell me a joke.### Assistant: No.### Human: Why?",
        "### Human: What is 2+2?### Assistant: 4",
    ]})
    examples, summary = build_dialogues(table, "g.jsonl", data("guanaco", "text", "", [], 0))
    assert roles(examples["messages"][0]) == ["user", "assistant", "user", "assistant"]
    assert examples["messages"][0][-1]["content"] == "No."
    assert examples["messages"][1] == [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]
    last_two = build_dialogues(table, "g.jsonl", data("guanaco", "text", "", [], 2))[0]
    assert roles(last_two["messages"][0]) == ["user", "assistant"]
    assert summary["examples"] == 2


def test_persona_chat_reply_is_the_last_candidate_and_the_persona_is_the_system_message():
    table = pd.read_parquet(FIXTURES / "personachat.parquet")
    examples, summary = build_dialogues(table, "p.parquet", data("persona_chat", "history", "candidates", [], 0))
    first = examples["messages"][0]
    assert first[0]["role"] == "system" and first[0]["content"].startswith("Your persona: i love to go hiking.")
    assert roles(first[1:]) == ["user", "assistant"]
    assert first[-1]["content"] == "great! just got back from a hike with my dog."
    assert summary["groups"] == table["personality"].map(tuple).nunique()
    # a history of even length starts with the bot's own turn, which is dropped: the user speaks first
    assert all(roles(m)[1] == "user" for m in examples["messages"])


def test_chitchat_takes_the_middle_turns_and_the_user_speaks_first():
    table = pd.DataFrame({"id": ["a", "b"], "turns": [["t1", "t2", "t3", "t4", "t5", "t6"], ["only one"]]})
    examples, summary = build_dialogues(table, "chitchat", data("chitchat", "", "", [], 4))
    assert len(examples) == 1 and summary["rows"] == 2
    assert [m["content"] for m in examples["messages"][0]] == ["t2", "t3", "t4", "t5"]
    assert roles(examples["messages"][0]) == ["user", "assistant", "user", "assistant"]


def test_prompt_response_table_and_duplicates():
    table = pd.DataFrame({"prompt": ["Hi", "hi ", "Bye"], "response": ["Hello", "Hello", "See you"]})
    examples, summary = build_dialogues(table, "c.csv", data("table", "prompt", "response", [], 0))
    assert summary["duplicates_removed"] == 1 and len(examples) == 2


@pytest.mark.parametrize("fmt, table, fragment", [
    ("table", pd.DataFrame({"prompt": ["Hi"], "answer": ["x"]}), "missing column 'response'"),
    ("table", pd.DataFrame({"prompt": ["Hi", " "], "response": ["x", "y"]}), "row 2 has an empty 'prompt'"),
    ("guanaco", pd.DataFrame({"text": ["no markers here"]}), "row 1 has no '### Human"),
    ("persona_chat", pd.DataFrame({"history": [["hi"]], "candidates": [["x"]]}), "missing column 'personality'"),
])
def test_bad_rows_are_one_line_errors(fmt, table, fragment):
    fields = {"table": ("prompt", "response"), "guanaco": ("text", ""), "persona_chat": ("history", "candidates")}[fmt]
    with pytest.raises(PipelineError, match=fragment) as error:
        build_dialogues(table, "f.csv", data(fmt, *fields, [], 0))
    assert len(str(error.value).splitlines()) == 1


@pytest.mark.parametrize("raw, clean", [
    ("Steps:\r\n1. rest\r\n2. walk\r\n", "Steps:\n1. rest\n2. walk"),           # Windows line endings
    ("one\rtwo\u2028three", "one\ntwo\nthree"),                                # old Mac, Unicode line separator
    ("def f():\n    return 1\n\tpass", "def f():\n    return 1\n\tpass"),      # indentation is kept
    ("Hi  there.\tHow\u00a0are\u2009you?  ", "Hi there. How are you?"),         # inside a line: one plain space
    ("  \n  padded  \n\n", "padded"),                                          # the ends are stripped
])
def test_clean_message_keeps_line_breaks_and_indentation(raw, clean):
    assert clean_message(raw) == clean


def test_whitespace_normalised_counts_rows_changed_beyond_their_ends():
    table = pd.DataFrame({"prompt": ["Code?", " Hi ", "List?\r\n", "Space"],
                          "response": ["```\nif x:\n    y()\n```", "Hello", "- a\r\n- b", "a\u00a0b"]})
    examples, summary = build_dialogues(table, "c.csv", data("table", "prompt", "response", [], 0))
    assert examples["messages"][0][1]["content"] == "```\nif x:\n    y()\n```"
    assert examples["messages"][2] == [{"role": "user", "content": "List?"}, {"role": "assistant", "content": "- a\n- b"}]
    assert summary["whitespace_normalised"] == 2  # the list's line endings and the no-break space
    guanaco = pd.DataFrame({"text": ["### Human: Hi?\r\n### Assistant: Hello\r\nthere", "### Human: Q### Assistant: A"]})
    examples, summary = build_dialogues(guanaco, "g.jsonl", data("guanaco", "text", "", [], 0))
    assert examples["messages"][0][1]["content"] == "Hello\nthere" and summary["whitespace_normalised"] == 1


def test_a_near_miss_column_name_is_pointed_out():
    table = pd.DataFrame({"Prompt": ["Hi"], "response": ["Hello"]})
    with pytest.raises(PipelineError, match="missing column 'prompt' \\(data.input_field\\); did you mean 'Prompt'\\?"):
        build_dialogues(table, "c.csv", data("table", "prompt", "response", [], 0))
