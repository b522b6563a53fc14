"""Training recipes for the CPU default, judged on products the pipeline never uses (never on its test split).

The embedded default must train in about 6.5 of its 10 minutes on a 2-core CPU. This script trains
one model with the train_qlora stage's own code (`encode_split`, `methods.load_base`, `train_model`) under a changed recipe, and scores it with the evaluate stage's `label_scores` on a
held-out set: 1,000 of the prepared products that are in none of the train, validation and test
splits (seed 1234). Extra training rows (`--n-train` beyond the split's) come from the rest of
those unused products, so the held-out set stays untouched.

    python -m benchmarks.cpu_recipes run ref                                   # params.yaml as it is
    python -m benchmarks.cpu_recipes run bs32_lr2e-3 --batch-size 32 --lr 2e-3
    python -m benchmarks.cpu_recipes run top15 --top-layers 15                 # LoRA on the top 15 layers only
    python -m benchmarks.cpu_recipes run full --set train.method=full --lr 1e-4  # every weight trained
    python -m benchmarks.cpu_recipes run pissa --set train.method=lora --set lora.init=pissa
    python -m benchmarks.cpu_recipes table ref bs32_lr2e-3 ...                 # Markdown, from .bench/cpu_recipes/

Needs `dvc repro` first (data/examples.jsonl, data/split/, the base model). One JSON per run under
.bench/cpu_recipes/; the figures kept are in benchmarks/results/. Step times are recorded one by
one, so a stalled machine can be told from a slow recipe.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.measure import StepClock, patched
from finetune import kinds, params
from finetune.evaluate.scoring import label_scores, predict_by_scoring
from finetune.files import read_jsonl
from finetune.model import base_model, methods
from finetune.text.prompts import render_prompt
from finetune.train import training

DATA = Path("data")
OUT = Path(".bench/cpu_recipes")
HELDOUT, HELDOUT_SEED = 1000, 1234


def unused_products() -> tuple[list[dict], list[dict]]:
    """(held-out set, pool of extra training rows): prepared examples that no split uses, shuffled."""
    used = {r["id"] for name in ("train", "validation", "test") for r in read_jsonl(DATA / "split" / f"{name}.jsonl")}
    unused = [r for r in read_jsonl(DATA / "examples.jsonl") if r["id"] not in used]
    random.Random(HELDOUT_SEED).shuffle(unused)
    return unused[:HELDOUT], unused[HELDOUT:]


def top_layers_only(k: int) -> contextlib.AbstractContextManager:
    """A context in which LoRA goes on the last k decoder layers only: backward then stops k layers down.

    The library has no param for PEFT's `layers_to_transform`, so `methods.lora_config` is swapped inside it.
    """
    from peft import LoraConfig

    original = methods.lora_config

    def config(model, lora):
        c = original(model, lora)
        n = model.config.num_hidden_layers
        return LoraConfig(r=c.r, lora_alpha=c.lora_alpha, lora_dropout=c.lora_dropout, bias="none",
                          target_modules=sorted(c.target_modules), task_type="CAUSAL_LM",
                          use_dora=c.use_dora, use_rslora=c.use_rslora, init_lora_weights=c.init_lora_weights,
                          layers_to_transform=list(range(n - k, n)), layers_pattern="layers")

    return patched(methods, "lora_config", config)


def overrides(settings: list[str]) -> dict[str, dict]:
    """`--set train.method=full --set lora.init=pissa`: {section: {key: value}}, values read as YAML."""
    import yaml

    changes: dict[str, dict] = {}
    for setting in settings:
        key, _, value = setting.partition("=")
        section, _, name = key.partition(".")
        changes.setdefault(section, {})[name] = yaml.safe_load(value)
    return changes


def run(args) -> None:
    task, p = params.read_stage(("base_model", "quantization", "lora", "train"))
    for section, changes in overrides(args.set).items():
        if section not in ("lora", "train"):
            raise SystemExit(f"--set {section}.*: only lora.* and train.* can be set here")
        p[section] = params.replace(p[section], **changes)
    task_train = task.train
    if args.batch_size:
        task_train = params.replace(task_train, batch_size=args.batch_size)
    if args.lr:
        task_train = params.replace(task_train, learning_rate=args.lr)
    prompt = params.replace(task.prompt, template=args.template.replace("\\n", "\n")) if args.template else task.prompt
    task = dataclasses.replace(task, prompt=prompt, train=task_train)

    heldout, pool = unused_products()
    train_rows = read_jsonl(DATA / "split" / "train.jsonl")
    labels = sorted({r["label"] for r in train_rows})
    n = args.n_train or len(train_rows)
    train_rows = (train_rows + pool)[:n]
    model_p, quant = p["base_model"], p["quantization"]
    tokenizer = base_model.load_tokenizer(model_p.name, model_p.revision)
    encoded = {name: kinds.of(task).encode(tokenizer, rows, task)
               for name, rows in (("train", train_rows), ("validation", read_jsonl(DATA / "split" / "validation.jsonl")))}
    model = methods.load_base(model_p.name, model_p.revision, p["train"].method, quant, dense=False)
    clock = StepClock()
    top_layers = top_layers_only(args.top_layers) if args.top_layers else contextlib.nullcontext()
    with tempfile.TemporaryDirectory() as work, top_layers:
        trained, result, _ = training.train_model(model, tokenizer, encoded["train"], encoded["validation"], task.train,
                                               p["train"], p["lora"], Path(work), callbacks=[clock],
                                               base_folder=model_p.name)
    model = trained.model
    steps = clock.step_times()
    median = sorted(steps)[len(steps) // 2]
    start = time.perf_counter()
    prompts = [render_prompt(task.prompt.template, r["text"]) for r in heldout]
    scores = label_scores(model, tokenizer, prompts, labels, task.prompt.answer_prefix, 64, desc="held-out")
    predicted = predict_by_scoring(scores, labels)
    record = {
        "name": args.name, "command": "python -m benchmarks.cpu_recipes " + " ".join(sys.argv[1:]),
        "template": task.prompt.template, "rows": len(train_rows), "top_layers": args.top_layers,
        "method": p["train"].method, "lora": params.as_dict(p["lora"]), "epochs": task.train.epochs,
        "batch_size": task.train.batch_size, "learning_rate": task.train.learning_rate,
        "tokens_per_example": round(result.trained_tokens / len(train_rows), 2),
        "median_step_s": round(median, 3),
        "stalled_s": round(sum(t - median for t in steps if t > 3 * median), 1),
        "heldout": len(heldout), "heldout_accuracy": round(sum(a == r["label"] for a, r in zip(predicted, heldout)) / len(heldout), 4),
        "heldout_scoring_s": round(time.perf_counter() - start, 1),
        "train": dataclasses.asdict(result), "step_times": [round(t, 3) for t in steps],
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{args.name}.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"{args.name}: held-out accuracy {record['heldout_accuracy']}, training {result.runtime_s} s "
          f"({record['stalled_s']} s of it stalled), {result.steps} steps")


def table(names: list[str]) -> None:
    print("| run | method | rows | batch | lr | tokens/example | steps | training s | stalled s | held-out accuracy | command |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        r = json.loads((OUT / f"{name}.json").read_text())
        t = r["train"]
        print(f"| {name} | {r.get('method', 'qlora')} | {r['rows']} | {r['batch_size']} | {r['learning_rate']:g} | {r['tokens_per_example']} | "
              f"{t['steps']} | {t['runtime_s']} | {r['stalled_s']} | {r['heldout_accuracy']} | `{r['command']}` |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("run")
    p.add_argument("name")
    p.add_argument("--n-train", type=int, default=None, help="training rows: the split's, then unused products")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--template", default=None, help="prompt template ('\\n' for a newline)")
    p.add_argument("--top-layers", type=int, default=0, help="LoRA on the last K layers only (0: all)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a lora.* or train.* param, e.g. --set train.method=full --set lora.init=pissa")
    p = sub.add_parser("table")
    p.add_argument("names", nargs="+")
    args = parser.parse_args()
    run(args) if args.action == "run" else table(args.names)


if __name__ == "__main__":
    main()
