"""Conversations as the pipeline holds them: lists of {role, content} messages, roles `system`, `user` and `assistant`.

What every data format shares: how a message's text is cleaned, how a list of turns is checked, and the reasons a
row of a conversation file is dropped (counted per reason in `metrics/data.json`).
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from finetune.data.examples import normalise_text

ROLES = ("system", "user", "assistant")
LINE_BREAKS = re.compile(r"\r\n?|[\u2028\u2029]")  # Windows and old Mac line endings, Unicode line/paragraph separators
ODD_SPACES = re.compile(r"[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")  # no-break, em, thin, ideographic ...
INNER_SPACES = re.compile(r"(?<=\S)(?:[ \t]{2,}|\t)")  # after a line's first character: not indentation

# Why a row of a conversation file is dropped: the key counted in metrics/data.json, and what it means.
DROP_REASONS = {
    "not_a_list": "its conversation field is not a list of turns",
    "unknown_role": "a turn has a role that is not system, user or assistant (data.roles maps other names)",
    "empty_content": "a turn has no text",
    "roles_not_alternating": "after an optional system turn, user and assistant turns do not take turns",
    "no_assistant_turn": "no assistant turn answers a user turn",
}
NO_USER_TURN = "no_user_turn"  # a row given to a model to answer that ends with no user turn


class BadRow(Exception):
    """A row that cannot be a conversation; `reason` is a key of DROP_REASONS, `detail` says where."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def is_list(value) -> bool:
    return isinstance(value, (list, tuple, np.ndarray))


def blank(value) -> bool:
    if is_list(value):
        return len(value) == 0
    return value is None or (isinstance(value, float) and pd.isna(value)) or not str(value).strip()


def clean_message(text) -> str:
    """A message's text as the model sees it; whitespace that carries no meaning is normalised.

    Line endings become \\n (Windows \\r\\n, old Mac \\r, Unicode line separators), odd Unicode spaces
    (no-break, thin, ideographic ...) a plain space, and a run of spaces or tabs after a line's first
    character one space; the ends are stripped. Line breaks and the spaces or tabs that indent a line are
    kept: in a response they make a list, a table or code.
    """
    text = ODD_SPACES.sub(" ", LINE_BREAKS.sub("\n", str(text)))
    return INNER_SPACES.sub(" ", text).strip()


def needs_cleaning(*values) -> bool:
    """Whether `clean_message` changes any of these texts (or lists of texts) beyond stripping their ends."""
    for value in values:
        texts = value if is_list(value) else [value]
        if any(isinstance(t, str) and clean_message(t) != t.strip() for t in texts):
            return True
    return False


def alternate(turns: list[str]) -> list[dict]:
    """Turns as messages whose last is the assistant's, speakers alternating backwards from it.

    A leading assistant turn is dropped: chat templates such as Llama-2's require the user to speak first.
    """
    n = len(turns)
    messages = [{"role": "assistant" if (n - 1 - i) % 2 == 0 else "user", "content": t} for i, t in enumerate(turns)]
    return messages[1:] if messages[0]["role"] == "assistant" and n > 1 else messages


def window(turns: list, keep: int) -> list:
    """The last `keep` turns (all of them for 0)."""
    return turns[-keep:] if keep else turns


def text_of(content) -> str | None:
    """A turn's text: a string, or the text parts of a list of {type: text, text} parts (OpenAI's content parts)."""
    if isinstance(content, str):
        return content
    if is_list(content) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "\n".join(str(p.get("text", "")) for p in content)
    return None if blank(content) else str(content)


def checked(messages: list[dict], keep: int) -> list[dict]:
    """A conversation as training takes it, or BadRow: an optional system turn, then user and assistant turns in
    turn, ending with the assistant's (user turns after the last answer are cut); the last `keep` turns kept (one
    more where that would start with the assistant's)."""
    for m in messages:
        if not m["content"]:
            raise BadRow("empty_content", f"its {m['role']} turn has no text")
    system = [messages[0]] if messages and messages[0]["role"] == "system" else []
    turns = messages[len(system):]
    while turns and turns[-1]["role"] == "user":
        turns = turns[:-1]
    if not any(m["role"] == "assistant" for m in turns):
        raise BadRow("no_assistant_turn", "no assistant turn answers a user turn")
    for i, m in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            raise BadRow("roles_not_alternating",
                         f"turn {len(system) + i + 1} is the {m['role']}'s where the {expected}'s was due")
    start = max(0, len(turns) - keep) if keep else 0
    if turns[start]["role"] == "assistant":  # a window starts with the user's turn: one more turn than `keep`
        start -= 1
    return system + turns[start:]


def conversation_key(messages: list[dict]) -> str:
    """The text two conversations are compared by (role-tagged, normalised)."""
    return "\n".join(f"{m['role']}: {normalise_text(m['content'])}" for m in messages)
