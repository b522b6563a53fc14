"""A trained run as later commands use it: the base model it was trained on, how it was trained, and a check of
its folder before anything is loaded from it (the model libraries are imported only to load a model, so a command
given a damaged folder says so at once).

Everything that shaped training (prompt template, answer prefix, label set, chat format, system
message, base model, quantization) comes from the adapter's own `run.json`, so a later change to
params.yaml cannot make predictions drift from what the adapter learned.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from finetune import kinds
from finetune.errors import PipelineError
from finetune.model.folders import is_local, is_whole_model
from finetune.param_schemas import Section

RETRAIN = "retrain it (`dvc repro train_qlora`) or check it out again (`dvc checkout models/adapter`)"


@dataclasses.dataclass(frozen=True)
class TrainedRun:
    """What train_qlora recorded next to the adapter."""

    folder: Path
    info: dict

    @property
    def kind(self) -> kinds.TaskKind:
        return kinds.get(self.info["task"]["kind"])

    @property
    def labels(self) -> list[str]:
        labels = self.info.get("labels")
        if not labels:
            raise PipelineError(f"{self.folder}/run.json records no label set; retrain it with this version "
                                "(`dvc repro train_qlora`)")
        return labels

    @property
    def prompt(self) -> Section:
        return self.kind.prompt_params(**self.info["task"]["prompt"])

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

    def head(self, tokenizer) -> dict | None:
        """The config of the classification head the run trained (finetune.model.head), or None."""
        return self.kind.model_head(self.info["task"], self.info.get("labels"), tokenizer)

    def quantization(self):
        from finetune.model import base_model

        q = self.info["params"]["quantization"]
        return base_model.quantization_config(self.method == "qlora", q["quant_type"], q["double_quant"])


def method_of(run_info: dict) -> str:
    """qlora, lora or full, as train_qlora recorded it (an adapter from before train.method: by its 4-bit switch)."""
    params = run_info["params"]
    if "method" in params.get("train", {}):
        return params["train"]["method"]
    return "qlora" if params["quantization"].get("load_in_4bit", True) else "lora"


def read_run(folder: str | Path) -> TrainedRun:
    """The folder's run.json, checked: it reads, names a known kind and the params the commands use."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PipelineError(f"{folder}: no such folder; point at a folder written by train_qlora "
                            "(default models/adapter, made by `dvc repro`), merge or export")
    path = folder / "run.json"
    if not path.is_file():
        raise PipelineError(f"{folder}: no run.json; point at a folder written by train_qlora "
                            "(default models/adapter, made by `dvc repro`), merge or export")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        task, model = info["task"], info["params"]["base_model"]
        if not isinstance(task["prompt"], dict) or not (model["name"] and model["revision"]):
            raise TypeError
        kind = kinds.get(task["kind"])
        kind.prompt_params(**task["prompt"])
        int(task["train"]["max_length"])
    except (ValueError, UnicodeDecodeError):
        raise PipelineError(f"{path}: not valid JSON; {RETRAIN}") from None
    except (KeyError, TypeError, PipelineError):
        raise PipelineError(f"{path}: not the run.json train_qlora writes (its task, prompt or base model is "
                            f"missing or damaged); {RETRAIN}") from None
    return TrainedRun(folder, info)


def check_weights(run: TrainedRun) -> None:
    """The folder's weights are there and whole (a safetensors header that reads and files as long as it says)."""
    if run.is_whole_model:
        files = sorted(run.folder.glob("*.safetensors"))
        what = "model.safetensors (the whole model's weights)"
    else:
        files = [run.folder / "adapter_model.safetensors"] if (run.folder / "adapter_config.json").is_file() else []
        what = "adapter_config.json and adapter_model.safetensors (the adapter)"
    if not files or not all(f.is_file() for f in files):
        raise PipelineError(f"{run.folder}: no {what}; {RETRAIN}")
    for file in files:
        _check_safetensors(file)


def _check_safetensors(path: Path) -> None:
    """A safetensors file is an 8-byte header size, a JSON header, and the tensors' bytes the header accounts for."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            length = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(length)) if 0 < length <= size - 8 else None
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        if 8 + length + end != size:
            raise ValueError
    except (ValueError, TypeError, AttributeError, KeyError, IndexError, UnicodeDecodeError):
        raise PipelineError(f"{path}: damaged or cut short ({size:,} bytes); {RETRAIN}") from None


def check_base_present(run: TrainedRun) -> None:
    """An adapter's base model, when it is a local folder, is there (a hub id is looked up when loading)."""
    if run.is_whole_model or not is_local(run.base_name):
        return
    if not (Path(run.base_name).expanduser() / "config.json").is_file():
        raise PipelineError(f"{run.folder} was trained on the base model {run.base_name}, which is not here; "
                            "run the command from the project's folder, or restore the base model (`dvc pull` or "
                            "`dvc repro base_model`)")


def check_base_unchanged(run: TrainedRun) -> None:
    """A local base folder must be the one the adapter was trained on (its files' hash is in run.json)."""
    from finetune.model import base_model

    recorded = run.info.get("base_model", {}).get("sha256")
    if recorded is None or not is_local(run.base_name):
        return
    if base_model.identity(run.base_name, run.base_revision).get("sha256") != recorded:
        raise PipelineError(f"base model folder {run.base_name} has changed since {run.folder} was trained on it; "
                            "restore it, or retrain the adapter (`dvc repro train_qlora`)")


def load_base(run: TrainedRun, tokenizer, quantized: bool = True):
    """The base model as training saw it: in 4-bit (dense-copied when small) when it was trained so, unless not
    `quantized`; with a new classification head where the run trained one (the adapter holds its weights)."""
    from finetune.model import base_model

    check_base_unchanged(run)
    model = base_model.load_model(run.base_name, run.base_revision, run.quantization() if quantized else None,
                                  head=run.head(tokenizer))
    return base_model.dense_copy(model)


def load_trained(folder: str | Path):
    """The adapter on its base model, or a merged folder as it is, ready for inference; returns (run, model, tokenizer).
    The folder is checked first: its run.json, its weights, the base it names."""
    from finetune.model import base_model
    from finetune.model.adapters import load_adapter

    run = read_run(folder)
    check_weights(run)
    check_base_present(run)
    tokenizer = base_model.load_tokenizer(str(run.folder), "main")  # saved beside the adapter or merged model
    if run.is_whole_model:  # a merged folder, or full fine-tuning's: a plain model
        model = base_model.load_model(str(run.folder), "main")
    else:
        model = load_adapter(load_base(run, tokenizer), str(run.folder))
    model.eval()
    return run, model, tokenizer
