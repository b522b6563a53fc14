"""One set of conversations written out as a file of each conversation format, as a user would hold them."""

from __future__ import annotations

import json
from pathlib import Path

FORMATS = ("messages", "sharegpt", "alpaca", "prompt_completion")
SHAREGPT_ROLES = {"system": "system", "user": "human", "assistant": "gpt"}


def as_row(fmt: str, messages: list[dict]) -> dict:
    """A conversation (an optional system turn, then user and assistant turns in turn) as one row of `fmt`."""
    system = [m["content"] for m in messages if m["role"] == "system"]
    turns = [m for m in messages if m["role"] != "system"]
    if fmt == "messages":
        return {"messages": messages}
    if fmt == "sharegpt":
        return {"conversations": [{"from": SHAREGPT_ROLES[m["role"]], "value": m["content"]} for m in messages]}
    if fmt == "alpaca":
        pairs = [[turns[i]["content"], turns[i + 1]["content"]] for i in range(0, len(turns) - 2, 2)]
        return {"instruction": turns[-2]["content"], "input": "", "output": turns[-1]["content"],
                **({"system": system[0]} if system else {}), **({"history": pairs} if pairs else {})}
    if fmt == "prompt_completion":
        return {"prompt": messages[:-1], "completion": messages[-1:]}
    raise ValueError(fmt)


def write(path: Path, fmt: str, conversations: list[list[dict]], ids: list[str] | None = None) -> Path:
    """`conversations` as a JSONL file of `fmt`, with an `id` a row when `ids` are given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for i, messages in enumerate(conversations):
            row = {**({"id": ids[i]} if ids else {}), **as_row(fmt, messages)}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
