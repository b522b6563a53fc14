"""The PR report's parts: each kind's part (probe answers old against new, the side-by-side confusion matrices), the
loss curves, what a failed read says; the whole report in test_team.py."""

from __future__ import annotations

import pandas as pd
import pytest
from PIL import Image

from finetune import kinds
from finetune.errors import PipelineError
from finetune.evaluate.plots import curve_from_text, plot_losses
from finetune.report import pr_report


def test_probe_answers_are_shown_before_and_after_and_a_new_probe_says_so(tmp_path):
    old = {"predictions": None, "details": {"probes": [{"prompt": "hi", "base": "b", "finetuned": "hello | there"}]}}
    new = {"predictions": None, "details": {"probes": [{"prompt": "hi", "base": "b", "finetuned": "hey"},
                                                       {"prompt": "new one", "base": "b", "finetuned": "x"}]}}
    lines = kinds.get("generation").review_sections("main", old, new, tmp_path, "img")
    table = lines[lines.index("## Probe answers") + 2].splitlines()
    assert table[0] == "| prompt | fine-tuned at `main` | fine-tuned now |"
    assert table[2] == "| hi | hello \\| there | hey |"  # a pipe in an answer does not break the table
    assert table[3] == "| new one | (not asked) | x |"


def test_the_two_confusion_matrices_share_their_labels_side_by_side(tmp_path):
    old = pd.DataFrame({"actual": ["a", "b", "b"], "finetuned": ["a", "a", "b"]})
    new = pd.DataFrame({"actual": ["a", "b", "c"], "finetuned": ["a", "b", "b"]})
    lines = kinds.get("classification").review_sections("main", {"predictions": old}, {"predictions": new}, tmp_path,
                                                        "img")
    assert "![confusion matrices](img/confusion.png)" in lines
    width, height = Image.open(tmp_path / "confusion.png").size
    assert width > 1.8 * height  # two square panels side by side


def test_both_loss_curves_are_drawn_in_optimizer_steps(tmp_path):
    tsv = "timestamp\tstep\tloss\n1\t0\t2.0\n2\t1\t1.5\n"
    steps, values = curve_from_text(tsv)
    assert (steps, values) == ([0.0, 1.0], [2.0, 1.5])
    plot_losses([("main", (steps, values), ([], []), 10), ("this change", (steps, values), ([1.0], [1.7]), 5)],
                tmp_path / "l.png")
    assert (tmp_path / "l.png").stat().st_size > 5_000


def test_a_read_that_fails_for_another_reason_than_a_missing_file_says_what_failed(tmp_path, monkeypatch):
    import dvc.api

    def broken(*args, **kwargs):
        raise ValueError("remote 'storage' answered 500")

    monkeypatch.setattr(dvc.api, "read", broken)
    with pytest.raises(PipelineError, match=r"cannot read metrics/eval.json at 'main': remote 'storage' answered 500"):
        pr_report.read_at("main", "metrics/eval.json")


def test_a_file_missing_at_the_base_revision_is_none(tmp_path, monkeypatch):
    import dvc.api
    from dvc.exceptions import PathMissingError

    def missing(path, **kwargs):
        raise PathMissingError(path, ".")

    monkeypatch.setattr(dvc.api, "read", missing)
    assert pr_report.read_at("main", "metrics/predictions.csv") is None
