"""The `finetune` command's own words: its version, the defaults its help shows, the commands its description names,
and predict's answer length taken from the run's evaluation (the bad-input corpus is tests/test_bad_commands.py)."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tomllib

import pandas as pd
import pytest
import yaml

from finetune import cli
from tests.conftest import ROOT
from tests.deliver.conftest import answer_conversations, make_adapter


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_version_is_the_installed_package_version_and_exits_0():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert cli.DISTRIBUTION == project["name"]
    proc = subprocess.run([sys.executable, "-m", "finetune.cli", "--version"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"finetune {project['version']}"


@pytest.mark.parametrize("name", sorted(subcommands(cli.build_parser())))
def test_every_option_with_a_default_shows_it_in_help(name):
    parser = subcommands(cli.build_parser())[name]
    text = " ".join(parser.format_help().split())
    for action in parser._actions:
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
            assert f"(default: {action.default})" in text, (name, action.dest)
        elif action.option_strings and action.default is None:  # then the help says what happens instead
            assert "default: None" not in text and action.help, (name, action.dest)


def test_the_description_promises_only_the_commands_there_are():
    parser = cli.build_parser()
    assert set(subcommands(parser)) == {"predict", "chat", "serve", "merge", "card", "publish", "pr-report"}
    assert not re.search(r"export|gguf|convert", parser.description, re.I)  # made by the export stage
    assert "export stage" in parser.epilog


@pytest.fixture(scope="module")
def chatter(tmp_path_factory, tokenizer):
    return make_adapter(tmp_path_factory.mktemp("chatter"), tokenizer, kind="generation")


def test_predict_answers_as_long_as_evaluate_let_the_run_answer(chatter, tmp_path, monkeypatch):
    """No --max-new-tokens: the run's task's evaluate.max_new_tokens in params.yaml, not a fixed length."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["tasks"]["chitchat"]["evaluate"]["max_new_tokens"] = 3
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    pd.DataFrame({"text": ["hey, how was your weekend?"]}).to_csv(tmp_path / "prompts.csv", index=False)
    monkeypatch.chdir(tmp_path)
    cli.main(["predict", "prompts.csv", "answers.jsonl", "--adapter", str(chatter), "--batch-size", "1",
              "--no-repeat-ngram-size", "0"])
    cli.main(["predict", "prompts.csv", "longer.jsonl", "--adapter", str(chatter), "--batch-size", "1",
              "--no-repeat-ngram-size", "0", "--max-new-tokens", "6"])

    from finetune.deliver.trained import load_trained

    run, model, tokenizer = load_trained(chatter)
    turns = [[{"role": "user", "content": "hey, how was your weekend?"}]]
    answers = {file: pd.read_json(tmp_path / file, lines=True)["answer"].tolist() for file in ("answers.jsonl",
                                                                                                 "longer.jsonl")}
    assert answers["answers.jsonl"] != answers["longer.jsonl"]
    for file, length in (("answers.jsonl", 3), ("longer.jsonl", 6)):
        expected = answer_conversations(run, model, tokenizer, turns, batch_size=1, max_new_tokens=length,
                                        no_repeat_ngram_size=0)
        assert answers[file] == expected, file
