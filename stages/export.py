"""export: the adapter merged into its base (both ways measured), llama.cpp GGUF files, model cards; all checked."""

import argparse
from pathlib import Path

import pandas as pd

from finetune import params
from finetune.deliver import card
from finetune.deliver.export import check_whole_model, compare_merges, copy_adapter, gguf_files
from finetune.deliver.merge import merged_run_info, save_merged
from finetune.deliver.trained import read_run
from finetune.files import atomic_path, read_json, read_jsonl, write_json
from finetune.model import base_model
from finetune.stage import run

PARAMS = ("evaluate", "export")
OFF = ("The export stage is off (`export.enabled: false` in params.yaml). Run `dvc exp run -S export.enabled=true`\n"
       "(or set it in params.yaml and `dvc repro`) to write adapter/, merged/ and gguf/ here, with their model cards.\n")
TASK_PARTS = ("evaluate",)


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
    batch_size = params.evaluation_batch_size(p["evaluate"].batch_size, on_gpu=base_model.device().type == "cuda")

    if not export.enabled:
        with atomic_path(args.release_dir) as release:
            release.mkdir()
            (release / "README.md").write_text(OFF)
        write_json(args.figures, {"enabled": False})
        print("export: off (export.enabled: false); `dvc exp run -S export.enabled=true` makes models/release")
        return

    trained = read_run(args.adapter_dir)
    test = read_jsonl(Path(args.split_dir) / "test.jsonl")
    predictions = pd.read_csv(Path(args.metrics_dir) / "predictions.csv", keep_default_na=False)
    evaluation = read_json(Path(args.metrics_dir) / "eval.json")
    tokenizer = base_model.load_tokenizer(str(trained.folder), "main")
    generation = ({"max_new_tokens": task.evaluate.max_new_tokens,
                   "no_repeat_ngram_size": task.evaluate.no_repeat_ngram_size} if task.is_generation else {})
    answers = predictions["finetuned"].astype(str).tolist()
    if trained.is_whole_model:  # full fine-tuning: nothing to merge
        merges, model = check_whole_model(trained, tokenizer, test, answers, batch_size, p["evaluate"].memory_gib,
                                          generation)
    else:
        merges, model = compare_merges(trained, tokenizer, test, answers, export.merge_into, batch_size,
                                       p["evaluate"].memory_gib, generation)
    merged_into = "none" if trained.is_whole_model else export.merge_into
    figures = {"enabled": True, "merge": merges, "merged_into": merged_into}

    with atomic_path(args.release_dir) as release:
        if not trained.is_whole_model:
            copy_adapter(trained.folder, release / "adapter")
        merged_info = merged_run_info(trained, merged_into, model)
        save_merged(model, tokenizer, release / "merged", merged_info)
        figures["gguf"] = gguf_files(release / "merged", release / "gguf", export.gguf)
        cards = {**({} if trained.is_whole_model else {"adapter": trained.info}), "merged": merged_info, **({"gguf": merged_info} if figures["gguf"] else {})}
        for artifact, info in cards.items():
            card.write_card(release / artifact, card.model_card(info, evaluation, artifact, extra=figures))
    write_json(args.figures, figures)
    print("export: " + "; ".join(f"merged into {k}: agreement {v['agreement_with_adapter']}" for k, v in merges.items()))


if __name__ == "__main__":
    run(main)
