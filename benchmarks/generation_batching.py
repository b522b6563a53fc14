"""Batched generation (the evaluate stage) vs the seeds' one-prompt-at-a-time `pipeline("text-generation")` loop.

Both answer the same chitchat test prompts greedily with the same model object (SmolLM2-135M-Instruct,
NF4 weights dequantized once as the evaluate stage does on CPU), up to the same number of new tokens,
stopping at the end-of-turn token. Run from the repository root after `make setup`:

    python -m benchmarks.generation_batching --prompts 200
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

import torch
from transformers import pipeline

from finetune import provenance
from finetune.data.dialogues import build_dialogues
from finetune.data.sources import load_source
from finetune.data.splits import split_conversations
from finetune.evaluate.generation import generate
from finetune.model import base_model
from finetune.params import read_task
from finetune.text.chat import conversation_prompt_ids

RESULTS = Path(__file__).parent / "results"


def chitchat_test_conversations(n: int):
    """The first `n` test prompts of the chitchat task as params.yaml defines it."""
    task = read_task(name="chitchat")
    table, origin = load_source(task.data.source)
    examples, _ = build_dialogues(table, origin, task.data)
    test = split_conversations(examples, task.split.validation_fraction, task.split.test_fraction,
                               {"train": None, "validation": None, "test": None}, task.split.seed)["test"]
    return test["messages"].tolist()[:n], task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64, help="as evaluate.batch_size in params.yaml")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()

    conversations, task = chitchat_test_conversations(args.prompts)
    name = "models/base/smollm2-135m-instruct"
    tokenizer = base_model.load_tokenizer(name, "main")
    model = base_model.dense_copy(base_model.load_model(name, "main", base_model.quantization_config(True, "nf4", True)))
    model.eval()
    prompts = [conversation_prompt_ids(tokenizer, m[:-1], task.prompt.system, task.prompt.chat_template,
                                       task.train.max_length)
               for m in conversations]

    start = time.perf_counter()
    batched = generate(model, tokenizer, prompts, args.batch_size, args.max_new_tokens, desc="batched")
    batched_s = time.perf_counter() - start

    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    texts = [tokenizer.decode(p) for p in prompts]
    start = time.perf_counter()
    looped = []
    with torch.no_grad():
        for text in texts:  # the seed notebooks' evaluation loop
            out = generator(text, max_new_tokens=args.max_new_tokens, do_sample=False, return_full_text=False,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
            looped.append(out[0]["generated_text"].strip())
    looped_s = time.perf_counter() - start

    same = sum(a == b for a, b in zip(batched, looped))
    result = {
        "benchmark": "generation_batching",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}, no GPU"
        if not torch.cuda.is_available() else torch.cuda.get_device_name(),
        "libraries": provenance.library_versions(),
        "command": f"python -m benchmarks.generation_batching --prompts {args.prompts} --batch-size {args.batch_size} "
                   f"--max-new-tokens {args.max_new_tokens}",
        "prompts": len(prompts), "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
        "pipeline_loop_s": round(looped_s, 1), "batched_s": round(batched_s, 1),
        "speedup": round(looped_s / batched_s, 2),
        "identical_answers": same,
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"generation_batching_{result['date'][:19].replace(':', '')}Z.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"| prompts | pipeline loop s | batched s | speed-up | identical answers |\n|---|---|---|---|---|\n"
          f"| {len(prompts)} | {looped_s:.1f} | {batched_s:.1f} | {looped_s / batched_s:.1f}x | {same}/{len(prompts)} |")
    print(path)


if __name__ == "__main__":
    main()
