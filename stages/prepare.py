"""prepare: read the task's source, validate it, drop duplicates; write examples and their counts."""

import argparse

from finetune import params
from finetune.dialogues import build_dialogues
from finetune.examples import build_examples, class_counts
from finetune.files import write_json, write_jsonl
from finetune.sources import load_source
from finetune.stage import run

PARAMS = ()
TASK_PARTS = ("data",)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("examples", help="output: one JSON example per line")
    parser.add_argument("counts", help="output: example and class counts (metrics JSON)")
    args = parser.parse_args()
    task, _ = params.read_stage(PARAMS)
    data = task.data

    table, origin = load_source(data.source, data.encoding)
    if task.is_generation:
        examples, summary = build_dialogues(table, origin, data.format, data.input_field, data.target_field,
                                            data.drop_labels, data.turns)
    else:
        examples, summary = build_examples(table, origin, data.input_field, data.target_field, data.drop_labels)
        summary["class_counts"] = class_counts(examples)
    write_jsonl(args.examples, examples.to_dict("records"))
    write_json(args.counts, summary)
    print(f"prepare: {summary['examples']} examples for task {task.name} "
          f"({summary['duplicates_removed']} duplicates removed)")


if __name__ == "__main__":
    run(main)
