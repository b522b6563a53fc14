"""The export stage's work: both merges measured against the adapter, the chosen one written, then GGUF files.

Every exported artifact is checked against the adapter it came from: each merged model predicts
the test split again and is compared with the adapter-on-4-bit predictions of `evaluate`; each
GGUF file is read back and its logits are compared with the merged model's.
"""

from __future__ import annotations

import shutil
import time
import typing
from pathlib import Path

import numpy as np
import pandas as pd

from finetune.deliver import card, gguf
from finetune.deliver.merge import merged_model, merged_run_info, save_merged
from finetune.deliver.trained import TrainedRun, check_base_present, check_weights, read_run
from finetune.files import atomic_path, read_json, read_jsonl
from finetune.model import base_model
from finetune.param_schemas import MERGE_INTO, ExportParams, Task


def merge_figures(run: TrainedRun, model, tokenizer, test: list[dict], adapter_answers: list[str], batch_size: int,
                  memory_gib: float, task: Task, name: str) -> dict:
    """How a merged model's test answers compare with the adapter's, and how good they are (by the task's kind)."""
    start = time.perf_counter()
    answers, quality = run.kind.test_answers(run, model, tokenizer, test, batch_size, memory_gib, task)
    agreement = float(np.mean([a == b for a, b in zip(answers, adapter_answers)]))
    print(f"export: merged into {name}: {len(test)} test rows answered in {time.perf_counter() - start:.1f} s")
    return {"agreement_with_adapter": round(agreement, 4), **quality, "rows": len(test)}


def compare_merges(run: TrainedRun, tokenizer, test: list[dict], adapter_answers: list[str], keep: str,
                   batch_size: int, memory_gib: float, task: Task) -> tuple[dict, object]:
    """Both merges measured; returns their figures and the merged model named by `keep`."""
    figures, kept = {}, None
    for into in typing.get_args(MERGE_INTO):
        model = merged_model(run, into)
        figures[into] = merge_figures(run, model, tokenizer, test, adapter_answers, batch_size, memory_gib, task,
                                      into)
        if into == keep:
            kept = model
        else:
            del model
    return figures, kept


def check_whole_model(run: TrainedRun, tokenizer, test: list[dict], answers: list[str], batch_size: int,
                      memory_gib: float, task: Task) -> tuple[dict, object]:
    """Full fine-tuning: the trained folder is the merged model already; it is checked against evaluate the same way."""
    model = base_model.load_model(str(run.folder), "main").eval()
    model.config.use_cache = True
    return {"none": merge_figures(run, model, tokenizer, test, answers, batch_size, memory_gib, task, "none")}, model


def copy_adapter(adapter: Path, dest: Path) -> None:
    """The adapter's files as train_qlora wrote them, to sit beside its card in the release folder."""
    shutil.copytree(adapter, dest, ignore=shutil.ignore_patterns("README.md"))


def gguf_files(merged: Path, dest: Path, types: list[str]) -> dict:
    """Each GGUF type converted from the merged folder by llama.cpp's converter, read back and compared."""
    figures = {}
    if not types:
        return figures
    for outtype, path in gguf.convert(merged, dest, tuple(types)).items():
        figures[outtype] = {"file": path.name, "mib": round(path.stat().st_size / 2**20, 1),
                            **gguf.check_readback(merged, path)}
    return figures


def release(split_dir: Path, adapter_dir: Path, metrics_dir: Path, release_dir: Path, task: Task, export: ExportParams,
            batch_size: int, memory_gib: float) -> dict:
    """Write `release_dir`: the adapter, the merged model and its GGUF files, each with its card; returns the figures
    of every check (metrics/export.json)."""
    trained = read_run(adapter_dir)
    check_weights(trained)
    check_base_present(trained)
    test = read_jsonl(split_dir / "test.jsonl")
    predictions = pd.read_csv(metrics_dir / "predictions.csv", keep_default_na=False)
    evaluation = read_json(metrics_dir / "eval.json")
    tokenizer = base_model.load_tokenizer(str(trained.folder), "main")
    answers = predictions["finetuned"].astype(str).tolist()
    if trained.is_whole_model:  # full fine-tuning: nothing to merge
        merges, model = check_whole_model(trained, tokenizer, test, answers, batch_size, memory_gib, task)
    else:
        merges, model = compare_merges(trained, tokenizer, test, answers, export.merge_into, batch_size, memory_gib,
                                       task)
    merged_into = "none" if trained.is_whole_model else export.merge_into
    figures = {"enabled": True, "merge": merges, "merged_into": merged_into}

    with atomic_path(release_dir) as release:
        if not trained.is_whole_model:
            copy_adapter(trained.folder, release / "adapter")
        merged_info = merged_run_info(trained, merged_into, model)
        save_merged(model, tokenizer, release / "merged", merged_info)
        why_not = gguf.cannot_hold(release / "merged") if export.gguf else None
        if why_not:
            print(f"export: no GGUF files: {why_not}")
            figures["gguf_not_made"] = why_not
        figures["gguf"] = {} if why_not else gguf_files(release / "merged", release / "gguf", export.gguf)
        cards = {**({} if trained.is_whole_model else {"adapter": trained.info}), "merged": merged_info,
                 **({"gguf": merged_info} if figures["gguf"] else {})}
        for artifact, info in cards.items():
            card.write_card(release / artifact, card.model_card(info, evaluation, artifact, about=task.card,
                                                                extra=figures))
    return figures
