"""Label scoring under llama.cpp itself: the exported q8_0 GGUF classifies the test split as `evaluate` does.

For each row of the predictions CSV the prompt is rendered and every allowed label is scored by the sum of
its answer tokens' log-probabilities (finetune.evaluate.scoring's label tokens: answer prefix + label, plus the end
token only when one label's tokens start another's); the argmax is compared with the pipeline's fine-tuned
predictions and with the truth. A few rows go into one llama.cpp decode: each prompt's tokens belong to one
sequence per label and each label's tokens to its own, so a row's labels share its prompt's cache (as
llama.cpp's perplexity tool scores HellaSwag endings). Needs llama-cpp-python==0.3.36, which builds
llama.cpp (several minutes on 2 cores): `pip install .venv/share/llama-cpp-python/llama_cpp_python-0.3.36.tar.gz`
(the sdist `make setup` downloads). Run from the repository root after `dvc repro export`:

    python -m benchmarks.llama_cpp_labels
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import subprocess
import time
from importlib.metadata import version
from pathlib import Path

try:
    import llama_cpp
except ModuleNotFoundError:  # built from the sdist `make setup` downloads: see above
    llama_cpp = None
import numpy as np
import pandas as pd

from finetune import provenance
from finetune.evaluate.scoring import label_token_ids
from finetune.files import read_jsonl
from finetune.text.prompts import prompt_ids, render_prompt

RESULTS = Path(__file__).parent / "results"


def load_model(gguf: Path, extra_buffers: bool):
    """The GGUF's weights in llama.cpp, on the CPU."""
    llama_cpp.llama_backend_init()
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # the package sends llama.cpp's load log here
    params = llama_cpp.llama_model_default_params()
    # llama.cpp's AMX q8_0 matmul segfaults on this project's Xeon (ggml-org/llama.cpp#20824, open)
    params.use_extra_bufts = extra_buffers
    model = llama_cpp.llama_model_load_from_file(str(gguf).encode(), params)
    if not model:
        raise SystemExit(f"llama.cpp could not load {gguf}")
    return model


class LlamaCppTokenizer:
    """The GGUF's own tokenizer, with the two things finetune.text.prompts and finetune.evaluate.scoring ask of one."""

    def __init__(self, model):
        self.vocab = llama_cpp.llama_model_get_vocab(model)
        self.eos_token_id = llama_cpp.llama_vocab_eos(self.vocab)

    def __call__(self, text: str, add_special_tokens: bool) -> dict:
        data = text.encode("utf-8")
        room = len(data) + 2
        while True:  # add_special adds the start token only where the GGUF asks for one, as transformers does
            ids = (llama_cpp.llama_token * room)()
            n = llama_cpp.llama_tokenize(self.vocab, data, len(data), ids, room, add_special_tokens, False)
            if n >= 0:
                return {"input_ids": ids[:n]}
            room = -n  # too small a buffer: llama.cpp says how many tokens there are


class LabelScorer:
    """A llama.cpp context that scores every label after a few prompts in one decode."""

    def __init__(self, model, label_ids: list[list[int]], longest_prompt: int, rows_per_decode: int, threads: int):
        self.label_ids, self.rows_per_decode = label_ids, rows_per_decode
        sequences = rows_per_decode * len(label_ids)
        if sequences > llama_cpp.llama_max_parallel_sequences():
            raise SystemExit(f"{rows_per_decode} rows of {len(label_ids)} labels need {sequences} sequences; "
                             f"llama.cpp holds at most {llama_cpp.llama_max_parallel_sequences()} in one context")
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))
        tokens = rows_per_decode * (longest_prompt + sum(len(x) - 1 for x in label_ids))
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = params.n_batch = params.n_ubatch = tokens
        params.n_seq_max = sequences
        params.kv_unified = True  # one cache for all sequences, so each prompt's cells are stored once
        params.n_threads = params.n_threads_batch = threads
        self.ctx = llama_cpp.llama_init_from_model(model, params)
        self.batch = llama_cpp.llama_batch_init(tokens, 0, sequences)

    def _add(self, token: int, pos: int, seqs: range, logits: bool) -> int:
        b, i = self.batch, self.batch.n_tokens
        b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, pos, len(seqs), logits
        for k, seq in enumerate(seqs):
            b.seq_id[i][k] = seq
        b.n_tokens += 1
        return i

    def _log_probs(self, index: int) -> np.ndarray:
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.ctx, index), shape=(self.n_vocab,))
        logits = logits.astype(np.float64)
        top = logits.max()
        return logits - top - np.log(np.exp(logits - top).sum())

    def scores(self, prompts: list[list[int]]) -> np.ndarray:
        """A (prompts x labels) array: each label's summed token log-probabilities after each prompt."""
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)
        self.batch.n_tokens = 0
        n = len(self.label_ids)
        plan = []  # per prompt: the batch index of its last token, and of each label token but the last
        for r, prompt in enumerate(prompts):
            for pos, token in enumerate(prompt):  # the prompt belongs to all of its labels' sequences
                last = self._add(token, pos, range(r * n, (r + 1) * n), logits=pos == len(prompt) - 1)
            fed = [[self._add(token, len(prompt) + k, range(r * n + j, r * n + j + 1), logits=True)
                    for k, token in enumerate(tokens[:-1])]  # every label token but the last predicts the next
                   for j, tokens in enumerate(self.label_ids)]
            plan.append((last, fed))
        if llama_cpp.llama_decode(self.ctx, self.batch) != 0:
            raise RuntimeError("llama_decode failed")
        out = np.empty((len(prompts), n))
        for r, (last, fed) in enumerate(plan):
            first = self._log_probs(last)
            for j, tokens in enumerate(self.label_ids):
                out[r, j] = first[tokens[0]] + sum(self._log_probs(i)[t] for i, t in zip(fed[j], tokens[1:]))
        return out

    def close(self) -> None:
        llama_cpp.llama_batch_free(self.batch)
        llama_cpp.llama_free(self.ctx)


def cpu_model() -> str:
    for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def allowed_labels(labels_from: Path, predictions: pd.DataFrame) -> tuple[list[str], str]:
    """The training split's labels, as evaluate scores them; the CSV's own `actual` values if there is none."""
    if labels_from.is_file():
        return sorted({row["label"] for row in read_jsonl(labels_from)}), str(labels_from)
    print(f"{labels_from} not found: scoring the labels of the CSV's `actual` column")
    return sorted(predictions["actual"].astype(str).unique()), "predictions' actual column"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, default=Path("models/release/gguf/model-q8_0.gguf"))
    parser.add_argument("--predictions", type=Path, default=Path("metrics/predictions.csv"),
                        help="columns id, text, actual, base, finetuned, classic (from evaluate)")
    parser.add_argument("--labels-from", type=Path, default=Path("data/split/train.jsonl"),
                        help="the allowed labels: those of this JSONL's `label` field")
    parser.add_argument("--template", default="Product: {text}\nDepartment:", help="as prompt.template in params.yaml")
    parser.add_argument("--answer-prefix", default=" ", help="as prompt.answer_prefix in params.yaml")
    parser.add_argument("--rows", type=int, default=None, help="score only the first ROWS rows")
    parser.add_argument("--rows-per-decode", type=int, default=None,
                        help="prompts per llama.cpp decode (default: as many as 256 sequences hold, at most 16)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--extra-buffers", action="store_true",
                        help="let llama.cpp repack weights for AMX / its CPU kernels (crashes on this project's Xeon)")
    args = parser.parse_args()
    if llama_cpp is None:
        parser.error("needs llama-cpp-python: pip install .venv/share/llama-cpp-python/llama_cpp_python-0.3.36.tar.gz")

    predictions = pd.read_csv(args.predictions, keep_default_na=False).head(args.rows)
    labels, labels_origin = allowed_labels(args.labels_from, predictions)
    start = time.perf_counter()
    model = load_model(args.gguf, args.extra_buffers)
    tokenizer = LlamaCppTokenizer(model)
    label_ids = label_token_ids(tokenizer, labels, args.answer_prefix)
    prompts = [prompt_ids(tokenizer, render_prompt(args.template, str(t))) for t in predictions["text"]]
    rows_per_decode = args.rows_per_decode or max(1, min(16, llama_cpp.llama_max_parallel_sequences() // len(labels)))
    scorer = LabelScorer(model, label_ids, max(map(len, prompts)), rows_per_decode, args.threads)
    load_s = time.perf_counter() - start

    start = time.perf_counter()
    scores = np.concatenate([scorer.scores(prompts[i: i + rows_per_decode])
                             for i in range(0, len(prompts), rows_per_decode)])
    seconds = time.perf_counter() - start
    predicted = [labels[i] for i in scores.argmax(axis=1)]
    scorer.close()
    llama_cpp.llama_model_free(model)

    n = len(predicted)
    finetuned = predictions["finetuned"].astype(str).tolist()
    actual = predictions["actual"].astype(str).tolist()
    result = {
        "benchmark": "llama_cpp_labels",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{cpu_model()}, {os.cpu_count()} CPU cores, llama.cpp threads {args.threads}, no GPU",
        "libraries": {**provenance.library_versions(), "llama-cpp-python": version("llama_cpp_python")},
        "command": f"python -m benchmarks.llama_cpp_labels --gguf {args.gguf} --predictions {args.predictions} "
                   f"--labels-from {args.labels_from} --template {json.dumps(args.template)} "
                   f"--answer-prefix {json.dumps(args.answer_prefix)}"
                   + (f" --rows {args.rows}" if args.rows else "")
                   + f" --rows-per-decode {rows_per_decode} --threads {args.threads}"
                   + (" --extra-buffers" if args.extra_buffers else ""),
        "gguf": {"file": str(args.gguf), "mib": round(args.gguf.stat().st_size / 2**20, 1)},
        "rows": n, "labels": len(labels), "labels_from": labels_origin, "rows_per_decode": rows_per_decode,
        "label_tokens": sum(map(len, label_ids)), "end_token_added": any(x[-1] == tokenizer.eos_token_id
                                                                          for x in label_ids),
        "agreement_with_finetuned": round(sum(p == f for p, f in zip(predicted, finetuned)) / n, 4),
        "accuracy": round(sum(p == a for p, a in zip(predicted, actual)) / n, 4),
        "finetuned_accuracy": round(sum(f == a for f, a in zip(finetuned, actual)) / n, 4),
        "load_s": round(load_s, 2), "scoring_s": round(seconds, 2), "rows_per_s": round(n / seconds, 2),
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"llama_cpp_labels_{result['date'][:19].replace(':', '')}Z.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print("| rows | labels | agreement with fine-tuned | accuracy (fine-tuned's) | rows/s |\n|---|---|---|---|---|\n"
          f"| {n} | {len(labels)} | {result['agreement_with_finetuned']} | {result['accuracy']} "
          f"({result['finetuned_accuracy']}) | {result['rows_per_s']} |")
    print(path)


if __name__ == "__main__":
    main()
