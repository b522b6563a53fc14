"""`finetune predict` as a user runs it on the catalog: products no split used, and the command in a fresh process."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from finetune.files import read_jsonl


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
