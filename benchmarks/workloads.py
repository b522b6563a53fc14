"""The workloads of the 7B throughput benchmark (`qlora_throughput.py`): real lengths and answer positions, random ids.

`profile` (on the CPU machine) encodes the Instacart training split and the embedded chitchat conversations as the
pipeline encodes them and keeps only each example's length and labelled spans (.bench/length_profiles.json);
`workload` turns a profile into examples with random token ids of any vocabulary, on the GPU machine.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import torch

SEQUENCE = 512
IGNORE_INDEX = -100


def label_spans(labels: list[int]) -> list[list[int]]:
    """[start, end) runs of positions that carry a label."""
    spans, start = [], None
    for i, label in enumerate(labels + [IGNORE_INDEX]):
        if label != IGNORE_INDEX and start is None:
            start = i
        elif label == IGNORE_INDEX and start is not None:
            spans.append([start, i])
            start = None
    return spans


def profile(out: Path, instacart_split: Path) -> None:
    """The real lengths and answer positions of each workload, encoded as the pipeline encodes them."""
    from finetune import kinds, params
    from finetune.data import dialogues, sources
    from finetune.files import read_jsonl
    from finetune.model import base_model
    from finetune.model.embedded import EMBEDDED_DIR
    from finetune.text.chat import encode_conversation

    tokenizer = base_model.load_tokenizer(str(EMBEDDED_DIR), "main")
    task = params.read_task("params.yaml", None, "instacart")
    instacart = kinds.of(task).encode(tokenizer, read_jsonl(instacart_split / "train.jsonl"), task)
    whole = params.replace(params.read_task("params.yaml", None, "chitchat").data, turns=0)  # whole conversations
    conversations, _ = dialogues.build_dialogues(sources.load_chitchat(), "chitchat", whole)
    dialogue = [encode_conversation(tokenizer, m, "", "plain", SEQUENCE) for m in conversations["messages"]]
    record = {name: [[len(e["input_ids"]), label_spans(e["labels"])] for e in encoded]
              for name, encoded in (("instacart", instacart), ("dialogue", dialogue))}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record))
    for name, rows in record.items():
        lengths = [n for n, _ in rows]
        print(f"{name}: {len(lengths)} examples, mean {statistics.mean(lengths):.1f}, longest {max(lengths)}")


def describe(rows: list) -> dict:
    lengths = sorted(n for n, _ in rows)
    return {"examples": len(lengths), "mean_tokens": round(statistics.mean(lengths), 1),
            "median_tokens": lengths[len(lengths) // 2], "longest": lengths[-1],
            "padding_waste_at_512": round(SEQUENCE / statistics.mean(lengths), 2)}


def workload(name: str, profiles: dict, vocab: int, seed: int = 0) -> list[dict]:
    """Examples with random ids in `vocab` and the workload's real lengths and label positions."""
    gen = torch.Generator().manual_seed(seed)
    rows = profiles[name] if name != "full512" else [[SEQUENCE, [[0, SEQUENCE]]]] * 4096
    examples = []
    for length, spans in rows:
        ids = torch.randint(0, vocab, (length,), generator=gen).tolist()
        labels = [IGNORE_INDEX] * length
        for start, end in spans:
            labels[start:end] = ids[start:end]
        examples.append({"input_ids": ids, "attention_mask": [1] * length, "labels": labels})
    return examples


def stand_in_tokenizer():
    """A tokenizer object for TRL, which refuses anything else: the examples come as ids, it only reads the pad id (0)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = Tokenizer(models.WordLevel({"<pad>": 0, "<unk>": 1}, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=vocab, pad_token="<pad>", unk_token="<unk>", eos_token="<pad>")
