"""finetune: use a trained model: predict over a file, chat, serve it over HTTP, merge into the base, write a model
card, publish to the Hugging Face Hub; report a change for review.

Thin on purpose: it parses and checks the arguments (a bad one is one `error:` line, as a bad param is), checks the
trained folder, and calls finetune.deliver. The model libraries are imported only once everything checked out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import typing
from importlib import metadata
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError

from finetune.errors import PipelineError
from finetune.param_errors import error_line
from finetune.param_schemas import MERGE_INTO, Count, Count0, Positive, Section
from finetune.serve.limits import API_KEY_ENV, Limits
from finetune.stage import run as run_with_one_line_errors

ADAPTER = "models/adapter"
ARTIFACTS = ("adapter", "merged", "gguf")
DISTRIBUTION = "finetune-pipeline"  # pyproject.toml's [project] name, whose version `--version` prints
NOT_A_COMMAND = ("GGUF files and the release folders (models/release/) are made by the pipeline's export stage, not by "
                 "a command: `dvc exp run -S export.enabled=true`.")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's help with each option's default, except where there is none to show (None, a flag's False): there
    the help itself says what happens."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.required:
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse, whose complaints (a missing, unknown or mistyped argument) are one `error:` line and exit 1."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)  # the subcommands' parsers too
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> typing.NoReturn:
        raise PipelineError(f"{self.prog}: {message} (see `{self.prog} --help`)")


class PredictOptions(Section):
    """`finetune predict`'s numbers, checked like params."""

    top_k: Count
    batch_size: Count | Literal["auto"]
    memory_gib: Positive
    chunk_rows: Count
    max_new_tokens: Count | None
    no_repeat_ngram_size: Count0


class ChatOptions(Section):
    max_new_tokens: Count
    no_repeat_ngram_size: Count0
    row: Count


class ServeOptions(Limits):
    """`finetune serve`'s numbers: its limits, and the port."""

    port: Annotated[int, Field(ge=1, le=65535)]


def checked(options: type[Section], args: argparse.Namespace, command: str) -> Section:
    """The command's options, each within its range, or one line naming the option, its value and what is allowed."""
    values = {name: getattr(args, name) for name in options.model_fields}
    try:
        return options.model_validate(values)
    except ValidationError as e:
        line = error_line(e, f"finetune {command}", options, {})
        for name in options.model_fields:
            line = line.replace(f": {name} is ", f": --{name.replace('_', '-')} is ")
        raise PipelineError(line) from None


def _batch_size(value: str) -> int | str:
    return value if value == "auto" else int(value)


_batch_size.__name__ = "batch size (a count or auto)"  # what argparse calls the type in its one line


def predict(args) -> None:
    from finetune.deliver.predict import check_files
    from finetune.deliver.trained import check_base_present, check_weights, read_run

    options = checked(PredictOptions, args, "predict")
    run = read_run(args.adapter)
    check_weights(run)
    check_base_present(run)
    column = check_files(run, Path(args.input), Path(args.output), args.column)
    max_new_tokens = options.max_new_tokens
    if max_new_tokens is None and run.kind.can_chat:  # a kind that answers: as long as evaluate let its answers be
        max_new_tokens = evaluated_max_new_tokens(run)

    from finetune import params
    from finetune.deliver.predict import predict_file
    from finetune.deliver.trained import load_trained
    from finetune.model import base_model

    run, model, tokenizer = load_trained(args.adapter)
    batch_size = params.evaluation_batch_size(options.batch_size, on_gpu=base_model.device().type == "cuda")
    start = time.perf_counter()
    counts = predict_file(run, model, tokenizer, args.input, args.output, column=column,
                          chunk_rows=options.chunk_rows, batch_size=batch_size, memory_gib=options.memory_gib,
                          top_k=options.top_k, max_new_tokens=max_new_tokens,
                          no_repeat_ngram_size=options.no_repeat_ngram_size)
    seconds, rows = time.perf_counter() - start, sum(counts.values())
    print(f"predict: {rows} rows to {args.output} in {seconds:.1f} s ({rows / seconds:.2f} rows/s; {json.dumps(counts)})")


def evaluated_max_new_tokens(run) -> int:
    """The longest answer `evaluate` generated for the run's task: its entry's evaluate.max_new_tokens in this
    project's params.yaml (run.json records how the task was trained, not how it was evaluated)."""
    from finetune import params

    name = run.info["task"]["name"]
    tasks = params.validate(params.load_yaml()).tasks if Path("params.yaml").is_file() else {}
    if name not in tasks:
        raise PipelineError(f"{run.folder} answers as long as evaluate let it: tasks.{name}.evaluate.max_new_tokens "
                            "in its project's params.yaml, which is not here; run from the project's folder, or pass "
                            "--max-new-tokens")
    return tasks[name].evaluate.max_new_tokens


def chat(args) -> None:
    from finetune.deliver.trained import check_base_present, check_weights, read_run

    options = checked(ChatOptions, args, "chat")
    run = read_run(args.adapter)
    if not run.kind.can_chat:
        raise PipelineError(f"{run.folder} was trained for a {run.kind.name} task ({run.info['task']['name']}), not "
                            "to chat; use `finetune predict` with it, or chat with a generation task's adapter")
    check_weights(run)
    check_base_present(run)
    history = conversation_from(run, Path(args.conversation), options.row) if args.conversation else []

    from finetune.deliver.chat import chat_loop
    from finetune.deliver.trained import load_trained

    run, model, tokenizer = load_trained(args.adapter)
    chat_loop(run, model, tokenizer, max_new_tokens=options.max_new_tokens,
              no_repeat_ngram_size=options.no_repeat_ngram_size, history=history)


def conversation_from(run, path: Path, row: int) -> list[dict]:
    """Row `row` (from 1) of a conversation file, up to its last user turn: where `chat --conversation` starts."""
    from finetune.data.conversations import DROP_REASONS, BadRow
    from finetune.deliver.predict import conversation_format, read_records

    if not path.is_file():
        raise PipelineError(f"--conversation {path}: no such file")
    found = conversation_format(run, path, None)
    if not found:
        raise PipelineError(f"--conversation {path}: not a conversation file (messages, sharegpt, alpaca or "
                            "prompt_completion rows, in JSONL, CSV or Parquet)")
    fmt, data = found
    record = next((r for n, r in enumerate(read_records(path), start=1) if n == row), False)
    if record is False:
        raise PipelineError(f"--conversation {path}: --row is {row}, but the file has fewer rows")
    try:
        if record is None:
            raise BadRow("not_a_list", "it is not a JSON object")
        return fmt.prompt(record, data)
    except BadRow as bad:
        why = DROP_REASONS.get(bad.reason, "it ends with no user turn to answer")
        raise PipelineError(f"--conversation {path}: row {row} is not a {fmt.name} conversation to answer: "
                            f"{bad.detail} ({why})") from None


def serve(args) -> None:
    from finetune.deliver.trained import check_base_present, check_weights, read_run
    from finetune.serve.limits import check_host
    from finetune.serve.server import check_port

    options = checked(ServeOptions, args, "serve")
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    refused = check_host(args.host, api_key, args.allow_unauthenticated)
    if refused:
        raise PipelineError(f"finetune serve: {refused}")
    run = read_run(args.adapter)
    check_weights(run)
    check_base_present(run)
    check_port(args.host, options.port)

    from finetune.serve.server import serve as serve_folder

    limits = Limits(**options.model_dump(exclude={"port"}))
    serve_folder(args.adapter, args.host, options.port, limits, api_key, args.name)


def merge(args) -> None:
    from finetune.deliver.trained import check_base_present, check_weights, read_run

    run = read_run(args.adapter)
    if run.is_whole_model:
        raise PipelineError(f"{run.folder} is a whole model (full fine-tuning's, or merged already), not an adapter: "
                            "there is nothing to merge; load, predict with or convert it as it is")
    check_weights(run)
    check_base_present(run)
    _check_new_folder(Path(args.output))

    from finetune.deliver.merge import merged_model, merged_run_info, save_merged
    from finetune.model import base_model

    model = merged_model(run, args.into)
    tokenizer = base_model.load_tokenizer(str(run.folder), "main")
    save_merged(model, tokenizer, args.output, merged_run_info(run, args.into, model))
    print(f"merge: {args.adapter} merged into its {args.into} base weights -> {args.output}")


def _check_new_folder(path: Path) -> None:
    """A folder to write: new, or one it replaces; never a file or the current folder."""
    if path.exists() and not path.is_dir():
        raise PipelineError(f"{path} is a file; name a folder for the merged model")
    if path.resolve() == Path.cwd().resolve() or (path / ".git").exists() or (path / "dvc.yaml").exists():
        raise PipelineError(f"{path} is a project folder; name a new folder for the merged model")


def card(args) -> None:
    from finetune import params
    from finetune.deliver.card import model_card, write_card
    from finetune.deliver.trained import read_run
    from finetune.files import read_json

    run = read_run(args.folder)
    metrics = read_json(args.metrics) if Path(args.metrics).is_file() else None
    about = None
    if Path("params.yaml").is_file():  # the task's own words, if this project still has the task
        tasks = params.validate(params.load_yaml()).tasks
        name = run.info["task"]["name"]
        about = tasks[name].card if name in tasks else None
    path = write_card(run.folder, model_card(run.info, metrics, args.artifact, about=about))
    print(f"card: {path}")


def publish(args) -> None:
    from finetune.deliver.publish import publish as push

    print(f"publish: {push(args.folder, args.repo_id, private=args.private, token=args.token, revision=args.revision)}")


def pr_report(args) -> None:
    from finetune.report.pr_report import build

    images = build(args.base, Path(args.out), args.image_url)
    print(f"pr-report: {args.out} (images in {images})")


def build_parser() -> Parser:
    parser = Parser(prog="finetune", description=" ".join(__doc__.split("\n\n")[0].split()), epilog=NOT_A_COMMAND)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, what: str) -> Parser:
        return commands.add_parser(name, help=what, description=what)

    p = command("predict", "predict every row of a CSV / JSONL / Parquet file")
    p.add_argument("input", help="a .csv, .jsonl or .parquet file")
    p.add_argument("output", help="where the predictions go (.csv, .jsonl or .parquet), written atomically")
    p.add_argument("--adapter", default=ADAPTER, help="the trained adapter folder, "
                   "or a merged one (models/release/merged: the same labels here, about twice as fast on CPU)")
    p.add_argument("--column", help="the input column (default: the task's input field, else 'text')")
    p.add_argument("--top-k", type=int, default=3, help="labels listed with their probabilities (classification)")
    p.add_argument("--batch-size", type=_batch_size, default="auto", help="prompts a pass (auto: 64 on CPU, 512 on a GPU)")
    p.add_argument("--memory-gib", type=float, default=2.0, help="label scoring's working memory per batch")
    p.add_argument("--chunk-rows", type=int, default=4096, help="rows read, predicted and written at a time")
    p.add_argument("--max-new-tokens", type=int, help="longest answer, in tokens (generation; default: as long as "
                   "evaluate let the run's answers be, tasks.<task>.evaluate.max_new_tokens in params.yaml)")
    p.add_argument("--no-repeat-ngram-size", type=int, default=4, help="forbid repeating n-grams (generation; 0 = off)")
    p.set_defaults(handler=predict)

    p = command("chat", "chat in the terminal with a generation-task adapter, tokens streamed")
    p.add_argument("--adapter", default=ADAPTER, help="the trained adapter folder")
    p.add_argument("--max-new-tokens", type=int, default=256, help="longest answer")
    p.add_argument("--no-repeat-ngram-size", type=int, default=4, help="forbid repeating n-grams (0 = off)")
    p.add_argument("--conversation", help="a conversation file (as `predict` reads): start from one of its rows, "
                                          "the model answering its last user turn first (default: a new "
                                          "conversation)")
    p.add_argument("--row", type=int, default=1, help="which row of --conversation (from 1)")
    p.set_defaults(handler=chat)

    p = command("serve", "serve the trained model over HTTP, OpenAI-compatible: chat and text completions, "
                         "classifications (docs/serving.md)")
    p.add_argument("--adapter", default=ADAPTER, help="the trained folder: an adapter, a merged folder or a whole model")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on; another than this machine's own "
                   "(127.0.0.1, localhost, ::1) needs an API key or --allow-unauthenticated")
    p.add_argument("--port", type=int, default=8000, help="the port to listen on")
    p.add_argument("--name", help="the model's name in requests and in GET /v1/models (default: the folder's name; "
                                  "the folder's path is accepted too)")
    p.add_argument("--api-key", help="a key clients send as 'Authorization: Bearer KEY' (default: the "
                                     f"{API_KEY_ENV} environment variable; neither: no key is asked)")
    p.add_argument("--allow-unauthenticated", action="store_true",
                   help="listen beyond this machine without an API key (a trusted network in front of it)")
    p.add_argument("--window-ms", type=float, default=10.0,
                   help="how long the first request of a batch waits for others to join it")
    p.add_argument("--max-batch", type=int, default=64, help="the most requests run through the model together "
                   "(classification: texts; and the most texts a request)")
    p.add_argument("--max-queue", type=int, default=256, help="the most requests waiting; past it 503 with Retry-After")
    p.add_argument("--timeout-s", type=float, default=60.0, help="the longest a request may take, waiting included; "
                   "past it 504")
    p.add_argument("--max-tokens", type=int, default=256, help="the most tokens a request may ask to be generated, and "
                   "what it gets when it names none (less where the prompt leaves less of the model's context)")
    p.add_argument("--max-body-kib", type=int, default=1024, help="the largest request body; past it 413")
    p.add_argument("--memory-gib", type=float, default=2.0, help="label scoring's working memory per batch")
    p.add_argument("--no-repeat-ngram-size", type=int, default=4, help="a chat answer may not repeat any run of this "
                   "many tokens, as predict and chat answer (0 = off)")
    p.set_defaults(handler=serve)

    p = command("merge", "merge the adapter into its base: a plain transformers folder")
    p.add_argument("output", help="the folder to write")
    p.add_argument("--adapter", default=ADAPTER, help="the trained adapter folder")
    p.add_argument("--into", choices=typing.get_args(MERGE_INTO), default="dequantized",
                   help="merge into the base's original weights or the dequantized 4-bit ones it was trained "
                        "against (dequantized agreed better with the adapter in metrics/export.json)")
    p.set_defaults(handler=merge)

    p = command("card", "write a model card (README.md) into an adapter, merged or GGUF folder")
    p.add_argument("folder", help="a folder holding run.json (models/adapter, a merged folder, models/release/*)")
    p.add_argument("--metrics", default="metrics/eval.json", help="the evaluation to show (skipped if missing)")
    p.add_argument("--artifact", choices=ARTIFACTS, default="adapter", help="what the folder holds")
    p.set_defaults(handler=card)

    p = command("publish", "push a folder with its model card to the Hugging Face Hub")
    p.add_argument("folder", help="e.g. models/release/adapter or models/release/merged (made by the export stage)")
    p.add_argument("--repo-id", required=True, help="the Hub repository, user/name")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--revision", help="a branch to push to, created if missing (default: the repository's main "
                                      "branch)")
    p.add_argument("--token", help="a Hub token (default: `hf auth login`'s, or HF_TOKEN)")
    p.set_defaults(handler=publish)

    p = command("pr-report", "a Markdown report of this change against a base revision, for review")
    p.add_argument("--base", default="main", help="the revision compared against (in CI origin/<base>)")
    p.add_argument("--out", default="pr-report.md", help="the Markdown file; its images go in the folder beside it "
                   "named after it (pr-report/ for the default)")
    p.add_argument("--image-url", help="where the images will be served, for a PR comment (default: relative links)")
    p.set_defaults(handler=pr_report)
    return parser


def version() -> str:
    """This package's installed version (`make setup` installs it, editable)."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed: `pip install --no-deps -e .`)"


def main(argv: list[str] | None = None) -> None:
    def command() -> None:
        args = build_parser().parse_args(argv)
        args.handler(args)

    run_with_one_line_errors(command)


if __name__ == "__main__":
    main(sys.argv[1:])
