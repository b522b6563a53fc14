"""A trained adapter as later commands use it: the base model it was trained on, and how it was trained.

Everything that shaped training (prompt template, answer prefix, label set, chat format, system
message, base model, quantization) comes from the adapter's own `run.json`, so a later change to
params.yaml cannot make predictions drift from what the adapter learned.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from finetune.errors import PipelineError
from finetune.files import read_json
from finetune.model import base_model
from finetune.model.adapters import load_adapter
from finetune.model.methods import is_whole_model
from finetune.param_schemas import ChatPromptParams, LabelPromptParams


@dataclasses.dataclass(frozen=True)
class TrainedRun:
    """What train_qlora recorded next to the adapter."""

    folder: Path
    info: dict

    @property
    def kind(self) -> str:
        return self.info["task"]["kind"]

    @property
    def is_generation(self) -> bool:
        return self.kind == "generation"

    @property
    def labels(self) -> list[str]:
        labels = self.info.get("labels")
        if not labels:
            raise PipelineError(f"{self.folder}/run.json records no label set; retrain it with this version "
                                "(`dvc repro train_qlora`)")
        return labels

    @property
    def prompt(self) -> LabelPromptParams | ChatPromptParams:
        cls = ChatPromptParams if self.is_generation else LabelPromptParams
        return cls(**self.info["task"]["prompt"])

    @property
    def max_length(self) -> int:
        return int(self.info["task"]["train"]["max_length"])

    @property
    def base_name(self) -> str:
        return self.info["params"]["base_model"]["name"]

    @property
    def base_revision(self) -> str:
        return self.info["params"]["base_model"]["revision"]

    @property
    def method(self) -> str:
        return method_of(self.info)

    @property
    def is_whole_model(self) -> bool:
        """A whole model folder (full fine-tuning's, or a merge), not an adapter."""
        return is_whole_model(self.folder)

    def quantization(self):
        q = self.info["params"]["quantization"]
        return base_model.quantization_config(self.method == "qlora", q["quant_type"], q["double_quant"])


def method_of(run_info: dict) -> str:
    """qlora, lora or full, as train_qlora recorded it (an adapter from before train.method: by its 4-bit switch)."""
    params = run_info["params"]
    if "method" in params.get("train", {}):
        return params["train"]["method"]
    return "qlora" if params["quantization"].get("load_in_4bit", True) else "lora"


def read_run(folder: str | Path) -> TrainedRun:
    """The adapter folder's run.json, or one line that says how to make it."""
    folder = Path(folder)
    if not (folder / "run.json").is_file():
        raise PipelineError(f"{folder}: no run.json; point at a folder written by train_qlora "
                            "(default models/adapter, made by `dvc repro`)")
    return TrainedRun(folder, read_json(folder / "run.json"))


def check_base_unchanged(run: TrainedRun) -> None:
    """A local base folder must be the one the adapter was trained on (its files' hash is in run.json)."""
    recorded = run.info.get("base_model", {}).get("sha256")
    if recorded is None or not base_model.is_local(run.base_name):
        return
    if base_model.identity(run.base_name, run.base_revision).get("sha256") != recorded:
        raise PipelineError(f"base model folder {run.base_name} has changed since {run.folder} was trained on it; "
                            "restore it, or retrain the adapter (`dvc repro train_qlora`)")


def load_base(run: TrainedRun, quantized: bool = True):
    """The base model as training saw it: in 4-bit (dense-copied when small) when it was trained so, unless not `quantized`."""
    check_base_unchanged(run)
    model = base_model.load_model(run.base_name, run.base_revision, run.quantization() if quantized else None)
    return base_model.dense_copy(model)


def load_trained(folder: str | Path):
    """The adapter on its base model, or a merged folder as it is, ready for inference; returns (run, model, tokenizer)."""
    run = read_run(folder)
    tokenizer = base_model.load_tokenizer(str(run.folder), "main")  # saved beside the adapter or merged model
    if run.is_whole_model:  # a merged folder, or full fine-tuning's: a plain model
        model = base_model.load_model(str(run.folder), "main")
    else:
        model = load_adapter(load_base(run), str(run.folder))
    model.eval()
    return run, model, tokenizer
