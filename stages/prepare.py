"""prepare: read the source, validate it, drop duplicates; write examples and class counts."""

import argparse

from finetune import params
from finetune.examples import build_examples, class_counts
from finetune.files import write_json, write_jsonl
from finetune.sources import load_source
from finetune.stage import run

PARAMS = ("data",)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("examples", help="output: one JSON example per line")
    parser.add_argument("counts", help="output: class counts (metrics JSON)")
    args = parser.parse_args()
    data = params.read_all(PARAMS)["data"]

    table, origin = load_source(data.source)
    examples, summary = build_examples(table, origin, data.text_field, data.label_field, data.drop_labels)
    write_jsonl(args.examples, examples.to_dict("records"))
    write_json(args.counts, {**summary, "class_counts": class_counts(examples)})
    print(f"prepare: {summary['examples']} examples in {summary['classes']} classes "
          f"({summary['duplicates_removed']} duplicates and {summary['dropped_by_label']} dropped-label rows removed)")


if __name__ == "__main__":
    run(main)
