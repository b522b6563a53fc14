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
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from finetune import provenance
from finetune.files import read_jsonl

RESULTS = Path(__file__).parent / "results"


def unused_products(n: int) -> pd.DataFrame:
    used = {row["id"] for name in ("train", "validation", "test") for row in read_jsonl(f"data/split/{name}.jsonl")}
    rows = [row for row in read_jsonl("data/examples.jsonl") if row["id"] not in used][:n]
    if len(rows) < n:
        raise SystemExit(f"only {len(rows)} unused products")
    return pd.DataFrame({"product": [r["text"] for r in rows], "department": [r["label"] for r in rows]})


# The command as the console script runs it, reporting its own peak resident memory as it exits.
CHILD = """import resource, sys
from finetune.cli import main
try:
    main(sys.argv[1:])
finally:
    print("PEAK_RSS_KIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""


def run_predict(source: Path, dest: Path, extra: list[str]) -> dict:
    """`finetune predict` in a fresh process: wall time (model loading included) and its peak resident memory."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, "predict", str(source), str(dest), *extra],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    kib = next(int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("PEAK_RSS_KIB"))
    said = next(line for line in proc.stdout.splitlines() if line.startswith("predict: "))
    rows_per_s = float(said.split(" s (")[1].split(" rows/s")[0])  # predicting only, after the model has loaded
    return {"seconds_with_loading": round(seconds, 1), "rows_per_s": rows_per_s, "peak_rss_gib": round(kib / 2**20, 3)}


def cpu_model() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?")


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
