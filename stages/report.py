"""report: a Markdown report of the run, with plots, under metrics/."""

import argparse
from pathlib import Path

import pandas as pd

from finetune import param_schemas, params
from finetune.files import atomic_path, read_json
from finetune.report.reporting import build_report
from finetune.stage import run

PARAMS = tuple(param_schemas.SECTIONS)  # the report prints every param, so every section is its dependency
TASK_PARTS = tuple(param_schemas.TASK_PARTS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("metrics_dir", help="input: folder with eval.json, details.json, train.json, split.json, predictions.csv")
    parser.add_argument("adapter_dir", help="input: the adapter folder (its run.json holds provenance)")
    parser.add_argument("live_dir", help="input: DVCLive training curves")
    parser.add_argument("report", help="output: the Markdown report")
    parser.add_argument("image_dir", help="output: folder for the report's images")
    args = parser.parse_args()
    task, p = params.read_stage(PARAMS)

    metrics = Path(args.metrics_dir)
    text_args = dict(
        task={"name": task.name, "kind": task.kind, "params": params.task_as_dict(task, TASK_PARTS)},
        evaluation=read_json(metrics / "eval.json"), details=read_json(metrics / "details.json"),
        training=read_json(metrics / "train.json"), split_sizes=read_json(metrics / "split.json"),
        predictions=pd.read_csv(metrics / "predictions.csv", keep_default_na=False),
        run_info=read_json(Path(args.adapter_dir) / "run.json"),
        all_params={name: params.as_dict(section) for name, section in p.items()},
        live_dir=Path(args.live_dir), samples=p["report"].samples)
    with atomic_path(args.image_dir) as image_dir:
        text = build_report(image_dir=image_dir, **text_args)
    with atomic_path(args.report) as report:
        report.write_text(text, encoding="utf-8")
    print(f"report: {args.report}")


if __name__ == "__main__":
    run(main)
