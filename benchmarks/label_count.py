"""Label scoring against the number of labels: `finetune predict` on 20, 133 and 1,000 labels, rows/s and peak memory.

The trained adapter (models/adapter) scores the same test texts against three label sets: its own 20
departments, the catalog's 133 aisles (Instacart's 134 less "missing", the size of BigBasket's
sub_category) and 1,000 synthetic labels (each aisle with a grade word: longer, many sharing a
prefix). Only the label set in a copy of run.json changes, so this measures what scoring costs,
not accuracy. Each case runs the real command in a fresh process that reports its peak resident
memory. Run from the repository root after `make repro`:

    python -m benchmarks.label_count
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shutil
from pathlib import Path

import pandas as pd

from benchmarks.catalog import run_predict
from benchmarks.measure import RESULTS, cpu_model
from finetune import provenance
from finetune.data.sources import load_instacart
from finetune.files import read_json, write_json

GRADES = ["basic", "classic", "deluxe", "everyday", "family", "premium", "select", "value"]


def label_sets() -> dict[int, list[str]]:
    catalog = load_instacart()
    departments = sorted(set(catalog["department"]) - {"missing"})
    aisles = sorted(set(catalog["aisle"]) - {"missing"})
    synthetic = [f"{aisle} {grade}" for aisle in aisles for grade in GRADES][:1000]
    return {len(departments): departments, len(aisles): aisles, len(synthetic): synthetic}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs=3, default=[128, 128, 32], help="test texts for each label set")
    parser.add_argument("--work", default="benchmarks/work")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    texts = pd.read_csv("metrics/predictions.csv", keep_default_na=False)["text"]
    cases = []
    for (count, labels), rows in zip(sorted(label_sets().items()), args.rows):
        adapter = work / f"adapter_{count}_labels"
        shutil.rmtree(adapter, ignore_errors=True)
        shutil.copytree("models/adapter", adapter)
        write_json(adapter / "run.json", {**read_json(adapter / "run.json"), "labels": labels})
        source = work / f"texts_{rows}.csv"
        texts[:rows].to_frame().to_csv(source, index=False)
        figures = run_predict(source, work / f"predicted_{count}_labels.csv", ["--adapter", str(adapter), "--column", "text"])
        figures.update(labels=count, rows=rows)
        cases.append(figures)
        print(json.dumps(figures))
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
    result = {"benchmark": "label_count", "date": stamp, "machine": {"cpu": cpu_model(), "node": platform.node()},
              "libraries": provenance.library_versions(), "cases": cases}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"label_count_{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
