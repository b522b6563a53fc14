"""evaluate: base vs fine-tuned (vs a classic baseline for labels) on the test split; metrics, details, predictions.

With distributed.processes above 1 the processes share the test batches (finetune/train/distributed.py): the same results."""

import argparse
from pathlib import Path

from finetune import kinds, param_schemas, params
from finetune.files import read_jsonl, write_csv, write_json
from finetune.model import base_model, methods
from finetune.stage import run
from finetune.train import distributed

PARAMS = ("base_model", "quantization", "train.method", "evaluate", "baseline", "distributed.processes",
          "distributed.machines")
TASK_PARTS = ("prompt", "train", "evaluate")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("split_dir", help="input: folder with train.jsonl and test.jsonl")
    parser.add_argument("adapter_dir", help="input: the adapter (or whole model) from train_qlora")
    parser.add_argument("metrics", help="output: headline metrics per model (metrics JSON)")
    parser.add_argument("details", help="output: per-class scores, or all text metrics and the probe answers")
    parser.add_argument("predictions", help="output: one row per test example (CSV)")
    parser.add_argument("confusion", help="output: actual vs predicted label per model (CSV, the confusion plots)")
    parser.add_argument("timings", help="each model's seconds (JSON; not a DVC output: the same evaluation gives the "
                                        "same outputs, whatever the clock said)")
    args = parser.parse_args()
    task, p = params.read_stage(PARAMS)
    launch = param_schemas.DistributedParams(processes=p["distributed.processes"],
                                             machines=p["distributed.machines"],
                                             strategy="ddp")  # every process holds the whole model; the batches are shared
    if distributed.relaunch(launch):
        return
    distributed.start()
    model_p, quant = p["base_model"], p["quantization"]
    batch_size = params.evaluation_batch_size(p["evaluate"].batch_size, on_gpu=base_model.device().type == "cuda")

    kind = kinds.of(task)
    train, test = (read_jsonl(Path(args.split_dir) / f"{name}.jsonl") for name in ("train", "test"))
    tokenizer = base_model.load_tokenizer(model_p.name, model_p.revision)
    base = lambda head=None: methods.load_base(model_p.name, model_p.revision, p["train.method"], quant,  # noqa: E731
                                               head=head)
    seconds = {}
    results, details, predictions = kind.evaluate(args.adapter_dir, base, tokenizer, train, test, task, batch_size,
                                                  p["evaluate"], p["baseline"], clock=seconds)

    if not distributed.is_main():
        return
    summary = {name: {key: metrics[key] for key, _ in kind.metrics} for name, metrics in results.items()}
    write_json(args.metrics, summary)
    write_json(args.details, details)
    write_csv(args.predictions, predictions)
    write_csv(args.confusion, kind.confusion_rows(predictions))
    write_json(args.timings, {"seconds": seconds, "test_rows": len(test)})
    print("evaluate: " + "; ".join(f"{name} " + ", ".join(f"{k} {v}" for k, v in m.items()) for name, m in summary.items()))


if __name__ == "__main__":
    run(main)
