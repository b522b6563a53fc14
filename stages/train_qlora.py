"""train_qlora: fine-tune a LoRA adapter on the 4-bit base model; write the adapter and training metrics."""

import argparse
import dataclasses
import tempfile
from pathlib import Path

from dvclive import Live
from transformers.integrations import DVCLiveCallback

from finetune import base_model, params, provenance
from finetune.files import read_jsonl, write_json
from finetune.stage import run
from finetune.training import encode_split, save_adapter, train_adapter

PARAMS = ("base_model", "quantization", "lora", "train")
TASK_PARTS = ("data", "prompt", "train")  # data: run.json records the input field predict reads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("split_dir", help="input: folder with train.jsonl and validation.jsonl")
    parser.add_argument("adapter_dir", help="output: the PEFT adapter, tokenizer and run.json")
    parser.add_argument("metrics", help="output: training metrics JSON")
    parser.add_argument("live_dir", help="output: DVCLive training curves")
    args = parser.parse_args()
    task, p = params.read_stage(PARAMS)
    model_p, quant = p["base_model"], p["quantization"]

    tokenizer = base_model.load_tokenizer(model_p.name, model_p.revision)
    splits = {name: read_jsonl(Path(args.split_dir) / f"{name}.jsonl") for name in ("train", "validation")}
    encoded = {name: encode_split(tokenizer, rows, task) for name, rows in splits.items()}
    model = base_model.load_model(model_p.name, model_p.revision,
                                  base_model.quantization_config(quant.load_in_4bit, quant.quant_type, quant.double_quant))
    model = base_model.dense_cpu_copy(model)  # CPU only: the same NF4 weights, dequantized once instead of every step
    live = Live(dir=args.live_dir, dvcyaml=False, save_dvc_exp=False)
    with tempfile.TemporaryDirectory() as work_dir:
        model, result = train_adapter(model, tokenizer, encoded["train"], encoded["validation"], task.train,
                                      p["train"], p["lora"], Path(work_dir), callbacks=[DVCLiveCallback(live=live)])
    live.end()

    run_info = {
        "task": {"name": task.name, **params.task_as_dict(task, TASK_PARTS)},
        "labels": None if task.is_generation else sorted({row["label"] for row in splits["train"]}),
        "params": {name: params.as_dict(section) for name, section in p.items()},
        "base_model": base_model.identity(model_p.name, model_p.revision),
        "data_sha256": provenance.data_hash(*(Path(args.split_dir) / f"{n}.jsonl" for n in ("train", "validation"))),
        "libraries": provenance.library_versions(),
        "result": dataclasses.asdict(result),
    }
    save_adapter(model, tokenizer, args.adapter_dir, run_info)
    write_json(args.metrics, dataclasses.asdict(result))
    print(f"train_qlora: loss {result.final_loss}, {result.tokens_per_s} tokens/s, {result.runtime_s} s")


if __name__ == "__main__":
    run(main)
