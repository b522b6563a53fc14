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
