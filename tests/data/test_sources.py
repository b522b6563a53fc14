"""Reading the user's files: delimiters, byte-order marks, encodings, and one-line errors for every bad file."""

import re

import pandas as pd
import pytest

from finetune.data.examples import build_examples
from finetune.data.sources import load_chitchat, load_source, read_table
from finetune.errors import PipelineError
from tests.bad_inputs import BAD_DATA_FILES, HANDLED_DATA_FILES


def raw_file(tmp_path, name: str, data: bytes) -> str:
    """Write `data` as data/raw/<name> under `tmp_path`; return the path as a task's data.source would name it."""
    path = tmp_path / "data" / "raw" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


def test_the_bad_and_handled_lists_have_distinct_names():
    names = [name for name, *_ in BAD_DATA_FILES + HANDLED_DATA_FILES]
    assert len(names) == len(set(names)) and len(BAD_DATA_FILES) >= 12


@pytest.mark.parametrize("name, data, fragment", BAD_DATA_FILES, ids=[case[0] for case in BAD_DATA_FILES])
def test_each_bad_file_is_one_line_that_says_what_is_wrong(tmp_path, name, data, fragment):
    source = raw_file(tmp_path, name, data)
    with pytest.raises(PipelineError) as error:
        table, origin = load_source(source)
        build_examples(table, origin, "product", "department", [])
    message = str(error.value)
    assert len(message.splitlines()) == 1, message
    assert name in message and fragment in message, message


@pytest.mark.parametrize("name, data, expected", HANDLED_DATA_FILES, ids=[case[0] for case in HANDLED_DATA_FILES])
def test_each_quirky_file_is_read_and_normalised(tmp_path, name, data, expected):
    table, origin = load_source(raw_file(tmp_path, name, data))
    examples, _ = build_examples(table, origin, "product", "department", [])
    assert list(zip(examples["text"], examples["label"])) == expected


@pytest.mark.parametrize("name, data, delimiter", [
    ("comma.csv", b"product,department\nMilk,dairy\n", ","),
    ("semicolon.csv", b"product;department\nMilk;dairy\n", ";"),
    ("tab.csv", b"product\tdepartment\nMilk\tdairy\n", "\t"),
    ("pipe.csv", b"product|department\nMilk|dairy\n", "|"),
    ("one_column.csv", b"product\nMilk\nPeas\n", ","),  # nothing to sniff: a comma
])
def test_csv_delimiter_is_detected(tmp_path, name, data, delimiter):
    table = read_table(raw_file(tmp_path, name, data))
    expected = data.decode().splitlines()[0].split(delimiter)
    assert list(table.columns) == expected and len(table) >= 1


def test_a_tsv_is_tab_separated_even_when_commas_outnumber_tabs(tmp_path):
    table = read_table(raw_file(tmp_path, "items.tsv", b"product\tdepartment\nMilk, whole, 1 l\tdairy\n"))
    assert table.to_dict("records") == [{"product": "Milk, whole, 1 l", "department": "dairy"}]


def test_the_delimiter_is_sniffed_from_the_first_64_kb_only(tmp_path):
    rows = "".join(f"item {i};dept {i % 3}\n" for i in range(6000))  # about 90 KB
    table = read_table(raw_file(tmp_path, "big.csv", ("product;department\n" + rows).encode()))
    assert list(table.columns) == ["product", "department"] and len(table) == 6000


def test_a_declared_encoding_is_used(tmp_path):
    data = "product,department\nCafé au lait,beverages\n".encode("cp1252")
    table = read_table(raw_file(tmp_path, "cafe.csv", data), encoding="cp1252")
    assert table["product"].tolist() == ["Café au lait"]
    table, _ = load_source(raw_file(tmp_path, "cafe.jsonl", '{"product": "Crème"}\n'.encode("latin-1")), "latin-1")
    assert table["product"].tolist() == ["Crème"]


def test_undecodable_bytes_name_the_file_encoding_offset_guess_and_fix(tmp_path):
    data = "product,department\nMilk,dairy\nCafé au lait,beverages\nCrème brûlée,dairy\n".encode("cp1252")
    source = raw_file(tmp_path, "cafe.csv", data)
    with pytest.raises(PipelineError) as error:
        read_table(source, encoding="utf-8")
    message = str(error.value)
    offset = data.index("é".encode("cp1252"))
    found = re.match(rf"{re.escape(source)}: not valid utf-8 at byte {offset} \(line 3\); it looks like ([\w-]+): ", message)
    assert found, message
    guess = found[1]  # a guess: these bytes are as valid in cp1250 as in cp1252
    assert data.decode(guess).startswith("product,department")
    assert f"set the task's data.encoding to '{guess}'" in message and f"`iconv -f {guess} -t utf-8 {source} > " in message


def test_the_byte_offset_counts_a_byte_order_mark(tmp_path):
    source = raw_file(tmp_path, "bom.csv", b"\xef\xbb\xbfproduct,department\nCaf\xe9,beverages\n")
    with pytest.raises(PipelineError, match="at byte 25 "):
        read_table(source)


def test_an_unknown_encoding_name_is_refused(tmp_path):
    with pytest.raises(PipelineError, match="data.encoding 'utf-9' is not an encoding Python knows"):
        read_table(raw_file(tmp_path, "a.csv", b"product,department\nMilk,dairy\n"), encoding="utf-9")


def test_jsonl_line_numbers_count_blank_lines(tmp_path):
    data = b'{"product": "Milk"}\n\n{"product": "Peas"}\n{"product": Corn}\n'
    with pytest.raises(PipelineError, match=r"line 4 is not valid JSON \(Expecting value at column 13\)"):
        read_table(raw_file(tmp_path, "items.jsonl", data))


def test_a_jsonl_string_may_hold_a_unicode_line_separator(tmp_path):
    table = read_table(raw_file(tmp_path, "items.jsonl", '{"product": "Milk\u2028whole"}\n'.encode()))
    assert table["product"].tolist() == ["Milk\u2028whole"]


def test_a_chitchat_file_is_decoded_with_the_declared_encoding(tmp_path):
    corpus = '{"c1": {"messages": [[{"text": "Salut, ça va ?"}], [{"text": "Très bien"}]]}}'
    path = raw_file(tmp_path, "talk.json", corpus.encode("cp1252"))
    with pytest.raises(PipelineError, match="not valid utf-8 at byte"):
        load_source(path)
    assert load_chitchat(tmp_path / "data" / "raw" / "talk.json", "cp1252")["turns"][0] == ["Salut, ça va ?", "Très bien"]


def test_a_missing_file_and_a_parquet_file_still_read(tmp_path):
    with pytest.raises(PipelineError, match="file not found") as error:
        read_table(tmp_path / "nowhere.csv")
    assert "queued and --temp experiments see only files git or DVC track, so `dvc add`" in str(error.value)
    path = tmp_path / "items.parquet"
    pd.DataFrame({"product": ["Milk"], "department": ["dairy"]}).to_parquet(path)
    assert read_table(path, encoding="cp1252").to_dict("records") == [{"product": "Milk", "department": "dairy"}]
