"""Predict with a trained adapter over a CSV, JSONL or Parquet file, streamed in chunks, in constant memory.

What a row gets is its kind's (finetune.kinds): a classification adapter's label by label scoring (as evaluate
does it), its probability (softmax over the allowed labels' log-likelihoods) and the top-k; a generation adapter's
answer. A generation adapter also reads a conversation file in any of the conversation formats it could be trained
on (finetune.data.formats: the one it was trained with, else the one the file's first rows show) and answers each
row's last user turn, its earlier turns as history. A row that is empty or cannot be read gets a status and no
prediction; it does not end the run.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Iterator

from tqdm.auto import tqdm

from finetune.deliver.trained import TrainedRun
from finetune.errors import PipelineError
from finetune.files import atomic_path

FORMATS = (".csv", ".jsonl", ".parquet")
OK, EMPTY, UNREADABLE = "ok", "empty", "unreadable"


def _format(path: Path, what: str) -> str:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise PipelineError(f"{what} {path}: unknown format '{suffix}'; use one of {', '.join(FORMATS)}")
    return suffix


def _csv_header(path: Path) -> list[str]:
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
        return next(csv.reader(f), [])


def columns(path: Path) -> list[str]:
    """The input file's column names (a JSONL file's are its first object's keys)."""
    suffix = _format(path, "input")
    if suffix == ".csv":
        return _csv_header(path)
    if suffix == ".parquet":
        import pyarrow
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(path).schema_arrow.names
        except pyarrow.ArrowException as e:
            raise PipelineError(f"input {path}: cannot read it as Parquet ({str(e).splitlines()[0]})") from None
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                first = json.loads(line)
            except json.JSONDecodeError:
                continue
            return list(first) if isinstance(first, dict) else []
    return []


def conversation_format(run: TrainedRun, path: Path, column: str | None):
    """The conversation format whose rows `path` holds, for a kind that answers conversations (None: a column of
    texts, or `--column` named one): the format the run was trained with if the file has its fields, else the one
    its first rows show."""
    if column or not run.kind.can_chat:
        return None
    from finetune.data import formats

    trained = run.info["task"].get("data", {})
    fmt = formats.get(trained["format"]) if trained.get("format", formats.AUTO) != formats.AUTO else None
    if isinstance(fmt, formats.ConversationFormat):
        data = conversation_params(trained)
        if all(fmt.names(data)[f] in columns(path) for f in fmt.fields[:1]):
            return fmt, data
    first = [row for row, _ in zip(read_records(path), range(formats.SNIFF_ROWS)) if row is not None]
    found = [f for f in map(formats.get, sorted(formats._module_names()))
             if isinstance(f, formats.ConversationFormat) and first and f.looks_like(first)]
    return (found[0], conversation_params({"format": found[0].name})) if len(found) == 1 else None


def conversation_params(trained: dict):
    """The data params a conversation file is read with: the trained run's, or the format's defaults."""
    from finetune.param_schemas import DataParams

    values = {"source": "-", "format": "auto", "input_field": "", "target_field": "", "drop_labels": [], "turns": 0,
              "encoding": "utf-8", "keys": {}, "roles": {}}
    return DataParams.model_validate({**values, **{k: v for k, v in trained.items() if k in values}})


def read_records(path: Path, columns: list[str] | None = None) -> Iterator[dict | None]:
    """Every row of the file as a dict (None for a line that is not a JSON object), one at a time; a Parquet file
    reads only `columns` when they are named."""
    suffix = _format(path, "input")
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(columns=columns, batch_size=4096):
            yield from batch.to_pylist()
    elif suffix == ".csv":
        with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
            yield from csv.DictReader(f)
    else:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    yield None
                    continue
                yield row if isinstance(row, dict) else None


def read_conversations(path: Path, fmt, data) -> Iterator[tuple[list[dict] | None, str, str]]:
    """(the conversation to answer, status, its last user turn) for every row of a conversation file."""
    from finetune.data.conversations import BadRow

    for row in read_records(path):
        if row is None:
            yield None, UNREADABLE, ""
            continue
        try:
            messages = fmt.prompt(row, data)
        except BadRow as bad:
            yield None, bad.reason, ""
            continue
        yield messages, OK, messages[-1]["content"]


def choose_column(path: Path, column: str | None, run: TrainedRun) -> str:
    """`--column`, else the task's input field, else `text`: whichever the file has."""
    available = columns(path)
    trained_on = run.info["task"].get("data", {}).get("input_field")
    for name in [column] if column else [trained_on, "text"]:
        if name and name in available:
            return name
    wanted = column or " or ".join(n for n in (trained_on, "text") if n)
    raise PipelineError(f"{path}: no column {wanted}; it has {', '.join(available) or 'none'}; name one with --column")


def count_rows(path: Path) -> int:
    """Rows to predict (for the progress bar): Parquet's metadata, or the lines of a text file."""
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    with open(path, "rb") as f:
        lines = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    return max(0, lines - (1 if path.suffix.lower() == ".csv" else 0))


def _cell(value) -> tuple[str, str]:
    """(text, status) of one input cell."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "", EMPTY
    text = value if isinstance(value, str) else str(value)
    if "\ufffd" in text:
        return text, UNREADABLE  # bytes that are not UTF-8
    return (text, OK) if text.strip() else (text, EMPTY)


def read_rows(path: Path, column: str) -> Iterator[tuple[str, str]]:
    """(text, status) for every row of the file, one at a time."""
    if _format(path, "input") == ".csv":  # a row with too few or too many fields is unreadable, not shifted
        with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, [])
            at = header.index(column)
            for row in reader:
                yield (_cell(row[at]) if len(row) == len(header) else ("", UNREADABLE)) if row else ("", EMPTY)
        return
    for record in read_records(path, [column]):
        yield ("", UNREADABLE) if record is None else _cell(record.get(column))


def _chunks(rows: Iterator[tuple[str, str]], size: int) -> Iterator[list[tuple[str, str]]]:
    chunk = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _Writer:
    """Rows written as they come, to a temporary file that replaces `dest` only when all went well."""

    def __init__(self, tmp: Path, suffix: str, fields: list[str]):
        self.suffix, self.fields, self.tmp = suffix, fields, tmp
        self.parquet = None
        if suffix == ".csv":
            self.file = open(tmp, "w", encoding="utf-8", newline="")
            self.csv = csv.DictWriter(self.file, fieldnames=fields)
            self.csv.writeheader()
        elif suffix == ".jsonl":
            self.file = open(tmp, "w", encoding="utf-8")

    def write(self, rows: list[dict]) -> None:
        if self.suffix == ".csv":
            self.csv.writerows({k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()} for r in rows)
        elif self.suffix == ".jsonl":
            self.file.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pylist([{k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()}
                                          for r in rows], schema=self._schema())
            if self.parquet is None:
                self.parquet = pq.ParquetWriter(self.tmp, table.schema)
            self.parquet.write_table(table)

    def _schema(self):
        import pyarrow as pa

        types = {"row": pa.int64(), "probability": pa.float64()}
        return pa.schema([(f, types.get(f, pa.string())) for f in self.fields])

    def close(self) -> None:
        if self.suffix == ".parquet":
            if self.parquet is None:
                self.write([])
            self.parquet.close()
        else:
            self.file.close()


def check_files(run: TrainedRun, source: Path, dest: Path, column: str | None) -> str:
    """Refuse what would fail or harm before any model is loaded: a missing or unknown input, an output that is a
    folder or the input itself, an input without the column; returns the column to read ('' for a conversation
    file, read whole)."""
    if not source.is_file():
        raise PipelineError(f"input {source}: no such file")
    _format(dest, "output")
    if dest.is_dir():
        raise PipelineError(f"output {dest} is a folder; name a file (.csv, .jsonl or .parquet)")
    if dest.resolve() == source.resolve():
        raise PipelineError(f"output {dest} is the input file; name another, so the input is kept")
    return "" if conversation_format(run, source, column) else choose_column(source, column, run)


def predict_file(run: TrainedRun, model, tokenizer, source: str | Path, dest: str | Path, column: str | None = None,
                 chunk_rows: int = 4096, **options) -> dict:
    """Predict every row of `source` into `dest` (same formats); returns counts by status.

    `options`: batch_size and memory_gib (label scoring), top_k; max_new_tokens and no_repeat_ngram_size
    (generation). Rows are read, predicted and written `chunk_rows` at a time. A conversation file's rows are
    written with their last user turn as `prompt`; a row that is not a conversation gets the reason as its status.
    """
    source, dest = Path(source), Path(dest)
    name = check_files(run, source, dest, column)
    conversations = None if name else conversation_format(run, source, column)
    name = name or "prompt"
    out_suffix = _format(dest, "output")
    kind = run.kind
    fields = ["row", name, "status", *kind.predict_fields]
    counts = {OK: 0, EMPTY: 0, UNREADABLE: 0}
    rows_in = (((messages, status) for messages, status, _ in read_conversations(source, *conversations))
               if conversations else read_rows(source, name))
    shown = (lambda value: value[-1]["content"] if value else "") if conversations else (lambda value: value)
    bar = tqdm(total=count_rows(source), desc=f"predicting {source.name}", unit="row")
    with atomic_path(dest) as tmp:
        writer = _Writer(tmp, out_suffix, fields)
        try:
            done = 0
            for chunk in _chunks(rows_in, chunk_rows):
                ok = [i for i, (_, status) in enumerate(chunk) if status == OK]
                texts = [chunk[i][0] for i in ok]
                predicted = dict(zip(ok, kind.predict(run, model, tokenizer, texts, options, bar.update) if ok else []))
                rows = []
                for i, (text, status) in enumerate(chunk):
                    counts[status] = counts.get(status, 0) + 1
                    blank = {f: None for f in fields[3:]}
                    rows.append({"row": done + i, name: shown(text), "status": status, **predicted.get(i, blank)})
                bar.update(len(chunk) - len(ok))
                writer.write(rows)
                done += len(chunk)
        finally:
            writer.close()
            bar.close()
    return counts
