"""The bad-input corpus of the `finetune` commands: each bad argument or damaged trained folder, given to the command
line's entry point, is one `error:` line (no traceback), exit status 1 and nothing written; Ctrl-C to the real
console script is one line too."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.deliver.conftest import make_adapter

FINETUNE = Path(sys.executable).parent / "finetune"  # the console script `pip install -e .` made


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tokenizer) -> dict[str, Path]:
    """A trained classifier and a generation adapter (tests/deliver/conftest.py), and a whole model."""
    root = tmp_path_factory.mktemp("commands")
    classifier = make_adapter(root / "classifier", tokenizer)
    chatter = make_adapter(root / "chatter", tokenizer, kind="generation")
    whole = root / "whole"
    shutil.copytree(root / "classifier" / "base", whole)
    (whole / "run.json").write_text((classifier / "run.json").read_text())
    return {"classifier": classifier, "whole": whole, "base": root / "classifier" / "base", "chatter": chatter}


def damaged(folders: dict, tmp: Path, how: str) -> Path:
    """A copy of the classifier's adapter folder, damaged as `how` says."""
    folder = tmp / "damaged"
    shutil.copytree(folders["classifier"], folder)
    run_json = folder / "run.json"
    info = json.loads(run_json.read_text())
    if how == "no run.json":
        run_json.unlink()
    elif how == "run.json not JSON":
        run_json.write_text('{"task": {"name": "instacart", ')
    elif how == "run.json without task":
        run_json.write_text(json.dumps({k: v for k, v in info.items() if k != "task"}))
    elif how == "run.json of an unknown kind":
        info["task"]["kind"] = "regression"
        run_json.write_text(json.dumps(info))
    elif how == "no weights":
        (folder / "adapter_model.safetensors").unlink()
    elif how == "truncated weights":
        weights = folder / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif how == "base gone":
        info["params"]["base_model"]["name"] = str(tmp / "models/base/gone")
        info["base_model"]["name"] = info["params"]["base_model"]["name"]
        run_json.write_text(json.dumps(info))
    return folder


P = ["predict", "in.csv", "out.csv"]
OK = ["--adapter", "{classifier}"]  # a trained folder that is whole
C = ["chat", "--adapter", "{chatter}", "--conversation"]  # chat from a row of a conversation file
# (case, command line after `finetune` ({adapter}: the trained folder, damaged as the case says), what the line says)
CASES = [
    ("no arguments", ["predict"], "the following arguments are required: input, output"),
    ("unknown command", ["pedict"], "argument command: invalid choice: 'pedict'"),
    ("unknown option", [*P, "--topk", "3"], "unrecognized arguments: --topk 3"),
    ("top-k 0", [*P, "--top-k", "0"], "finetune predict: --top-k is 0; allowed: >= 1"),
    ("top-k negative", [*P, "--top-k", "-3"], "finetune predict: --top-k is -3; allowed: >= 1"),
    ("top-k not a number", [*P, "--top-k", "three"], "argument --top-k: invalid int value: 'three'"),
    ("batch size 0", [*P, "--batch-size", "0"], "--batch-size is 0; allowed: >= 1 or 'auto'"),
    ("batch size a word", [*P, "--batch-size", "big"], "argument --batch-size: invalid batch size"),
    ("memory 0", [*P, "--memory-gib", "0"], "--memory-gib is 0.0; allowed: > 0"),
    ("chunk rows 0", [*P, "--chunk-rows", "0"], "--chunk-rows is 0; allowed: >= 1"),
    ("max new tokens 0", [*P, "--max-new-tokens", "0"], "--max-new-tokens is 0; allowed: >= 1"),
    ("no-repeat negative", [*P, "--no-repeat-ngram-size", "-1"], "--no-repeat-ngram-size is -1; allowed: >= 0"),
    ("input missing", ["predict", "gone.csv", "out.csv", *OK], "input gone.csv: no such file"),
    ("input format", ["predict", "in.txt", "out.csv", *OK], "input in.txt: unknown format '.txt'"),
    ("output format", ["predict", "in.csv", "out.xlsx", *OK], "output out.xlsx: unknown format '.xlsx'"),
    ("output is the input", ["predict", "in.csv", "in.csv", *OK], "output in.csv is the input file"),
    ("output is a folder", ["predict", "in.csv", "folder.csv", *OK], "output folder.csv is a folder"),
    ("no such column", [*P, "--column", "name", *OK], "in.csv: no column name; it has product"),
    ("not Parquet", ["predict", "broken.parquet", "out.csv", *OK], "input broken.parquet: cannot read it as Parquet"),
    ("adapter folder missing", [*P, "--adapter", "gone"], "gone: no such folder"),
    ("no run.json", [*P, "--adapter", "{adapter}"], "damaged: no run.json"),
    ("run.json not JSON", [*P, "--adapter", "{adapter}"], "damaged/run.json: not valid JSON"),
    ("run.json without task", [*P, "--adapter", "{adapter}"], "damaged/run.json: not the run.json train_qlora writes"),
    ("run.json of an unknown kind", [*P, "--adapter", "{adapter}"], "run.json: not the run.json train_qlora writes"),
    ("no weights", [*P, "--adapter", "{adapter}"], "damaged: no adapter_config.json and adapter_model.safetensors"),
    ("truncated weights", [*P, "--adapter", "{adapter}"], "adapter_model.safetensors: damaged or cut short"),
    ("base gone", [*P, "--adapter", "{adapter}"], "models/base/gone, which is not here"),
    ("answers of no known length", ["predict", "chats.jsonl", "out.jsonl", "--adapter", "{chatter}"],
     "tasks.chitchat.evaluate.max_new_tokens in its project's params.yaml, which is not here"),
    ("chat with a classifier", ["chat", *OK], "not to chat; use `finetune predict`"),
    ("chat max new tokens 0", ["chat", "--max-new-tokens", "0"], "finetune chat: --max-new-tokens is 0; allowed: >= 1"),
    ("chat row 0", ["chat", "--row", "0"], "finetune chat: --row is 0; allowed: >= 1"),
    ("chat conversation missing", [*C, "gone.jsonl"], "--conversation gone.jsonl: no such file"),
    ("chat conversation of a table", [*C, "in.csv"], "--conversation in.csv: not a conversation file"),
    ("chat row past the end", [*C, "chats.jsonl", "--row", "9"], "--row is 9, but the file has fewer rows"),
    ("chat row with no user turn", [*C, "chats.jsonl", "--row", "2"],
     "row 2 is not a messages conversation to answer: no user turn to answer"),
    ("merge into what", ["merge", "merged", "--into", "both"], "argument --into: invalid choice: 'both'"),
    ("merge a whole model", ["merge", "merged", "--adapter", "{whole}"], "is a whole model"),
    ("merge over a file", ["merge", "in.csv", *OK], "in.csv is a file"),
    ("card of no folder", ["card", "gone"], "gone: no such folder"),
    ("card artifact", ["card", "{classifier}", "--artifact", "onnx"], "argument --artifact: invalid choice: 'onnx'"),
    ("publish without weights", ["publish", "folder.csv", "--repo-id", "me/model"], "holds no model weights"),
]
DAMAGE = {"no run.json", "run.json not JSON", "run.json without task", "run.json of an unknown kind", "no weights",
          "truncated weights", "base gone"}


def workdir(tmp_path: Path) -> Path:
    """A folder with the files the commands are given: a CSV, a file of another type, a broken Parquet, a folder."""
    work = tmp_path / "work"
    work.mkdir()
    pd.DataFrame({"product": ["Organic Whole Milk", "Frozen Peas"]}).to_csv(work / "in.csv", index=False)
    (work / "in.txt").write_text("Organic Whole Milk\n")
    (work / "broken.parquet").write_bytes(b"this is not parquet")
    (work / "folder.csv").mkdir()
    (work / "chats.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}]}\n'
                                      '{"messages": [{"role": "assistant", "content": "hello"}]}\n')
    return work


def files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


@pytest.mark.parametrize("case, argv, expected", CASES, ids=[c[0] for c in CASES])
def test_a_bad_argument_or_damaged_folder_is_one_error_line_and_nothing_written(case, argv, expected, folders,
                                                                                 tmp_path, monkeypatch, capsys):
    """In process, as the console script runs it (`finetune.cli.main`); the real command line's exit status and
    line are checked by tests/test_bad_inputs.py and the Ctrl-C test below."""
    from finetune import cli

    work = workdir(tmp_path)
    names = {**{k: str(v) for k, v in folders.items()},
             "adapter": str(damaged(folders, tmp_path, case)) if case in DAMAGE else ""}
    argv = [a.format(**names) for a in argv]
    before = files(tmp_path)
    monkeypatch.chdir(work)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert exit_.value.code == 1, err
    assert "Traceback" not in err and lines, err
    assert [line for line in lines if line.startswith("error: ")] == [lines[-1]], err
    assert expected in lines[-1], lines[-1]
    assert files(tmp_path) == before  # nothing written, nothing half-written


def test_ctrl_c_during_predict_is_one_line_and_leaves_no_output(folders, tmp_path):
    """SIGINT, as Ctrl-C sends it, once the first rows are predicted: exit status 130, one line, no output file and
    no temporary one beside it."""
    work = tmp_path / "work"
    work.mkdir()
    rows = 100_000  # far more than it predicts before the signal comes
    pd.DataFrame({"product": [f"Product number {i}" for i in range(rows)]}).to_csv(work / "in.csv", index=False)
    proc = subprocess.Popen([str(FINETUNE), "predict", "in.csv", "out.jsonl", "--adapter", str(folders["classifier"]),
                             "--chunk-rows", "64", "--batch-size", "16"], cwd=work, stderr=subprocess.PIPE, text=True)
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(lambda: proc.stderr.read(1), "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    while not any(int(done) > 0 for done in re.findall(rf"(\d+)/{rows}", "".join(seen))):  # rows predicted
        assert proc.poll() is None and time.monotonic() < deadline, "".join(seen)[-2000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 130
    reader.join(10)
    err = "".join(seen)
    assert err.strip().splitlines()[-1] == "error: interrupted (Ctrl-C); nothing was written"
    assert "Traceback" not in err
    assert sorted(p.name for p in work.iterdir()) == ["in.csv"]
