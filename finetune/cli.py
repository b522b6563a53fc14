"""finetune: use a trained model: predict over files, chat, merge, export to GGUF, publish; report a change for review.

Thin on purpose: it parses the arguments and calls finetune.deliver.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from finetune.stage import run as run_with_one_line_errors

ADAPTER = "models/adapter"


def _batch_size(value: str) -> int | str:
    return value if value == "auto" else int(value)


def predict(args) -> None:
    from finetune import params
    from finetune.deliver.predict import predict_file
    from finetune.deliver.trained import load_trained
    from finetune.model import base_model

    run, model, tokenizer = load_trained(args.adapter)
    batch_size = params.evaluation_batch_size(args.batch_size, on_gpu=base_model.device().type == "cuda")
    start = time.perf_counter()
    counts = predict_file(run, model, tokenizer, args.input, args.output, column=args.column,
                          chunk_rows=args.chunk_rows, batch_size=batch_size, memory_gib=args.memory_gib,
                          top_k=args.top_k, max_new_tokens=args.max_new_tokens,
                          no_repeat_ngram_size=args.no_repeat_ngram_size)
    seconds, rows = time.perf_counter() - start, sum(counts.values())
    print(f"predict: {rows} rows to {args.output} in {seconds:.1f} s ({rows / seconds:.2f} rows/s; {json.dumps(counts)})")


def chat(args) -> None:
    from finetune.deliver.chat import chat_loop
    from finetune.deliver.trained import load_trained

    run, model, tokenizer = load_trained(args.adapter)
    chat_loop(run, model, tokenizer, max_new_tokens=args.max_new_tokens,
              no_repeat_ngram_size=args.no_repeat_ngram_size)


def merge(args) -> None:
    from finetune.deliver.merge import merged_model, merged_run_info, save_merged
    from finetune.deliver.trained import read_run
    from finetune.model import base_model

    run = read_run(args.adapter)
    model = merged_model(run, args.into)
    tokenizer = base_model.load_tokenizer(str(run.folder), "main")
    save_merged(model, tokenizer, args.output, merged_run_info(run, args.into, model))
    print(f"merge: {args.adapter} merged into its {args.into} base weights -> {args.output}")


def card(args) -> None:
    from pathlib import Path

    from finetune.deliver.card import model_card, write_card
    from finetune.files import read_json

    folder = Path(args.folder)
    if not (folder / "run.json").is_file():
        from finetune.errors import PipelineError

        raise PipelineError(f"{folder}: no run.json; point at a folder written by train_qlora, merge or export")
    metrics = read_json(args.metrics) if Path(args.metrics).is_file() else None
    path = write_card(folder, model_card(read_json(folder / "run.json"), metrics, args.artifact))
    print(f"card: {path}")


def publish(args) -> None:
    from finetune.deliver.publish import publish as push

    print(f"publish: {push(args.folder, args.repo_id, private=args.private, token=args.token, revision=args.revision)}")


def pr_report(args) -> None:
    from pathlib import Path

    from finetune.report.pr_report import build

    images = build(args.base, Path(args.out), args.image_url)
    print(f"pr-report: {args.out} (images in {images})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="finetune", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("predict", help="predict every row of a CSV / JSONL / Parquet file")
    p.add_argument("input", help="a .csv, .jsonl or .parquet file")
    p.add_argument("output", help="where the predictions go (.csv, .jsonl or .parquet), written atomically")
    p.add_argument("--adapter", default=ADAPTER, help=f"the trained adapter folder (default {ADAPTER}), "
                   "or a merged one (models/release/merged: the same labels here, about twice as fast on CPU)")
    p.add_argument("--column", help="the input column (default: the task's input field, else 'text')")
    p.add_argument("--top-k", type=int, default=3, help="labels listed with their probabilities (classification)")
    p.add_argument("--batch-size", type=_batch_size, default="auto", help="prompts a pass (auto: 64 on CPU, 512 on a GPU)")
    p.add_argument("--memory-gib", type=float, default=2.0, help="label scoring's working memory per batch")
    p.add_argument("--chunk-rows", type=int, default=4096, help="rows read, predicted and written at a time")
    p.add_argument("--max-new-tokens", type=int, default=64, help="longest answer (generation)")
    p.add_argument("--no-repeat-ngram-size", type=int, default=4, help="forbid repeating n-grams (generation; 0 = off)")
    p.set_defaults(handler=predict)

    p = commands.add_parser("chat", help="chat in the terminal with a generation-task adapter, tokens streamed")
    p.add_argument("--adapter", default=ADAPTER, help=f"the trained adapter folder (default {ADAPTER})")
    p.add_argument("--max-new-tokens", type=int, default=256, help="longest answer")
    p.add_argument("--no-repeat-ngram-size", type=int, default=4, help="forbid repeating n-grams (0 = off)")
    p.set_defaults(handler=chat)

    p = commands.add_parser("merge", help="merge the adapter into its base: a plain transformers folder")
    p.add_argument("output", help="the folder to write")
    p.add_argument("--adapter", default=ADAPTER, help=f"the trained adapter folder (default {ADAPTER})")
    p.add_argument("--into", choices=("original", "dequantized"), default="dequantized",
                   help="merge into the base's original weights or the dequantized 4-bit ones it was trained "
                        "against (default: dequantized, which agreed better in metrics/export.json)")
    p.set_defaults(handler=merge)

    p = commands.add_parser("card", help="write a model card (README.md) into an adapter, merged or GGUF folder")
    p.add_argument("folder", help="a folder holding run.json (models/adapter, a merged folder, models/release/*)")
    p.add_argument("--metrics", default="metrics/eval.json", help="the evaluation to show (skipped if missing)")
    p.add_argument("--artifact", choices=("adapter", "merged", "gguf"), default="adapter", help="what the folder holds")
    p.set_defaults(handler=card)

    p = commands.add_parser("publish", help="push a folder with its model card to the Hugging Face Hub")
    p.add_argument("folder", help="e.g. models/release/adapter or models/release/merged (made by `dvc repro`)")
    p.add_argument("--repo-id", required=True, help="the Hub repository, user/name")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--revision", help="a branch to push to (created if missing)")
    p.add_argument("--token", help="a Hub token (default: `hf auth login`'s, or HF_TOKEN)")
    p.set_defaults(handler=publish)

    p = commands.add_parser("pr-report", help="a Markdown report of this change against a base revision, for review")
    p.add_argument("--base", default="main", help="the revision compared against (default main; in CI origin/<base>)")
    p.add_argument("--out", default="pr-report.md", help="the Markdown file; its images go in the folder beside it "
                   "named after it (default pr-report.md, pr-report/)")
    p.add_argument("--image-url", help="where the images will be served, for a PR comment (default: relative links)")
    p.set_defaults(handler=pr_report)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    run_with_one_line_errors(lambda: args.handler(args))


if __name__ == "__main__":
    main(sys.argv[1:])
