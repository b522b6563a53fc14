"""What the pipeline writes for people and tools to read: each field of `metrics/*.json` and of the trained folder's
`run.json`, with its meaning.

docs/reference/outputs.md is generated from these classes (`python docs/outputs_reference.py`), and the tests check
real outputs of both task kinds against them, so neither the page nor these classes can fall behind the stages.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Output(BaseModel):
    """One JSON object the pipeline writes: no field that is not described here."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class DataCounts(Output):
    """`metrics/data.json` (prepare): what became of the source's rows."""

    rows: int
    """rows read from the source"""
    whitespace_normalised: int
    """texts whose runs of spaces, tabs or line breaks were collapsed to one space"""
    duplicates_removed: int
    """examples dropped because an identical one came earlier"""
    examples: int
    """examples kept: the input of split"""
    dropped_by_label: int | None = None
    """classification: rows dropped for an empty label or one of data.drop_labels"""
    classes: int | None = None
    """classification: distinct labels among the examples"""
    dropped_by_response: int | None = None
    """generation: conversations dropped for an empty last answer"""
    groups: int | None = None
    """generation: conversations the examples come from (split keeps each in one part)"""
    mean_turns: float | None = None
    """generation: mean number of turns an example holds"""
    dropped_rows: dict[str, int] | None = None
    """conversation files: rows refused, by reason (not_a_list, unknown_role, empty_content, ...); absent when none"""


class SplitSizes(Output):
    """`metrics/split.json` (split): examples in each part, after the caps of tasks.<name>.split."""

    train: int
    """examples trained on"""
    validation: int
    """examples whose loss is measured during training"""
    test: int
    """examples evaluate answers and scores"""


class TrainMetrics(Output):
    """`metrics/train.json` (train_qlora), also `result` in run.json: what training made, the same for the same
    params, data and machine."""

    method: str
    """train.method: qlora, lora or full"""
    final_loss: float
    """training loss of the last logged steps"""
    validation_loss: float | None
    """loss on the validation split after training (null without one)"""
    steps: int
    """optimizer steps"""
    trained_tokens: int
    """tokens the loss was computed on (answers only, padding excluded)"""
    trainable_parameters: int
    """parameters that were trained (the adapter's, a head's, or every one)"""
    total_parameters: int
    """parameters of the model, trained or not"""
    target_modules: list[str]
    """the layer names LoRA was put on (empty for full fine-tuning)"""
    batch_size: int
    """examples per process step (a GPU may have grown the task's: train.gpu_batch_tokens)"""
    learning_rate: float
    """peak learning rate of the schedule: the task's, scaled when a GPU grew its batch"""
    processes: int
    """processes that shared each batch (distributed.processes x machines)"""
    gradient_checkpointing: bool
    """whether activations were recomputed in the backward pass"""
    padding_free: bool
    """whether a batch's examples were packed into one row"""
    compiled: bool
    """whether the decoder blocks ran under torch.compile"""
    device: str
    """where training ran: cpu or cuda"""


class TrainTimings(Output):
    """`metrics/timings/train_qlora.json`: how the run went on this machine (kept out of train.json, so the same
    training gives the same artifacts whatever the clock said)."""

    runtime_s: float
    """seconds from the first step to the last"""
    tokens_per_s: float
    """trained tokens a second"""
    peak_memory_gib: float
    """peak memory: the GPU's allocated memory, or the process's resident memory on CPU"""
    resumed_from_step: int | None
    """the checkpoint's step a killed run resumed from (null: it started fresh)"""


class ClassificationScores(Output):
    """A model's scores in `metrics/eval.json` (classification): `base`, `finetuned` and `classic` (TF-IDF + logistic
    regression) each have one."""

    accuracy: float
    """share of test examples labelled right"""
    macro_f1: float
    """F1 averaged over the labels, each counting the same"""
    weighted_f1: float
    """F1 averaged over the labels, weighted by their test examples"""
    no_label_rate: float
    """share of answers that are none of the labels (evaluate.method generation; 0 by label scoring)"""


class GenerationScores(Output):
    """A model's scores in `metrics/eval.json` (generation): `base` and `finetuned` each have one."""

    bleu: float
    """corpus BLEU of the answers against the references (sacrebleu, 0-100)"""
    rouge_l: float
    """mean ROUGE-L F1 (rouge-score, 0-1)"""
    distinct_1: float
    """distinct words over all words of the answers"""
    distinct_2: float
    """distinct word pairs over all word pairs"""
    repeated_sentence_rate: float
    """share of answers that say a sentence twice"""
    perplexity: float
    """perplexity of the reference answers under the model"""


class EvaluateTimings(Output):
    """`metrics/timings/evaluate.json`: how long evaluate took on this machine."""

    seconds: dict[str, float]
    """seconds each model took to answer the test split (base, finetuned, classic)"""
    test_rows: int
    """test examples answered"""


class MergeFigures(Output):
    """One merge in `metrics/export.json`: the merged model's test answers against the adapter's. It also holds the
    task kind's scores of those answers (the fields of eval.json's scores)."""

    model_config = ConfigDict(extra="allow", use_attribute_docstrings=True)
    agreement_with_adapter: float
    """share of test answers equal to the adapter's"""
    rows: int
    """test examples answered"""


class GgufFigures(Output):
    """One GGUF file in `metrics/export.json`."""

    file: str
    """its name under models/release/gguf/"""
    mib: float
    """its size in MiB"""
    max_abs: float
    """largest difference of a logit between the file, read back, and the merged folder"""
    max_rel: float
    """that difference over the largest logit"""


class ExportFigures(Output):
    """`metrics/export.json` (export): what was made and how faithful it is; `{"enabled": false}` when export is off."""

    enabled: bool
    """export.enabled"""
    merge: dict[str, MergeFigures] | None = None
    """each merge measured, by the weights the adapter went into (dequantized, original; none for a whole model)"""
    merged_into: str | None = None
    """the merge kept in models/release/merged"""
    gguf: dict[str, GgufFigures] | None = None
    """each GGUF file, by type (f16, q8_0, ...)"""
    gguf_not_made: str | None = None
    """why no GGUF file could be made (a classification head: llama.cpp holds none); absent otherwise"""


class BaseModelIdentity(Output):
    """The base model a trained folder was made from."""

    name: str
    """base_model.name: a local folder or a hub id"""
    sha256: str | None = None
    """a local folder: the hash of its files (a changed base is refused by predict and export)"""
    revision: str | None = None
    """a hub id: base_model.revision"""


class MergeRecord(Output):
    """How a merged folder was made."""

    into: str
    """the weights the adapter went into: dequantized, original, or none (a whole model)"""
    adapter: str
    """the adapter folder it was merged from"""
    dtype: str
    """the merged weights' type (float32, bfloat16, ...)"""


class RunRecord(Output):
    """`run.json` in the trained folder (models/adapter, and the release's folders): what a folder was made from and
    how to use it; predict, chat, serve, merge, export and the cards read it."""

    task: dict
    """the task's name, kind, data, prompt and train settings (tasks.<name> in params.yaml, defaults filled in)"""
    labels: list[str] | None
    """classification: the labels, in the order of the head's outputs; null for generation"""
    params: dict
    """the shared sections training read: base_model, quantization, lora, train, distributed"""
    base_model: BaseModelIdentity
    """the base model's identity"""
    data_sha256: str
    """hash of the training split: the same data gives the same hash"""
    libraries: dict[str, str]
    """versions of python and the libraries that trained it"""
    result: TrainMetrics
    """metrics/train.json's figures"""
    merge: MergeRecord | None = None
    """merged folders only: how the merge was made"""


# The files, by path relative to the repository (run.json: in a trained folder).
FILES: dict[str, type[Output] | dict[str, type[Output]]] = {
    "metrics/data.json": DataCounts,
    "metrics/split.json": SplitSizes,
    "metrics/train.json": TrainMetrics,
    "metrics/timings/train_qlora.json": TrainTimings,
    "metrics/eval.json": {"classification": ClassificationScores, "generation": GenerationScores},
    "metrics/timings/evaluate.json": EvaluateTimings,
    "metrics/export.json": ExportFigures,
    "models/adapter/run.json": RunRecord,
}


def check(path: str, data: dict, kind: str | None = None) -> None:
    """Raise pydantic's ValidationError when `data`, the contents of the file at `path`, has a field not declared
    here or lacks one that is (eval.json: by its task's `kind`)."""
    declared = FILES[path]
    if isinstance(declared, dict):
        for model in data.values():
            declared[kind].model_validate(model)
    else:
        declared.model_validate(data)
