"""The pipeline on a BigBasket-schema catalog with 133 labels: prepare -> split -> train_qlora -> evaluate, for real.

BigBasket's own file is not here, so the Instacart catalog is written in BigBasket's columns
(product, category = department, sub_category = aisle: 133 aisles without "missing"), and the
`bigbasket` task is run with `target_field: sub_category` in a fresh clone of this repository (its
committed code), through `dvc repro evaluate`, once per training objective (label scoring, and a
classification head). Split sizes are cut so each run takes minutes. Run from the repository root
after `make setup`:

    python -m benchmarks.bigbasket_aisles --max-train 1330 --max-test 266 --objectives label_scoring head
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from benchmarks.measure import RESULTS, cpu_model
from finetune import provenance
from finetune.data.sources import load_instacart

ROOT = Path(__file__).resolve().parents[1]


def run_objective(objective: str, max_train: int, max_test: int, work: Path) -> dict:
    """One objective's run in a fresh clone under `work`: its split, metrics, training figures and time."""
    shutil.rmtree(work, ignore_errors=True)
    subprocess.run(["git", "clone", "-q", str(ROOT), str(work)], check=True)
    shutil.copytree(ROOT / "models/base", work / "models/base")
    catalog = load_instacart()
    catalog = catalog[catalog["aisle"] != "missing"]
    table = catalog.rename(columns={"department": "category", "aisle": "sub_category"})[["product", "category", "sub_category"]]
    table.to_csv(work / "data/raw/bigbasket.csv", index=False)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["task"] = "bigbasket"
    task = params["tasks"]["bigbasket"]
    task["data"]["target_field"] = "sub_category"
    task["split"].update(max_train=max_train, max_test=max_test)
    task["train"]["objective"] = objective
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    start = time.perf_counter()
    proc = subprocess.run(["dvc", "repro", "evaluate"], cwd=work, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    (work / "repro.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"dvc repro failed ({proc.returncode}); see {work / 'repro.log'}")
    timings = work / "metrics/timings"
    return {"objective": objective, "labels": len(json.loads((work / "models/adapter/run.json").read_text())["labels"]),
            "split": json.loads((work / "metrics/split.json").read_text()),
            "eval": json.loads((work / "metrics/eval.json").read_text()),
            "train": {**json.loads((work / "metrics/train.json").read_text()),
                      **json.loads((timings / "train_qlora.json").read_text())},
            "evaluate_seconds": json.loads((timings / "evaluate.json").read_text())["seconds"],
            "repro_seconds": round(seconds, 1),
            "evaluate_line": next(line for line in proc.stdout.splitlines() if line.startswith("evaluate:"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-train", type=int, default=1330)
    parser.add_argument("--max-test", type=int, default=266)
    parser.add_argument("--objectives", nargs="+", default=["label_scoring", "head"])
    parser.add_argument("--work", default="benchmarks/work/bigbasket_aisles")
    args = parser.parse_args()
    runs = []
    for objective in args.objectives:
        runs.append(run_objective(objective, args.max_train, args.max_test, Path(args.work).resolve() / objective))
        print(json.dumps(runs[-1], indent=2), flush=True)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # the largest stage process
    result = {"benchmark": "bigbasket_aisles", "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ"),
              "machine": {"cpu": cpu_model(), "node": platform.node()}, "libraries": provenance.library_versions(),
              "runs": runs, "peak_rss_gib_largest_stage": round(peak, 2)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"bigbasket_aisles_{result['date']}.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
