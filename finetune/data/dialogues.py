"""Generation examples: each source format becomes conversations of {role, content} messages ending in the response."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from finetune.data.examples import normalise_text, require_column
from finetune.errors import PipelineError

GUANACO_TURN = re.compile(r"###\s*(Human|Assistant)\s*:", re.IGNORECASE)
PERSONA_FIELDS = ("personality", "persona")
LINE_BREAKS = re.compile(r"\r\n?|[\u2028\u2029]")  # Windows and old Mac line endings, Unicode line/paragraph separators
ODD_SPACES = re.compile(r"[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")  # no-break, em, thin, ideographic ...
INNER_SPACES = re.compile(r"(?<=\S)(?:[ \t]{2,}|\t)")  # after a line's first character: not indentation


def _blank(value) -> bool:
    if isinstance(value, (list, tuple, np.ndarray)):
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


def _needs_cleaning(*values) -> bool:
    """Whether `clean_message` changes any of these texts (or lists of texts) beyond stripping their ends."""
    for value in values:
        texts = value if isinstance(value, (list, tuple, np.ndarray)) else [value]
        if any(isinstance(t, str) and clean_message(t) != t.strip() for t in texts):
            return True
    return False


def _turns(value, origin: str, row: int, field: str) -> list[str]:
    """A list of turns from a list, an array or a newline-separated string."""
    if isinstance(value, (list, tuple, np.ndarray)):
        turns = [clean_message(v) for v in value]
    elif isinstance(value, str):
        turns = [clean_message(v) for v in clean_message(value).split("\n")]
    else:
        raise PipelineError(f"{origin}: row {row}: '{field}' is {type(value).__name__}; expected a list of turns")
    return [t for t in turns if t]


def _alternate(turns: list[str]) -> list[dict]:
    """Turns as messages whose last is the assistant's, speakers alternating backwards from it.

    A leading assistant turn is dropped: chat templates such as Llama-2's require the user to speak first.
    """
    n = len(turns)
    messages = [{"role": "assistant" if (n - 1 - i) % 2 == 0 else "user", "content": t} for i, t in enumerate(turns)]
    return messages[1:] if messages[0]["role"] == "assistant" and n > 1 else messages


def _window(turns: list[str], keep: int) -> list[str]:
    return turns[-keep:] if keep else turns


def from_table(table: pd.DataFrame, origin: str, input_field: str, target_field: str) -> list[dict]:
    """Prompt / response pairs: one user turn, one assistant turn per row."""
    _require(table, origin, (input_field, "data.input_field"), (target_field, "data.target_field"))
    out = []
    for row, (prompt, response) in enumerate(zip(table[input_field], table[target_field]), start=1):
        if _blank(prompt):
            raise PipelineError(f"{origin}: row {row} has an empty '{input_field}' (the prompt); fix or remove that row")
        if _blank(response):
            raise PipelineError(f"{origin}: row {row} has an empty '{target_field}' (the response); fix or remove that row")
        out.append({"messages": [{"role": "user", "content": clean_message(prompt)},
                                 {"role": "assistant", "content": clean_message(response)}],
                    "normalised": _needs_cleaning(prompt, response)})
    return out


def from_chitchat(table: pd.DataFrame, origin: str, keep: int) -> list[dict]:
    """Each conversation gives one example: the `keep` turns at its middle, the last one the response."""
    out = []
    for turns in table["turns"]:
        normalised = _needs_cleaning(turns)
        turns = [t for t in (clean_message(x) for x in turns) if t]
        size = min(keep or len(turns), len(turns))
        start = (len(turns) - size) // 2
        out.append({"messages": _alternate(turns[start:start + size]), "normalised": normalised})
    return out


def from_persona_chat(table: pd.DataFrame, origin: str, history_field: str, reply_field: str, keep: int) -> list[dict]:
    """Persona lines (the system message) + dialogue history -> reply; a list of reply candidates ends with the true one.

    Rows that share a persona come from one conversation, so the persona is the group the split keeps together.
    """
    _require(table, origin, (history_field, "data.input_field"), (reply_field, "data.target_field"))
    persona_field = next((f for f in PERSONA_FIELDS if f in table.columns), None)
    if persona_field is None:
        raise PipelineError(f"{origin}: missing column 'personality' (the persona lines); "
                            f"columns are: {', '.join(map(str, table.columns))}")
    out = []
    for row, (persona, history, reply) in enumerate(
            zip(table[persona_field], table[history_field], table[reply_field]), start=1):
        if isinstance(reply, (list, tuple, np.ndarray)):
            reply = reply[-1] if len(reply) else None
        if _blank(reply):
            raise PipelineError(f"{origin}: row {row} has no '{reply_field}' (the reply); fix or remove that row")
        normalised = _needs_cleaning(persona, history, reply)
        persona_lines = _turns(persona, origin, row, persona_field) if not _blank(persona) else []
        history = _turns(history, origin, row, history_field) if not _blank(history) else []
        turns = _window(history + [clean_message(reply)], keep)
        if len(turns) < 2:
            raise PipelineError(f"{origin}: row {row} has an empty '{history_field}' (the history); fix or remove that row")
        system = "Your persona: " + " ".join(persona_lines) if persona_lines else ""
        messages = ([{"role": "system", "content": system}] if system else []) + _alternate(turns)
        out.append({"messages": messages, "group": normalise_text(system) or None, "normalised": normalised})
    return out


def from_guanaco(table: pd.DataFrame, origin: str, text_field: str, keep: int) -> list[dict]:
    """'### Human: ... ### Assistant: ...' texts; a trailing human turn with no answer is dropped."""
    _require(table, origin, (text_field, "data.input_field"))
    out = []
    for row, text in enumerate(table[text_field], start=1):
        if _blank(text):
            raise PipelineError(f"{origin}: row {row} has an empty '{text_field}'; fix or remove that row")
        parts = GUANACO_TURN.split(str(text))
        normalised = _needs_cleaning(parts[2::2])
        turns = [{"role": "user" if who.lower() == "human" else "assistant", "content": clean_message(content)}
                 for who, content in zip(parts[1::2], parts[2::2])]
        while turns and turns[-1]["role"] != "assistant":
            turns.pop()
        turns = [t for t in turns if t["content"]]
        if not any(t["role"] == "user" for t in turns):
            raise PipelineError(f"{origin}: row {row} has no '### Human: ... ### Assistant: ...' exchange "
                                f"in '{text_field}'; fix or remove that row")
        out.append({"messages": _window(turns, keep), "normalised": normalised})
    return out


def _require(table: pd.DataFrame, origin: str, *fields: tuple[str, str]) -> None:
    for field, role in fields:
        require_column(table, origin, field, role)


def build_dialogues(table: pd.DataFrame, origin: str, fmt: str, input_field: str, target_field: str,
                    drop_responses: list[str], keep: int) -> tuple[pd.DataFrame, dict]:
    """Validate `table` in format `fmt`; return examples {id, group, messages} and counts of what was dropped or changed.

    Every message goes through `clean_message`; `whitespace_normalised` counts the rows it changed beyond
    stripping the ends (a Windows line ending, a no-break space, a double space).
    """
    if table.empty:
        raise PipelineError(f"{origin}: no rows")
    n_rows = len(table)
    if fmt == "chitchat":  # a one-turn conversation has nothing to answer
        table = table[table["turns"].map(lambda turns: sum(bool(clean_message(t)) for t in turns) >= 2)]
    readers = {"table": lambda: from_table(table, origin, input_field, target_field),
               "chitchat": lambda: from_chitchat(table, origin, keep),
               "persona_chat": lambda: from_persona_chat(table, origin, input_field, target_field, keep),
               "guanaco": lambda: from_guanaco(table, origin, input_field, keep)}  # param_schemas.FORMATS
    rows = readers[fmt]()
    ids = table["id"].astype(str).tolist() if "id" in table.columns else [str(i) for i in range(1, len(table) + 1)]
    examples = pd.DataFrame({
        "id": ids,
        "group": [r.get("group") or i for r, i in zip(rows, ids)],
        "messages": [r["messages"] for r in rows],
    })
    if examples["id"].duplicated().any():
        raise PipelineError(f"{origin}: id '{examples.loc[examples['id'].duplicated(), 'id'].iloc[0]}' appears more "
                            "than once; ids must be unique")
    dropped = examples["messages"].map(lambda m: m[-1]["content"] in drop_responses)
    examples = examples[~dropped]
    duplicate = examples["messages"].map(conversation_key).duplicated(keep="first")
    examples = examples[~duplicate].reset_index(drop=True)
    if examples.empty:
        raise PipelineError(f"{origin}: no examples left")
    turns = examples["messages"].map(lambda m: sum(x["role"] != "system" for x in m))
    summary = {
        "rows": int(n_rows),
        "whitespace_normalised": sum(r["normalised"] for r in rows),
        "dropped_by_response": int(dropped.sum()),
        "duplicates_removed": int(duplicate.sum()),
        "examples": int(len(examples)),
        "groups": int(examples["group"].nunique()),
        "mean_turns": round(float(turns.mean()), 2),
    }
    return examples, summary


def conversation_key(messages: list[dict]) -> str:
    """The text two conversations are compared by (role-tagged, normalised)."""
    return "\n".join(f"{m['role']}: {normalise_text(m['content'])}" for m in messages)
