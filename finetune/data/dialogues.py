"""Generation examples: the task's data format (finetune.data.formats) turns the source's rows into conversations of
{role, content} messages ending in the response; here they get ids, lose duplicates and are counted."""

from __future__ import annotations

import pandas as pd

from finetune.data import formats
from finetune.data.conversations import conversation_key
from finetune.errors import PipelineError


def build_dialogues(table: pd.DataFrame, origin: str, data) -> tuple[pd.DataFrame, dict]:
    """Read `table` in the task's `data.format`; return examples {id, group, messages} and counts of what was dropped
    or changed.

    Every message goes through `clean_message`; `whitespace_normalised` counts the rows it changed beyond
    stripping the ends (a Windows line ending, a no-break space, a double space). A conversation file's rows that
    are not conversations are counted per reason under `dropped_rows`.
    """
    if table.empty:
        raise PipelineError(f"{origin}: no rows")
    n_rows = len(table)
    fmt = formats.choose(table, origin, data)
    rows, bad_rows = fmt.read(table, origin, data)
    all_ids = table["id"].astype(str).tolist() if "id" in table.columns else [str(i) for i in range(1, n_rows + 1)]
    ids = [all_ids[r["index"]] for r in rows]
    examples = pd.DataFrame({
        "id": ids,
        "group": [r.get("group") or i for r, i in zip(rows, ids)],
        "messages": [r["messages"] for r in rows],
    })
    if examples["id"].duplicated().any():
        raise PipelineError(f"{origin}: id '{examples.loc[examples['id'].duplicated(), 'id'].iloc[0]}' appears more "
                            "than once; ids must be unique")
    dropped = examples["messages"].map(lambda m: m[-1]["content"] in data.drop_labels)
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
        **({"dropped_rows": bad_rows} if bad_rows else {}),
    }
    return examples, summary

