"""export: the adapter merged into its base (both ways measured), llama.cpp GGUF files, model cards; all checked."""

import argparse
from pathlib import Path

from finetune import params
from finetune.files import atomic_path, write_json
from finetune.stage import run

PARAMS = ("evaluate", "export")
OFF = ("The export stage is off (`export.enabled: false` in params.yaml). Run `dvc exp run -S export.enabled=true`\n"
       "(or set it in params.yaml and `dvc repro`) to write adapter/, merged/ and gguf/ here, with their model cards.\n")
TASK_PARTS = ("evaluate", "card")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("split_dir", help="input: folder with test.jsonl")
    parser.add_argument("adapter_dir", help="input: the adapter from train_qlora")
    parser.add_argument("metrics_dir", help="input: eval.json and predictions.csv from evaluate")
    parser.add_argument("release_dir", help="output: adapter/, merged/ and gguf/, each with its model card")
    parser.add_argument("figures", help="output: metrics JSON of both merges and the GGUF checks")
    args = parser.parse_args()
    task, p = params.read_stage(PARAMS)
    export = p["export"]

    if not export.enabled:
        with atomic_path(args.release_dir) as release:
            release.mkdir()
            (release / "README.md").write_text(OFF)
        write_json(args.figures, {"enabled": False})
        print("export: off (export.enabled: false); `dvc exp run -S export.enabled=true` makes models/release")
        return

    # Imported only when on: the model libraries take seconds to load, and the default has export off.
    from finetune.deliver.export import release
    from finetune.model import base_model

    batch_size = params.evaluation_batch_size(p["evaluate"].batch_size, on_gpu=base_model.device().type == "cuda")
    figures = release(Path(args.split_dir), Path(args.adapter_dir), Path(args.metrics_dir), Path(args.release_dir),
                      task, export, batch_size, p["evaluate"].memory_gib)
    write_json(args.figures, figures)
    print("export: " + "; ".join(f"merged into {k}: agreement {v['agreement_with_adapter']}"
                                 for k, v in figures["merge"].items()))


if __name__ == "__main__":
    run(main)
