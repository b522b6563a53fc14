"""finetune chat: a terminal conversation with a generation adapter, its answers streamed token by token."""

import io
import json

import pytest

from finetune.deliver.chat import chat_loop, reply
from tests.deliver.conftest import answer_conversations
from finetune.deliver.trained import load_trained
from finetune.errors import PipelineError


class Typist:
    """Stands in for the keyboard: returns the next line at each prompt, then ends the input."""

    def __init__(self, lines):
        self.lines, self.prompts = list(lines), []

    def __call__(self, prompt):
        self.prompts.append(prompt)
        if not self.lines:
            raise EOFError
        return self.lines.pop(0)


class Recorder(io.StringIO):
    def __init__(self):
        super().__init__()
        self.writes = []

    def write(self, text):
        self.writes.append(text)
        return super().write(text)


def test_chat_streams_the_answer_and_keeps_the_conversation(chatter):
    run, model, tokenizer = load_trained(chatter)
    out = Recorder()
    history = chat_loop(run, model, tokenizer, max_new_tokens=6, no_repeat_ngram_size=0,
                        read=Typist(["hi there", "", "/reset", "what do you like?"]), output=out)
    assert [m["role"] for m in history] == ["user", "assistant"]  # /reset dropped the first exchange
    assert history[0]["content"] == "what do you like?"
    expected = answer_conversations(run, model, tokenizer, [[{"role": "user", "content": "what do you like?"}]],
                                    batch_size=1, max_new_tokens=6, no_repeat_ngram_size=0)[0]
    assert history[1]["content"] == expected  # the same greedy answer as predict and evaluate give
    assert "(conversation cleared)" in out.getvalue()
    streamed = out.writes[out.writes.index("model> ", out.writes.index("(conversation cleared)\n")) + 1:]
    assert len(streamed) > 1  # written piece by piece as tokens came, not as one finished string


def test_the_answer_continues_the_whole_conversation(chatter):
    run, model, tokenizer = load_trained(chatter)
    history = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"},
               {"role": "user", "content": "how are you?"}]
    answer = reply(run, model, tokenizer, history, 6, 0, io.StringIO())
    assert answer == answer_conversations(run, model, tokenizer, [history], 1, 6, 0)[0]


def test_a_conversation_from_a_file_is_shown_and_answered_first(chatter, tmp_path):
    from finetune.cli import conversation_from

    run, model, tokenizer = load_trained(chatter)
    turns = [{"from": "human", "value": "hello"}, {"from": "gpt", "value": "hi"}, {"from": "human", "value": "how are you?"}]
    (tmp_path / "chats.jsonl").write_text(json.dumps({"conversations": turns}) + "\n")
    history = conversation_from(run, tmp_path / "chats.jsonl", 1)
    out = io.StringIO()
    talked = chat_loop(run, model, tokenizer, max_new_tokens=6, no_repeat_ngram_size=0, read=Typist([]), output=out,
                       history=history)
    assert talked[:3] == [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"},
                          {"role": "user", "content": "how are you?"}]
    assert talked[3]["content"] == answer_conversations(run, model, tokenizer, [history], 1, 6, 0)[0]
    assert "you> how are you?\nmodel> " in out.getvalue()


def test_a_classification_adapter_is_refused(classifier):
    run, model, tokenizer = load_trained(classifier)
    with pytest.raises(PipelineError, match="trained for a classification task .*not to chat; use `finetune predict`"):
        chat_loop(run, model, tokenizer, read=Typist([]), output=io.StringIO())
