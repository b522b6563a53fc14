"""prepare: read the task's source, validate it, drop duplicates; write examples, their counts and the examples per class.

The counts per class go to a CSV (a bar plot in `dvc plots`), not to the metrics file: `dvc exp show` and
`dvc metrics diff` then list the few numbers a reviewer compares, not one column per class."""

import argparse

import pandas as pd

from finetune import kinds, params
from finetune.data.sources import load_source
from finetune.files import write_csv, write_json, write_jsonl
from finetune.stage import run

PARAMS = ()
TASK_PARTS = ("data",)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("examples", help="output: one JSON example per line")
    parser.add_argument("counts", help="output: example counts (metrics JSON)")
    parser.add_argument("class_counts", help="output: examples per class (CSV: label, examples; no rows for generation)")
    args = parser.parse_args()
    task, _ = params.read_stage(PARAMS)
    data = task.data

    kind = kinds.of(task)
    table, origin = load_source(data.source, data.encoding)
    examples, summary = kind.examples(table, origin, data)
    counts = kind.class_counts(examples)
    write_jsonl(args.examples, examples.to_dict("records"))
    write_json(args.counts, summary)
    write_csv(args.class_counts, pd.DataFrame({"label": list(counts), "examples": list(counts.values())}))
    print(f"prepare: task {task.name}: " + ", ".join(f"{k.replace('_', ' ')} {said(v)}" for k, v in summary.items()))


def said(value) -> str:
    """A count, or counts by reason ({"not_a_list": 2, ...}) as "2 not a list" ("none" when all are 0)."""
    if not isinstance(value, dict):
        return str(value)
    return ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in value.items() if n) or "none"


if __name__ == "__main__":
    run(main)
