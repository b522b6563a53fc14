"""The PR report's parts: probe answers old against new, the side-by-side images; the whole report in test_team.py."""

from __future__ import annotations

import pandas as pd
from PIL import Image

from finetune.report import pr_report
from finetune.report.reporting import curve_from_text


def test_probe_answers_are_shown_before_and_after_and_a_new_probe_says_so():
    old = [{"prompt": "hi", "base": "b", "finetuned": "hello | there"}]
    new = [{"prompt": "hi", "base": "b", "finetuned": "hey"}, {"prompt": "new one", "base": "b", "finetuned": "x"}]
    table = pr_report.probes_table(old, new, "main").splitlines()
    assert table[0] == "| prompt | fine-tuned at `main` | fine-tuned now |"
    assert table[2] == "| hi | hello \\| there | hey |"  # a pipe in an answer does not break the table
    assert table[3] == "| new one | (not asked) | x |"


def test_the_two_confusion_matrices_share_their_labels_side_by_side(tmp_path):
    old = pd.DataFrame({"actual": ["a", "b", "b"], "finetuned": ["a", "a", "b"]})
    new = pd.DataFrame({"actual": ["a", "b", "c"], "finetuned": ["a", "b", "b"]})
    pr_report.plot_confusions([("before", old), ("after", new)], tmp_path / "c.png")
    width, height = Image.open(tmp_path / "c.png").size
    assert width > 1.8 * height  # two square panels side by side


def test_both_loss_curves_are_drawn_in_optimizer_steps(tmp_path):
    tsv = "timestamp\tstep\tloss\n1\t0\t2.0\n2\t1\t1.5\n"
    steps, values = curve_from_text(tsv)
    assert (steps, values) == ([0.0, 1.0], [2.0, 1.5])
    pr_report.plot_losses([("main", (steps, values), ([], []), 10), ("this change", (steps, values), ([1.0], [1.7]), 5)],
                          tmp_path / "l.png")
    assert (tmp_path / "l.png").stat().st_size > 5_000
