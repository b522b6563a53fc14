"""End to end: switching the task, and the task's data format, by params alone (`dvc exp run -S`), in a clone of the
tiny pipeline. The chitchat task's conversations written in another conversation format, or read by `auto`, give the
examples the chitchat corpus gives, byte for byte; switching back restores everything from DVC's run cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune import outputs
from finetune.data.conversations import DROP_REASONS
from finetune.data.dialogues import build_dialogues
from finetune.data.sources import load_source
from finetune.params import read_task
from tests import conversation_files
from tests.test_pipeline import STAGES
from tests.tiny_pipeline import clone, dvc, ran_stages, redone_stages, restored_stages


NOTHING_DROPPED = dict.fromkeys(DROP_REASONS, 0)


def as_format(fmt: str) -> list[str]:
    """`-S` options that make the chitchat task read its conversations from the file written in `fmt` (`chitchat`:
    the embedded corpus, as params.yaml has it)."""
    if fmt == "chitchat":
        return ["-S", "tasks.chitchat.data.source=chitchat", "-S", "tasks.chitchat.data.format=chitchat",
                "-S", "tasks.chitchat.data.turns=4"]
    source = f"data/raw/chats.{'messages' if fmt == 'auto' else fmt}.jsonl"
    return ["-S", f"tasks.chitchat.data.source={source}", "-S", f"tasks.chitchat.data.format={fmt}",
            "-S", "tasks.chitchat.data.turns=0"]


@pytest.fixture
def repo(tiny_pipeline, tmp_path) -> Path:
    repo = clone(tiny_pipeline, tmp_path / "repo")
    task = read_task(str(repo / "params.yaml"), None, "chitchat")
    examples, _ = build_dialogues(*load_source(task.data.source), task.data)
    for fmt in conversation_files.FORMATS:  # the chitchat task's own examples, as a user's conversation files
        conversation_files.write(repo / f"data/raw/chats.{fmt}.jsonl", fmt, list(examples["messages"]),
                                 list(examples["id"]))
    dvc(repo, "git", "add", "data/raw")
    dvc(repo, "git", "commit", "-qm", "conversation files")
    return repo


def test_switching_task_then_format_reruns_what_changed_and_switching_back_restores_it(repo):
    classification = (repo / "metrics/eval.json").read_bytes()
    output = dvc(repo, "exp", "run", "-S", "task=chitchat", *as_format("messages"))
    assert redone_stages(output) == STAGES - {"base_model"}
    generation = json.loads((repo / "metrics/eval.json").read_text())
    assert set(generation) == {"base", "finetuned"}
    assert {"bleu", "rouge_l", "perplexity"} <= set(generation["finetuned"])
    report = (repo / "metrics/report.md").read_text()
    assert "## Probe prompts" in report and "ROUGE-L" in report
    assert json.loads((repo / "metrics/data.json").read_text())["dropped_rows"] == NOTHING_DROPPED
    for path in outputs.FILES:  # a generation task's outputs are described in docs/reference/outputs.md too
        if path != "metrics/export.json":
            outputs.check(path, json.loads((repo / path).read_text()), "generation")
    examples = (repo / "data/examples.jsonl").read_bytes()

    # Another format, `auto`, and the chitchat corpus itself: prepare writes the same examples, byte for byte (every
    # format's examples against the corpus's, in process: tests/data/test_formats.py)
    for fmt in ["sharegpt", "auto", "chitchat"]:
        output = dvc(repo, "exp", "run", "prepare", *as_format(fmt))
        assert ran_stages(output) == {"prepare"}, (fmt, output)
        assert (repo / "data/examples.jsonl").read_bytes() == examples, fmt
        if fmt == "auto":
            assert "data.format auto: data/raw/chats.messages.jsonl reads as messages" in output

    back = dvc(repo, "exp", "run", "-S", "task=instacart")
    # Prepare runs again (data/raw, one of its dependencies, now holds the conversation files too), to the same
    # examples; everything after it is restored from the run cache
    assert ran_stages(back) == {"prepare"} and restored_stages(back) == STAGES - {"base_model", "prepare"}, back
    assert (repo / "metrics/eval.json").read_bytes() == classification
