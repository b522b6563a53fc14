"""QLoRA training throughput at 7B on one GPU: the seeds' plain HF stack vs this project's train_qlora path.

Both paths train the same randomly initialised 7B-shaped model (built from `LlamaConfig()` /
`FalconConfig()`, whose defaults are the 7B shapes; speed does not depend on the weights' values),
LoRA r=16 alpha=32 on all linear layers, sequence at most 512.

- seeds:   the seed notebooks' stack (`benchmarks/seeds_stack.py`: nf4 + double quantisation, gradient
           checkpointing, paged 8-bit AdamW, every example padded to 512, loss on every real token), batch 8.
- project: `finetune.train.training.train_model` itself, as the train_qlora stage calls it on a GPU:
           `finetune.model.base_model.load_model`, params.yaml's lora and train sections (the batch grows to
           `train.gpu_batch_tokens`, checkpointing by size), dynamic padding with length-grouped
           batches, loss on the answers only. The Trainer is stopped after the timed steps.
           `project-liger*`: the same with Liger Kernel's fused RMSNorm, SwiGLU, RoPE and linear cross-entropy
           on the model (Llama only), applied through Liger's own API before training.
           `project-flce`: the project path as it is (compiled blocks) with only Liger's fused linear
           cross-entropy for the head and the loss (Llama only): the loss from chunks of the head's output, never
           the whole [tokens, vocabulary] logits. `project-offload`: the low-memory mode (checkpointing on) with
           each checkpointed layer's input held in pinned host memory (transformers' own `offload=True`:
           `save_on_cpu` around each layer's checkpoint, copies on the compute stream), at the task batch of 16;
           `project-offload-flce`: the same with the fused linear cross-entropy; `project-offload-streamed-flce`:
           the copies on a side stream, each layer's input fetched back one layer ahead in the backward
           (`StreamedOffload`; these changes are benchmarks/step_changes.py), with the fused linear cross-entropy.
           `project-cudagraphs`: the blocks compiled with `mode="reduce-overhead"`, static shapes (CUDA graphs
           replayed: the host launches a graph, not each kernel); `-flce`: with the fused linear cross-entropy.
- unsloth: Unsloth's `FastLanguageModel` on the same checkpoint (`benchmarks/unsloth_path.py`), in its own
           environment; `unsloth-offload`: with its offloaded activation checkpointing. Batches from
           `--unsloth-batches`.

Workloads (`benchmarks/workloads.py`; the token ids are random, the lengths and answer positions real):

- instacart: the Instacart training split (33,806 products) as train_qlora encodes it: the
             product-classification work of seeds 000 and 001, which ran it on Falcon-7B / Llama-2-7B.
- dialogue:  the 4,007 whole conversations of the embedded chitchat dataset in the plain
             `### Human: / ### Assistant:` format a 7B base model gets, cut at 512 tokens (mean 322).
- full512:   every example 512 tokens long, loss on every token: no padding for anyone to save.

`--packing-check` adds `benchmarks/packing_check.py`: the loss of the same examples packed and padded.
Every project case records each step's loss (`losses`); `loss_comparisons` sets each project path's beside the
path run first on the same model, workload and batch (the same seed, so the same examples and starting adapter).
Tokens/s counts real (not padding) tokens. Writes one JSON per run under the output folder and
prints a table. Usage:

    python -m benchmarks.qlora_throughput profile        # here: real lengths -> .bench/length_profiles.json
    python3 -m benchmarks.qlora_throughput run --models llama-7b --profiles .bench/length_profiles.json   # GPU
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
from pathlib import Path

import torch

from benchmarks.measure import MATMUL_CEILING_TFLOPS, StepClock, figures, free, mfu, patched
from benchmarks.packing_check import packing_check
from benchmarks.seeds_stack import seeds_measure, seeds_model
from benchmarks.step_changes import (compiled_with_cuda_graphs, offloaded_checkpointing, with_fused_cross_entropy,
                                     with_liger)
from benchmarks.unsloth_path import unsloth_measure
from benchmarks.workloads import SEQUENCE, describe, profile, stand_in_tokenizer, workload

LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "trl")


# ---------------------------------------------------------------- models (on the GPU machine)

def build_checkpoint(shape: str, folder: Path) -> int:
    """Save a random bf16 model of the given shape (once); returns its parameter count."""
    from transformers import AutoModelForCausalLM, FalconConfig, LlamaConfig

    config = {"llama-7b": LlamaConfig, "falcon-7b": FalconConfig}[shape]()
    with torch.device("meta"):
        n_params = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    if not (folder / "config.json").is_file():
        torch.manual_seed(0)
        with torch.device("cuda"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.save_pretrained(folder)
        del model
        free()
    return n_params


def profile_callback(profile_to: Path, warmup: int, steps: int):
    """A Trainer callback that writes a torch.profiler table of (up to 3 of) the timed steps."""
    from transformers import TrainerCallback

    class Profile(TrainerCallback):
        prof = None

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == warmup:
                from torch.profiler import ProfilerActivity, profile
                self.prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
                self.prof.__enter__()

        def on_step_end(self, args, state, control, **kwargs):
            if self.prof is not None and state.global_step == warmup + min(steps, 3):
                torch.cuda.synchronize()
                self.prof.__exit__(None, None, None)
                table = self.prof.key_averages().table(sort_by="cuda_time_total", row_limit=40, max_name_column_width=70)
                profile_to.parent.mkdir(parents=True, exist_ok=True)
                profile_to.write_text(table)
                print(table[:6000], flush=True)
                self.prof = None

    return Profile()


def counted_tokens(kwargs: dict) -> int:
    """Real tokens of one forward call: the padded batch's mask, or every token of a packed row (no padding)."""
    mask = kwargs.get("attention_mask")
    return int(mask.sum()) if mask is not None and mask.ndim == 2 else int(kwargs["input_ids"].numel())


PATH_TRAIN = {  # train settings each project path changes from params.yaml
    "project": {},
    "project-eager": {"compile": False},
    "project-low-memory": {"gradient_checkpointing": True},
    "project-padded": {"padding_free": False},
    "project-4k": {"gpu_batch_tokens": 4096},
    "project-8k": {"gpu_batch_tokens": 8192},
    # Liger's Triton kernels do not trace under torch.compile here (its RMSNorm casts a Python float), so eager
    "project-liger": {"compile": False},
    "project-liger-low-memory": {"gradient_checkpointing": True, "compile": False},
    "project-flce": {},  # only the head and loss change (with_fused_cross_entropy): compiled blocks as `project`
    "project-offload": {"gradient_checkpointing": True},
    "project-offload-flce": {"gradient_checkpointing": True},
    "project-offload-streamed-flce": {"gradient_checkpointing": True},
    "project-cudagraphs": {},  # the blocks compiled with mode="reduce-overhead" (compiled_with_cuda_graphs)
    "project-cudagraphs-flce": {},
}
PATH_TASK_BATCH = {  # the task's batch where a path changes it (else 8): the low-memory mode holds a step to it
    "project-offload": 16, "project-offload-flce": 16, "project-offload-streamed-flce": 16,
}
UNSLOTH_PATHS = {"unsloth": False, "unsloth-offload": True}  # path -> Unsloth's offloaded checkpointing


def project_measure(folder: Path, examples: list[dict], steps: int, warmup: int, path: str = "project",
                    profile_to: Path | None = None) -> dict:
    """train_model on the workload, as train_qlora runs it, stopped after `warmup + steps` steps."""
    import tempfile

    import contextlib

    from finetune import params
    from finetune.model import base_model, methods
    from finetune.param_schemas import TaskTrainParams
    from finetune.train import training
    from finetune.train.training import train_model

    # A fresh base model per workload, as train_qlora loads one: train_model freezes and wraps it.
    model = base_model.load_model(str(folder), "main", base_model.quantization_config(True, "nf4", True))
    if "-liger" in path:
        with_liger(model)
    if path.endswith("-flce"):
        with_fused_cross_entropy(model)
    real_tokens = []  # per forward call: the Trainer feeds the model the collator's batches
    model.register_forward_pre_hook(lambda module, args, kwargs: real_tokens.append(counted_tokens(kwargs)),
                                    with_kwargs=True)
    losses = []  # each forward call's loss, left on the GPU until training ends (reading it would sync the step)
    model.register_forward_hook(lambda module, args, output: losses.append(
        output["loss"].detach() if isinstance(output, dict) and output.get("loss") is not None else None))
    clock = StepClock(warmup=warmup, steps=steps)
    task_train = TaskTrainParams(epochs=1, batch_size=PATH_TASK_BATCH.get(path, 8), learning_rate=2e-4,
                                 max_length=SEQUENCE)
    lora = params.replace(params.read("lora"), r=16, alpha=32)
    train_p = params.replace(params.read("train"), **PATH_TRAIN[path])
    callbacks = [clock] + ([profile_callback(profile_to, warmup, steps)] if profile_to else [])
    offload = (patched(methods, "checkpointing_on", offloaded_checkpointing(streamed="-streamed" in path))
               if "-offload" in path else contextlib.nullcontext())
    graphs = (patched(training, "compile_blocks", compiled_with_cuda_graphs()) if "-cudagraphs" in path
              else contextlib.nullcontext())
    with tempfile.TemporaryDirectory() as work, offload, graphs:
        trained, result, timings = train_model(model, stand_in_tokenizer(), examples, [], task_train, train_p, lora,
                                               Path(work), callbacks=callbacks)
        peft_model = trained.model
    seconds, timed = clock.window()
    tokens = sum(real_tokens[warmup:warmup + timed])
    out = figures(result.batch_size, seconds, timed, tokens, None, result.gradient_checkpointing,
                  loss=result.final_loss, peak_gib=timings.peak_memory_gib)
    out.update(compiled=result.compiled, padding_free=result.padding_free, warmup_steps=warmup,
               warmup_s=clock.warmup_s(), step_times=[round(b - a, 3) for a, b in zip(clock.ends, clock.ends[1:])],
               learning_rate=result.learning_rate,
               losses=[None if x is None else round(float(x), 6) for x in losses[:warmup + timed]])
    del peft_model, model
    free()
    return out


def run(args) -> None:
    versions = {}
    for name in (*LIBRARIES, "liger-kernel"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:  # Liger travels only where its paths are measured
            pass
    profiles = json.loads(Path(args.profiles).read_text())
    rows, checks = [], []
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every case, so that a run cut short keeps what it measured
        result = {"date": stamp, "machine": torch.cuda.get_device_name(0), "sequence": SEQUENCE,
                  "matmul_ceiling_tflops": MATMUL_CEILING_TFLOPS, "libraries": versions,
                  "command": "python3 -m benchmarks.qlora_throughput run " + " ".join(args.argv),
                  "workloads": {name: describe(profiles[name]) for name in args.workloads if name in profiles},
                  "cases": rows, "packing_checks": checks, "loss_comparisons": loss_comparisons(rows)}
        (out / f"qlora_throughput_{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")

    for shape in args.models:
        folder = Path(args.work) / shape
        n_params = build_checkpoint(shape, folder)
        from transformers import AutoConfig
        vocab = AutoConfig.from_pretrained(folder).vocab_size
        data = {name: workload(name, profiles, vocab) for name in args.workloads}

        def record(result: dict, path: str, name: str) -> None:
            result.update(model=shape, path=path, workload=name, parameters=n_params,
                          mfu=mfu(result["tokens_per_s"], n_params))
            rows.append(result)
            print(json.dumps(result), flush=True)
            save()

        if "seeds" in args.paths:
            model = seeds_model(folder)
            for name in args.workloads:
                for batch in args.seeds_batches:
                    try:
                        record(seeds_measure(model, data[name], batch, args.steps, args.warmup), "seeds", name)
                    except torch.OutOfMemoryError:
                        rows.append({"model": shape, "path": "seeds", "workload": name, "batch": batch,
                                     "error": "out of memory"})
                    free()
            del model
            free()
        for path in [p for p in args.paths if p.startswith("project")]:
            for name in args.workloads:
                prof = Path(args.out) / f"profile_{shape}_{name}_{path}.txt" if args.profile else None
                try:
                    record(project_measure(folder, data[name], args.steps, args.warmup, path=path, profile_to=prof),
                           path, name)
                except Exception as error:  # one failing case does not lose the others
                    rows.append({"model": shape, "path": path, "workload": name, "error": repr(error)[:500]})
                    print(json.dumps(rows[-1]), flush=True)
                    save()
                    free()
        for path in [p for p in args.paths if p in UNSLOTH_PATHS]:
            for name in args.workloads:
                for batch in args.unsloth_batches.get(name, [16]):
                    try:
                        record(unsloth_measure(folder, data[name], batch, args.steps, args.warmup,
                                               UNSLOTH_PATHS[path]), path, name)
                    except Exception as error:  # out of memory at a batch, say: the next batch still runs
                        rows.append({"model": shape, "path": path, "workload": name, "batch": batch,
                                     "error": repr(error)[-800:]})
                        print(json.dumps(rows[-1]), flush=True)
                        save()
        if args.packing_check:
            checks.append({"model": shape, **packing_check(folder, data["instacart"] if "instacart" in data
                                                          else next(iter(data.values())))})
            print(json.dumps(checks[-1]), flush=True)
            save()
    save()
    print_table(rows)
    for c in loss_comparisons(rows):
        print(f"loss {c['model']} {c['workload']} batch {c['batch']}: {c['path']} against {c['reference']}, "
              f"first step {c['first_step_relative_difference']:.2e}, max over {c['steps']} steps "
              f"{c['max_relative_difference']:.2e}")


def loss_comparisons(rows: list[dict]) -> list[dict]:
    """Each project path's step losses beside those of the project path run first on the same model, workload and
    batch: the same seed, so the same examples in the same order and the same starting adapter. The first step's
    loss is computed before any update, so it compares the forward alone; later steps also carry the updates (the
    same only where the learning rates agree)."""
    out, first = [], {}
    for r in rows:
        if not str(r.get("path", "")).startswith("project") or not r.get("losses"):
            continue
        key = (r["model"], r["workload"], r["batch"])
        ref = first.setdefault(key, r)
        if ref is r:
            continue
        pairs = [(a, b) for a, b in zip(ref["losses"], r["losses"]) if a is not None and b is not None]
        if not pairs:
            continue
        relative = [abs(b - a) / abs(a) for a, b in pairs]
        out.append({"model": key[0], "workload": key[1], "batch": key[2], "reference": ref["path"], "path": r["path"],
                    "steps": len(pairs), "first_step_relative_difference": round(relative[0], 7),
                    "max_relative_difference": round(max(relative), 7),
                    "same_learning_rate": ref.get("learning_rate") == r.get("learning_rate")})
    return out


def print_table(rows: list[dict]) -> None:
    print(f"{'model':10} {'workload':10} {'path':18} {'batch':>5} {'tok/s':>9} {'x seeds':>7} {'peak GiB':>8} {'MFU':>6}")
    for r in rows:
        base = [s for s in rows if s["path"] == "seeds" and s["model"] == r["model"] and s["workload"] == r["workload"]
                and s.get("batch") == 8 and "tokens_per_s" in s]
        ratio = f"{r['tokens_per_s'] / base[0]['tokens_per_s']:.1f}" if base and "tokens_per_s" in r else "-"
        print(f"{r['model']:10} {r['workload']:10} {r['path']:18} {r.get('batch', '-'):>5} {r.get('tokens_per_s', 'error'):>9} "
              f"{ratio:>7} {r.get('peak_gib', '-'):>8} {r.get('mfu', '-'):>6}")


def main() -> None:
    import sys

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("profile", help="real lengths of each workload (needs the pipeline's data packages)")
    p.add_argument("--instacart-split", default=".bench/instacart_all", help="from `instacart_smollm2 prepare`")
    p.add_argument("--out", default=".bench/length_profiles.json")
    p = sub.add_parser("run", help="measure (on the GPU machine)")
    p.add_argument("--models", nargs="+", default=["llama-7b", "falcon-7b"])
    p.add_argument("--workloads", nargs="+", default=["instacart", "dialogue", "full512"])
    p.add_argument("--paths", nargs="+", default=["seeds", "project"], choices=["seeds", *PATH_TRAIN, *UNSLOTH_PATHS],
                   help="project-eager: train.compile off; project-low-memory: train.gradient_checkpointing true; "
                        "project-padded: train.padding_free false; "
                        "project-4k / project-8k: train.gpu_batch_tokens 4096 / 8192; project-liger*: with Liger "
                        "Kernel's fused layers; project-flce: only Liger's fused linear cross-entropy, compiled; "
                        "project-offload*: the low-memory mode with the checkpointed inputs in pinned host memory, "
                        "task batch 16; project-cudagraphs*: the compiled blocks replayed as CUDA graphs; unsloth, unsloth-offload: Unsloth (benchmarks/unsloth_path.py)")
    p.add_argument("--unsloth-batches", type=json.loads, default={"full512": [16], "instacart": [256]},
                   help='Unsloth\'s padded batches per workload, as JSON: {"full512": [16, 32]}')
    p.add_argument("--packing-check", action="store_true",
                   help="the loss of the same examples packed and padded, on the model in 4-bit (bf16 compute)")
    p.add_argument("--profile", action="store_true", help="write a torch.profiler table of 3 timed project steps")
    p.add_argument("--seeds-batches", nargs="+", type=int, default=[8])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=3, help="untimed first steps (torch.compile compiles in the first)")
    p.add_argument("--profiles", default=".bench/length_profiles.json")
    p.add_argument("--work", default="/root/bench_models")
    p.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    args.argv = sys.argv[2:]
    if args.command == "profile":
        profile(Path(args.out), Path(args.instacart_split))
    else:
        run(args)


if __name__ == "__main__":
    main()
