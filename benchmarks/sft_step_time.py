"""CPU default: a training step under TRL's SFTTrainer (as train_qlora runs it) vs the plain transformers Trainer.

Both in one run, on the same model, batches and arguments: SmolLM2-135M from the embedded export,
4-bit then dense-copied as train_qlora loads it, a fresh LoRA adapter per case (same seed), the
split's first training rows, params.yaml's batch. The two trainers take turns (`--rounds` times
each), so a change in the machine's speed during the run falls on both alike; the figure is each
trainer's median step time over every round, the first steps of each round left out.

    python -m benchmarks.sft_step_time --steps 30 --rounds 3
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import platform
import statistics
import tempfile
from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments

from benchmarks.measure import StepClock
from finetune import kinds, params
from finetune.files import read_jsonl
from finetune.model import base_model, methods
from finetune.train.batching import AnswerOnlyCollator
from finetune.train.sft import build_trainer
from finetune.train.training import step_plan

WARMUP = 3  # steps of each round not counted (allocation, first-batch costs)


def one_round(case: str, examples: list[dict], tokenizer, steps: int) -> tuple[list[float], list[float]]:
    """Step times and logged losses of `steps` steps of `case` (sft or plain) on a fresh adapter."""
    task = params.read_task()
    train_p = params.replace(params.read("train"), logging_steps=1, checkpoint_minutes=0)
    lora, name = params.read("lora"), params.read("base_model").name
    model = methods.load_base(name, "main", "qlora", params.read("quantization"), dense=False)
    torch.manual_seed(0)
    trained = methods.trainable(model, "qlora", lora, False, name)
    rows = examples[: steps * task.train.batch_size]
    with tempfile.TemporaryDirectory() as work:
        clock = StepClock()
        plan = step_plan(trained.model, rows, task.train, train_p, lora)
        trainer = build_trainer(trained, tokenizer, rows, [], plan, train_p, lora, task.train.epochs, Path(work), [clock])
        if case == "plain":
            fields = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
            args = TrainingArguments(**{k: v for k, v in trainer.args.to_dict().items() if k in fields
                                        and k != "logging_dir"} | {"output_dir": work})
            trainer = Trainer(model=trained.model, args=args, train_dataset=rows, callbacks=[clock],
                              data_collator=AnswerOnlyCollator(tokenizer.pad_token_id))
        trainer.train()
    return clock.step_times()[WARMUP:], [h["loss"] for h in trainer.state.log_history if "loss" in h]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per trainer, taking turns")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    name = params.read("base_model").name
    tokenizer = base_model.load_tokenizer(name, "main")
    task = params.read_task()
    examples = kinds.of(task).encode(tokenizer, read_jsonl("data/split/train.jsonl"), task)
    times: dict[str, list[float]] = {"sft": [], "plain": []}
    losses: dict[str, list[float]] = {}
    for i in range(args.rounds):
        for case in ("sft", "plain") if i % 2 == 0 else ("plain", "sft"):
            t, loss = one_round(case, examples, tokenizer, args.steps)
            times[case] += t
            losses.setdefault(case, loss)
            print(f"round {i + 1} {case}: median step {statistics.median(t):.3f} s")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
    record = {
        "date": stamp, "command": f"python -m benchmarks.sft_step_time --steps {args.steps} --rounds {args.rounds}",
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, no GPU",
        "libraries": {n: importlib.metadata.version(n) for n in ("torch", "transformers", "trl", "peft")},
        "batch_size": params.read_task().train.batch_size,
        "median_step_s": {case: round(statistics.median(t), 4) for case, t in times.items()},
        "mean_step_s": {case: round(statistics.fmean(t), 4) for case, t in times.items()},
        "steps_timed": {case: len(t) for case, t in times.items()},
        "first_losses": losses,
        "largest_loss_difference": max(abs(a - b) for a, b in zip(losses["sft"], losses["plain"])),
    }
    record["sft_over_plain"] = round(record["median_step_s"]["sft"] / record["median_step_s"]["plain"], 3)
    out = Path(args.out) / f"sft_step_time_{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({k: record[k] for k in ("median_step_s", "sft_over_plain", "largest_loss_difference")}))
    print(out)


if __name__ == "__main__":
    main()
