"""evaluate: base vs fine-tuned vs classic baseline on the test split; metrics, per-class scores, predictions."""

import argparse
from pathlib import Path

import pandas as pd

from finetune import base_model, params
from finetune.adapters import load_adapter
from finetune.evaluation import evaluate_all, headline
from finetune.files import read_jsonl, write_csv, write_json
from finetune.stage import run

PARAMS = ("base_model", "prompt", "quantization", "evaluate", "baseline")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("split_dir", help="input: folder with train.jsonl and test.jsonl")
    parser.add_argument("adapter_dir", help="input: the adapter from train_qlora")
    parser.add_argument("metrics", help="output: accuracy and F1 per model (metrics JSON)")
    parser.add_argument("per_class", help="output: per-class precision / recall / F1 per model")
    parser.add_argument("predictions", help="output: one row per test example (CSV)")
    args = parser.parse_args()
    p = params.read_all(PARAMS)
    model_p, quant = p["base_model"], p["quantization"]

    train = pd.DataFrame(read_jsonl(Path(args.split_dir) / "train.jsonl"))
    test = pd.DataFrame(read_jsonl(Path(args.split_dir) / "test.jsonl"))
    tokenizer = base_model.load_tokenizer(model_p.name, model_p.revision)
    model = base_model.load_model(model_p.name, model_p.revision,
                                  base_model.quantization_config(quant.load_in_4bit, quant.quant_type, quant.double_quant))
    model = load_adapter(model, args.adapter_dir)
    results, predictions = evaluate_all(model, tokenizer, train, test, p["prompt"], p["evaluate"], p["baseline"])

    write_json(args.metrics, headline(results))
    write_json(args.per_class, {name: m["per_class"] for name, m in results.items()})
    write_csv(args.predictions, predictions)
    print("evaluate: " + ", ".join(f"{name} accuracy {m['accuracy']}" for name, m in results.items()))


if __name__ == "__main__":
    run(main)
