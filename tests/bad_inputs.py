"""Data files the prepare stage must refuse with one line, and files it must read despite their quirks.

Each is meant as `data.source: data/raw/<name>` of a classification task with input_field `product`
and target_field `department` (no drop_labels needed). tests/data/test_sources.py runs them all through
`load_source` + `build_examples`; other tests (the stage, `dvc repro`) can reuse the lists.
"""

from __future__ import annotations

import io

import pandas as pd

HEADER = "product,department\n"
CATALOG = HEADER + "Milk,dairy\nPeas,frozen\n"


def _empty_parquet() -> bytes:
    """A valid Parquet file with the columns and no rows."""
    buffer = io.BytesIO()
    pd.DataFrame({"product": pd.Series([], dtype=str), "department": pd.Series([], dtype=str)}).to_parquet(buffer)
    return buffer.getvalue()


# (file name under data/raw, file bytes, a substring the error line must contain)
BAD_DATA_FILES: list[tuple[str, bytes, str]] = [
    ("latin1.csv", (HEADER + "Café au lait,beverages\nCrème brûlée,dairy\n").encode("cp1252"),
     "not valid utf-8 at byte 22 (line 2); it looks like "),
    ("utf16.csv", CATALOG.encode("utf-16"), "not valid utf-8 at byte 0 (line 1)"),
    ("missing_column.csv", b"product,category\nMilk,dairy\nPeas,frozen\n",
     "missing column 'department' (data.target_field); columns are: product, category"),
    ("near_miss_case.csv", b"Product,department\nMilk,dairy\nPeas,frozen\n", "did you mean 'Product'?"),
    ("near_miss_spaces.csv", b"product , department\nMilk,dairy\nPeas,frozen\n", "did you mean 'product '?"),
    ("empty.csv", b"", "the file is empty"),
    ("blank_lines.jsonl", b"\n  \n", "the file is empty"),
    ("header_only.csv", HEADER.encode(), "only a header (product, department) and no rows"),
    ("broken_line.jsonl", b'{"product": "Milk", "department": "dairy"}\n{"product": "Peas", "department": \n',
     "line 2 is not valid JSON"),
    ("array_line.jsonl", b'{"product": "Milk", "department": "dairy"}\n["Peas", "frozen"]\n',
     "line 2 is a JSON array, not an object"),
    ("pretty.jsonl", b'[\n  {"product": "Milk", "department": "dairy"},\n  {"product": "Peas", "department": "frozen"}\n]\n',
     "one JSON document, not JSON Lines"),
    ("blank_text.csv", (CATALOG + "   ,frozen\n").encode(), "row 3 has an empty 'product'"),
    ("blank_label.csv", (CATALOG + "Corn,\n").encode(), "row 3 has no 'department'"),
    ("single_class.csv", (HEADER + "Milk,dairy\nCheese,dairy\nButter, dairy \n").encode(),
     "column 'department' (data.target_field) has one label only, 'dairy'"),
    ("catalog.xlsx", b"PK\x03\x04 not really a workbook", "unsupported file type '.xlsx'"),
    ("catalog.json", b'{"product": "Milk", "department": "dairy"}', "not a chitchat-dataset file"),
    ("broken.parquet", b"this is not parquet", "cannot read as parquet"),
    ("ragged.csv", (CATALOG + "Corn,frozen,vegetables\n").encode(), "Expected 2 fields in line 4, saw 3"),
    ("zero_rows.parquet", _empty_parquet(), "only columns (product, department) and no rows"),
    ("image.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "its encoding could not be guessed"),
    ("bom_only.csv", b"\xef\xbb\xbf", "the file is empty"),
]

# (file name under data/raw, file bytes, the (text, label) examples it gives, in order)
HANDLED_DATA_FILES: list[tuple[str, bytes, list[tuple[str, str]]]] = [
    ("bom.csv", b"\xef\xbb\xbf" + CATALOG.encode(), [("Milk", "dairy"), ("Peas", "frozen")]),
    ("bom.jsonl", b'\xef\xbb\xbf{"product": "Milk", "department": "dairy"}\n{"product": "Peas", "department": "frozen"}\n',
     [("Milk", "dairy"), ("Peas", "frozen")]),
    ("semicolon.csv", b'product;department\n"Milk, whole";dairy\nPeas, frozen;frozen\n',
     [("Milk, whole", "dairy"), ("Peas, frozen", "frozen")]),
    ("pipe.csv", b"product|department\nMilk|dairy\nPeas|frozen\n", [("Milk", "dairy"), ("Peas", "frozen")]),
    ("tab.csv", b"product\tdepartment\nMilk\tdairy\nPeas\tfrozen\n", [("Milk", "dairy"), ("Peas", "frozen")]),
    ("catalog.tsv", b"product\tdepartment\nMilk, whole\tdairy\nPeas; frozen\tfrozen\n",
     [("Milk, whole", "dairy"), ("Peas; frozen", "frozen")]),
    ("semicolons_in_text.csv", b"product,department\nSalt; fine; iodised,pantry\nPeas; green,frozen\n",
     [("Salt; fine; iodised", "pantry"), ("Peas; green", "frozen")]),
    ("windows.csv", b"product,department\r\nMilk,dairy\r\nPeas,frozen\r\n", [("Milk", "dairy"), ("Peas", "frozen")]),
    ("label_line_break.csv", b'product,department\nMilk,"dairy\neggs"\nEggs,"dairy \r\n eggs"\nPeas,frozen\n',
     [("Milk", "dairy eggs"), ("Eggs", "dairy eggs"), ("Peas", "frozen")]),
    ("odd_spaces.csv", "product,department\n\"Whole\u00a0Milk\t 2L\",dairy\nPeas ,\u2003frozen\n".encode(),
     [("Whole Milk 2L", "dairy"), ("Peas", "frozen")]),
]


def _jsonl(*rows) -> bytes:
    import json

    return "".join(json.dumps(row) + "\n" for row in rows).encode()


HI = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]

# Conversation files, meant as `data.source: data/raw/<name>` of a generation task:
# (file name, its data.format and other data params, file bytes, a substring the error line must contain)
BAD_CONVERSATION_FILES: list[tuple[str, dict, bytes, str]] = [
    ("not_lists.jsonl", {"format": "messages"}, _jsonl({"messages": "hi"}, {"messages": 3}),
     "no row reads as data.format messages; row 1: 'messages' is a str, not a list of turns (not_a_list"),
    ("strings_as_turns.jsonl", {"format": "messages"}, _jsonl({"messages": ["hi", "hello"]}),
     "row 1: 'messages' holds something other than {role, content} turns (not_a_list"),
    ("no_messages_field.jsonl", {"format": "messages"}, _jsonl({"conversation": HI}),
     "missing column 'messages' (data.input_field); columns are: conversation"),
    ("unknown_roles.jsonl", {"format": "sharegpt"},
     _jsonl({"conversations": [{"from": "narrator", "value": "Once"}, {"from": "bot", "value": "upon"}]}),
     "row 1: a turn's role is 'narrator', not one of assistant, gpt, human, system, user (unknown_role"),
    ("unanswered.jsonl", {"format": "messages"}, _jsonl({"messages": HI[:1]}),
     "row 1: no assistant turn answers a user turn (no_assistant_turn"),
    ("not_alternating.jsonl", {"format": "messages"}, _jsonl({"messages": [HI[0], HI[0], HI[1]]}),
     "row 1: turn 2 is the user's where the assistant's was due (roles_not_alternating"),
    ("empty_output.jsonl", {"format": "alpaca"}, _jsonl({"instruction": "Add 2 and 3", "output": " "}),
     "row 1: its assistant turn has no text (empty_content"),
    ("empty_prompt.jsonl", {"format": "prompt_completion"}, _jsonl({"prompt": "", "completion": "5"}),
     "row 1: its user turn has no text (empty_content"),
    ("bad_history.jsonl", {"format": "alpaca"}, _jsonl({"instruction": "q", "output": "a", "history": ["q0", "a0"]}),
     "row 1: 'history' is not a list of [instruction, output] pairs (not_a_list"),
    ("unplaced.jsonl", {"format": "auto"}, _jsonl({"question": "q", "answer": "a"}),
     "data.format is auto, and its first rows match none of the conversation formats"),
    ("two_formats.jsonl", {"format": "auto"}, _jsonl({"messages": HI, "prompt": "hi", "completion": "hello"}),
     "match more than one of (messages, prompt_completion)"),
    ("not_a_list.json", {"format": "messages"}, b'"hello"', "a JSON string, not a list of rows"),
    ("list_of_strings.json", {"format": "messages"}, b'["hi", "hello"]', "row 1 is a JSON string, not an object"),
    ("unknown_key.jsonl", {"format": "messages", "keys": {"speaker": "from"}}, _jsonl({"messages": HI}),
     "data.keys has 'speaker'; the messages format renames only role, content"),
    ("target_field.jsonl", {"format": "sharegpt", "target_field": "reply"}, _jsonl({"conversations": HI}),
     "data.target_field is 'reply'; a sharegpt row holds the whole conversation, so leave it ''"),
]

# A conversation file with one good row and one row for each reason a row is dropped: its documented counts
# (metrics/data.json's dropped_rows) and the one conversation it gives.
MIXED_CONVERSATIONS = _jsonl(
    {"messages": HI},
    {"messages": "hi"},
    {"messages": [{"role": "narrator", "content": "Once"}, *HI]},
    {"messages": [{"role": "user", "content": " "}, HI[1]]},
    {"messages": [HI[0], HI[0], HI[1]]},
    {"messages": [{"role": "system", "content": "Be kind."}, HI[0]]},
)
MIXED_DROPPED = {"not_a_list": 1, "unknown_role": 1, "empty_content": 1, "roles_not_alternating": 1,
                 "no_assistant_turn": 1}
BAD_CONVERSATION_FILES += [
    ("roles_on_a_table.csv", {"format": "table", "input_field": "prompt", "target_field": "response",
                              "roles": {"bot": "assistant"}}, b"prompt,response\nhi,hello\n",
     "data.roles is set, but the table format has no keys or roles to rename; leave it {}"),
]
