"""Classification against the number of labels: `finetune predict` on 20, 133 and 1,000 labels, rows/s and peak memory,
by label scoring and by a classification head.

Each trained adapter (label scoring's and the head's) classifies the same test texts against three label sets: the
20 departments, the catalog's 133 aisles (Instacart's 134 less "missing", the size of BigBasket's sub_category) and
1,000 synthetic labels (each aisle with a grade word: longer, many sharing a prefix). For label scoring only the label
set in a copy of run.json changes; for the head, a copy's head gets one output per label (its trained rows for the 20
departments, drawn at random beyond), the adapter's LoRA weights as trained. So this measures what classifying costs,
not accuracy. Each case runs the real command in a fresh process that reports its peak resident memory. Run from
the repository root after `make repro`, with the head's adapter from `dvc exp run -S tasks.instacart.train.objective=head`
copied out of models/adapter:

    python -m benchmarks.label_count --adapters models/adapter benchmarks/work/head_adapter
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


def objective(adapter: Path) -> str:
    return read_json(adapter / "run.json")["task"]["train"].get("objective", "label_scoring")


def with_labels(adapter: Path, dest: Path, labels: list[str]) -> None:
    """A copy of `adapter` that classifies into `labels`: its run.json's label set, and for a head, a head of one
    output per label (the trained rows kept where the labels are the trained ones)."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(adapter, dest)
    info = read_json(adapter / "run.json")
    write_json(dest / "run.json", {**info, "labels": labels})
    if objective(adapter) != "head":
        return
    weights = load_file(dest / "adapter_model.safetensors")
    key = next(k for k in weights if k.endswith("score.weight"))
    if info["labels"] != labels:
        generator = torch.Generator().manual_seed(0)
        trained = weights[key]
        weights[key] = torch.randn(len(labels), trained.shape[1], generator=generator).to(trained.dtype) * 0.02
    save_file(weights, dest / "adapter_model.safetensors", metadata={"format": "pt"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", nargs="+", default=["models/adapter"], help="trained adapters, one per objective")
    parser.add_argument("--rows", type=int, nargs=3, default=[128, 128, 32],
                        help="test texts for each label set (label scoring; a head classifies 512 at each)")
    parser.add_argument("--head-rows", type=int, default=512)
    parser.add_argument("--work", default="benchmarks/work")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    texts = pd.read_csv("metrics/predictions.csv", keep_default_na=False)["text"]
    cases = []
    for adapter in map(Path, args.adapters):
        how = objective(adapter)
        for (count, labels), rows in zip(sorted(label_sets().items()), args.rows):
            rows = args.head_rows if how == "head" else rows
            copy = work / f"adapter_{how}_{count}_labels"
            with_labels(adapter, copy, labels)
            source = work / f"texts_{rows}.csv"
            pd.concat([texts] * (rows // len(texts) + 1))[:rows].to_frame().to_csv(source, index=False)
            figures = run_predict(source, work / f"predicted_{how}_{count}_labels.csv",
                                  ["--adapter", str(copy), "--column", "text"])
            figures.update(objective=how, labels=count, rows=rows)
            cases.append(figures)
            print(json.dumps(figures), flush=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
    result = {"benchmark": "label_count", "date": stamp, "machine": {"cpu": cpu_model(), "node": platform.node()},
              "libraries": provenance.library_versions(), "cases": cases}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"label_count_{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
