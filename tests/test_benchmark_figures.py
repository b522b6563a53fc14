"""The current-figures table at the top of benchmarks/README.md is what benchmarks/figures.py writes from
benchmarks/results/ today, and the generator reads both the older and the newer result shapes."""

from __future__ import annotations

from benchmarks.figures import COMMAND, END, README, START, block, current_rows, read_results, with_block


def test_the_figures_table_is_current():
    readme = README.read_text(encoding="utf-8")
    assert START in readme and END in readme, f"benchmarks/README.md has no figures table: run `{COMMAND}`"
    assert readme == with_block(readme, block(read_results())), f"benchmarks/README.md is stale: run `{COMMAND}`"


def test_the_newest_file_gives_each_case_and_both_shapes_are_read():
    old_count = {"machine": {"cpu": "Xeon"}, "cases": [{"labels": 20, "rows": 128, "rows_per_s": 13.25,
                                                         "peak_rss_gib": 2.1}]}
    new_count = {"machine": {"cpu": "Xeon"}, "cases": [
        {"objective": "label_scoring", "labels": 20, "rows": 128, "rows_per_s": 14.0, "peak_rss_gib": 2.2},
        {"objective": "head", "labels": 20, "rows": 512, "rows_per_s": 90.0, "peak_rss_gib": 1.9}]}
    old_aisles = {"machine": "NVIDIA H200", "eval": {"finetuned": {"accuracy": 0.42, "macro_f1": 0.19}}}
    new_aisles = {"machine": "NVIDIA H200", "runs": [
        {"objective": "head", "eval": {"finetuned": {"accuracy": 0.5, "macro_f1": 0.3},
                                       "classic": {"accuracy": 0.58, "macro_f1": 0.37}}}]}
    rows = current_rows({
        "label_count_2026-12-01T230039Z.json": old_count, "label_count_2026-12-08T010000Z.json": new_count,
        "bigbasket_aisles_2026-12-01.json": old_aisles, "bigbasket_aisles_2026-12-08T0100Z.json": new_aisles,
        "bigbasket_aisles_2026-12-09T000000Z.json": {"runs": "unreadable"},  # skipped, not fatal
        "unknown_bench_2026-12-09T000000Z.json": {}, "no_date.json": {},
    })
    by_what = {row[0]: row for row in rows}
    assert len(rows) == 4
    scoring = by_what["`finetune predict` with 20 labels, label scoring"]
    assert scoring[1:4] == ["14.0 rows/s, peak 2.2 GiB", "CPU: Xeon", "2026-12-08"]  # the newer file wins
    assert "90.0 rows/s" in by_what["`finetune predict` with 20 labels, a classification head"][1]
    old = by_what["BigBasket aisles pipeline (133 labels), label scoring"]
    assert old[1] == "accuracy 0.42, macro-F1 0.19" and old[4] == (
        "[bigbasket_aisles_2026-12-01.json](results/bigbasket_aisles_2026-12-01.json)")
    assert by_what["BigBasket aisles pipeline (133 labels), a classification head"][1].startswith(
        "accuracy 0.5, macro-F1 0.3 (TF-IDF")


def test_the_block_replaces_only_the_generated_part():
    first = with_block("# Benchmarks\n\nThe log.\n", f"{START}\nold\n{END}")
    assert first == f"# Benchmarks\n\n{START}\nold\n{END}\n\nThe log.\n"
    assert with_block(first, f"{START}\nnew\n{END}") == f"# Benchmarks\n\n{START}\nnew\n{END}\n\nThe log.\n"
