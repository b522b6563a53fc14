"""`finetune predict` on catalog products no split used, measured as a user runs it: rows/s and peak memory.

Each case is the real command in a fresh process (peak resident memory from the kernel, as `time -v`
reports it), over the first N products of `data/examples.jsonl` that are in no split file, written
as a CSV with the catalog's own `product` column. A last case predicts the test split's texts and
compares the labels with the `finetuned` column of `metrics/predictions.csv`. Run from the repository
root after `make repro`:

    python -m benchmarks.predict_catalog --rows 1000 10000
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
from pathlib import Path

import pandas as pd

from benchmarks.catalog import run_predict, unused_products
from benchmarks.measure import RESULTS, cpu_model
from finetune import provenance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1000, 10000], help="input sizes, smallest first")
    parser.add_argument("--work", default="benchmarks/work", help="folder for the inputs and outputs")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cases = []
    for n in sorted(args.rows):
        products = unused_products(n)
        source, dest = work / f"unused_{n}.csv", work / f"unused_{n}_predicted.csv"
        products[["product"]].to_csv(source, index=False)
        figures = run_predict(source, dest, [])
        out = pd.read_csv(dest)
        figures.update(rows=n, rows_written=len(out), ok=int((out["status"] == "ok").sum()),
                       accuracy_vs_catalog=round(float((out["label"] == products["department"]).mean()), 4))
        cases.append(figures)
        print(json.dumps(figures))

    test = pd.read_csv("metrics/predictions.csv", keep_default_na=False)
    source, dest = work / "test_texts.csv", work / "test_predicted.csv"
    test[["text"]].to_csv(source, index=False)
    figures = run_predict(source, dest, ["--column", "text"])
    out = pd.read_csv(dest, keep_default_na=False)
    reproduction = {**figures, "rows": len(test), "identical_to_evaluate": int((out["label"] == test["finetuned"]).sum())}
    print(json.dumps(reproduction))

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
    result = {"benchmark": "predict_catalog", "date": stamp, "machine": {"cpu": cpu_model(), "node": platform.node()},
              "libraries": provenance.library_versions(), "unused_products": cases, "test_split": reproduction}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"predict_catalog_{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
