"""split: train / validation / test with a seed; no text (or conversation) in two splits; sizes capped by params."""

import argparse

import pandas as pd

from finetune import kinds, params
from finetune.data.splits import SPLITS
from finetune.files import atomic_path, read_jsonl, write_json, write_jsonl
from finetune.stage import run

PARAMS = ()
TASK_PARTS = ("split",)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("examples", help="input: examples from prepare")
    parser.add_argument("out_dir", help="output: folder for train/validation/test .jsonl")
    parser.add_argument("sizes", help="output: split sizes (metrics JSON)")
    args = parser.parse_args()
    task, _ = params.read_stage(PARAMS)
    split = task.split

    examples = pd.DataFrame(read_jsonl(args.examples))
    caps = {name: params.size_limit(getattr(split, f"max_{name}"))
            for name in SPLITS}
    splits, extra = kinds.of(task).split(examples, split, caps)
    sizes = {**{name: len(frame) for name, frame in splits.items()}, **extra}
    with atomic_path(args.out_dir) as out_dir:
        out_dir.mkdir()
        for name, frame in splits.items():
            write_jsonl(out_dir / f"{name}.jsonl", frame.to_dict("records"))
    write_json(args.sizes, sizes)
    print("split: " + ", ".join(f"{len(frame)} {name}" for name, frame in splits.items())
          + "".join(f" ({len(v)} {k.replace('_', ' ')})" for k, v in extra.items()))


if __name__ == "__main__":
    run(main)
