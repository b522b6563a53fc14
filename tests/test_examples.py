import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from finetune.errors import PipelineError
from finetune.examples import build_examples, class_counts
from tests.conftest import ROOT


def run_prepare(tmp_path, source: str, task: str = "instacart", env: dict | None = None, **data):
    """Run the real prepare stage in `tmp_path` on `task` with its `data.source` set; returns the finished process."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["task"] = task
    params["tasks"][task]["data"].update(source=source, **data)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "stages.prepare", "out/examples.jsonl", "out/counts.json"],
                          cwd=tmp_path, env=env, capture_output=True, text=True)


def assert_one_line_error(proc, tmp_path, *fragments):
    assert proc.returncode == 1
    message = proc.stderr.strip()
    assert len(message.splitlines()) == 1, message
    for fragment in fragments:
        assert fragment in message
    assert not (tmp_path / "out" / "examples.jsonl").exists()
    assert not (tmp_path / "out" / "counts.json").exists()


@pytest.mark.parametrize("content, fragments", [
    ("product,category\nMilk,dairy\n", ["bad.csv", "missing column 'department'", "product, category"]),
    ("product,department\nMilk,dairy\n   ,frozen\n", ["bad.csv", "row 2", "empty 'product'"]),
    ("product,department\nMilk,dairy\nPeas,\n", ["bad.csv", "row 2", "no 'department'"]),
])
def test_bad_table_gives_one_line_error_and_writes_nothing(tmp_path, content, fragments):
    (tmp_path / "bad.csv").write_text(content)
    assert_one_line_error(run_prepare(tmp_path, "bad.csv", input_field="product", target_field="department"),
                          tmp_path, *fragments)


def test_unreadable_file_gives_one_line_error(tmp_path):
    (tmp_path / "broken.parquet").write_bytes(b"this is not parquet")
    assert_one_line_error(run_prepare(tmp_path, "broken.parquet"), tmp_path, "broken.parquet", "cannot read")


def test_missing_file_gives_one_line_error(tmp_path):
    assert_one_line_error(run_prepare(tmp_path, "nowhere.jsonl"), tmp_path, "nowhere.jsonl", "not found")


def test_prepare_drops_labels_and_duplicates(tmp_path):
    pd.DataFrame({"name": ["Milk", "milk ", "Peas", "Mystery"], "dept": ["dairy", "dairy", "frozen", "missing"]}) \
        .to_json(tmp_path / "items.jsonl", orient="records", lines=True)
    proc = run_prepare(tmp_path, "items.jsonl", input_field="name", target_field="dept", drop_labels=["missing"])
    assert proc.returncode == 0, proc.stderr
    rows = pd.read_json(tmp_path / "out" / "examples.jsonl", lines=True)
    assert rows["text"].tolist() == ["Milk", "Peas"] and rows["label"].tolist() == ["dairy", "frozen"]


def test_duplicate_ids_are_refused():
    table = pd.DataFrame({"id": [1, 1], "text": ["a", "b"], "label": ["x", "y"]})
    with pytest.raises(PipelineError, match="id '1'"):
        build_examples(table, "t.csv", "text", "label", [])


def test_class_counts_most_frequent_first():
    frame = pd.DataFrame({"label": ["b", "a", "b", "c", "a", "b"]})
    assert list(class_counts(frame).items()) == [("b", 3), ("a", 2), ("c", 1)]
