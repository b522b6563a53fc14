"""train_qlora: fine-tune the base model by train.method (QLoRA, LoRA or every weight); write the result and its metrics.

A killed run resumes from its last checkpoint in `checkpoint_dir` on the next `dvc repro` (finetune/train/checkpoints.py).
With distributed.processes above 1 it runs again under accelerate launch; rank 0 alone writes (finetune/train/distributed.py).
"""

import argparse
import dataclasses
from pathlib import Path

from finetune import kinds, params, provenance
from finetune.errors import PipelineError
from finetune.files import copy_tree, read_jsonl, write_json
from finetune.model import base_model, methods
from finetune.stage import run
from finetune.train import distributed
from finetune.train.checkpoints import CheckpointCallback, Checkpoints, run_identity
from finetune.train.curves import curves
from finetune.train.training import save_trained, train_model

PARAMS = ("base_model", "quantization", "lora", "train", "distributed")
TASK_PARTS = ("data", "prompt", "train")  # data: run.json records the input field predict reads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("split_dir", help="input: folder with train.jsonl and validation.jsonl")
    parser.add_argument("adapter_dir", help="output: the PEFT adapter (a whole model for train.method full), tokenizer "
                                            "and run.json")
    parser.add_argument("metrics", help="output: training metrics JSON")
    parser.add_argument("live_dir", help="output: DVCLive training curves")
    parser.add_argument("checkpoint_dir", help="work folder: checkpoints of an unfinished run (not a DVC output)")
    parser.add_argument("timings", help="this run's wall time, speed and peak memory (JSON; not a DVC output: the same "
                                        "training gives the same outputs, whatever the clock said)")
    args = parser.parse_args()
    task, p = params.read_stage(PARAMS)
    if distributed.relaunch(p["distributed"]):
        return
    distributed.start()
    model_p, quant, train_p = p["base_model"], p["quantization"], p["train"]

    tokenizer = base_model.load_tokenizer(model_p.name, model_p.revision)
    split_files = [Path(args.split_dir) / f"{name}.jsonl" for name in ("train", "validation")]
    splits = {name: read_jsonl(path) for name, path in zip(("train", "validation"), split_files)}
    kind = kinds.of(task)
    labels = kind.labels(splits["train"])
    encoded = {name: kind.encode(tokenizer, rows, task, labels) for name, rows in splits.items()}
    run_info = {
        "task": {"name": task.name, **params.task_as_dict(task, TASK_PARTS)},
        "labels": labels,
        "params": {name: params.as_dict(section) for name, section in p.items()},
        "base_model": base_model.identity(model_p.name, model_p.revision),
        "data_sha256": provenance.data_hash(*split_files),
        "libraries": provenance.library_versions(),
    }
    checkpoints = Checkpoints(args.checkpoint_dir, run_identity(run_info))
    resume = distributed.from_main(checkpoints.start() if distributed.is_main() else None)
    if resume and distributed.is_main():
        print(f"train_qlora: resuming from step {resume[1]['step']} ({resume[0]}, "
              f"{resume[1]['training_s']:.0f} s of training kept)")
    saving = CheckpointCallback(checkpoints, train_p.checkpoint_minutes, train_p.keep_checkpoint,
                                trained_s=resume[1]["training_s"] if resume else 0.0)

    sharded = p["distributed"].strategy == "fsdp" and distributed.world_size() > 1
    model = methods.load_base(model_p.name, model_p.revision, train_p.method, quant, dense=False,  # dense-copied later
                              sharded=sharded, head=kind.model_head(run_info["task"], labels, tokenizer))
    live = lambda: curves(checkpoints.live_dir, resume=resume is not None)  # noqa: E731 (made once the run starts)
    try:
        trained, result, timings = train_model(model, tokenizer, encoded["train"], encoded["validation"], task.train, train_p,
                                      p["lora"], checkpoints.folder, callbacks=[live] if distributed.is_main() else [],
                                      saving=saving, resume_from=resume, base_folder=model_p.name)
    except PipelineError:
        if distributed.is_main():
            checkpoints.discard_work()  # a refused or diverged run leaves no curve behind; a checkpoint stays to resume
        raise
    if not distributed.is_main():
        return

    save_trained(trained, tokenizer, args.adapter_dir, {**run_info, "result": dataclasses.asdict(result)})
    copy_tree(checkpoints.live_dir, args.live_dir)
    write_json(args.metrics, dataclasses.asdict(result))
    write_json(args.timings, dataclasses.asdict(timings))
    checkpoints.finish(keep_last=train_p.keep_checkpoint)
    print(f"train_qlora: loss {result.final_loss}, {timings.tokens_per_s} tokens/s, {timings.runtime_s} s")


if __name__ == "__main__":
    run(main)
