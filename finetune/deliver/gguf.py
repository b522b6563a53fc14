"""GGUF files of a merged model folder, made by llama.cpp's own converter, and checked by loading them back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from finetune.errors import PipelineError
from finetune.files import atomic_path

LLAMA_CPP_PYTHON_VERSION = "0.3.36"  # the converter is the one vendored in this llama-cpp-python sdist
SDIST_ENV = "LLAMA_CPP_PYTHON_SDIST"  # overrides where the sdist is looked for
# `make setup` downloads it into the virtual environment (sys.prefix), wherever the project is run from
DEFAULT_SDIST = Path(sys.prefix) / "share/llama-cpp-python" / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"

# What convert_hf_to_gguf.py reads besides itself: its model classes, the gguf package they were written
# against (the converter puts gguf-py first on sys.path), and the chat templates some classes embed.
_VENDORED = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}/vendor/llama.cpp/"
_CONVERTER_PARTS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/gguf/", "models/templates/", "LICENSE")


def converter_script(sdist: str | Path | None = None) -> Path:
    """convert_hf_to_gguf.py, extracted (once) from the llama-cpp-python sdist into a folder beside it."""
    sdist = Path(sdist or os.environ.get(SDIST_ENV) or DEFAULT_SDIST)
    if not sdist.is_file():
        raise PipelineError(f"llama.cpp's converter is missing: {sdist} does not exist; run `make setup` "
                            f"(or set {SDIST_ENV} to a llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION} sdist)")
    folder = sdist.parent / f"converter-{LLAMA_CPP_PYTHON_VERSION}"
    if not (folder / "convert_hf_to_gguf.py").is_file():
        with atomic_path(folder) as tmp, tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(_VENDORED)
                       and m.name[len(_VENDORED):].startswith(_CONVERTER_PARTS) and (m.isfile() or m.isdir())]
            if not any(m.name == _VENDORED + "convert_hf_to_gguf.py" for m in members):
                raise PipelineError(f"{sdist} holds no {_VENDORED}convert_hf_to_gguf.py; replace it with the "
                                    f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION} sdist (`make setup`)")
            for m in members:
                m.name = m.name[len(_VENDORED):]
            tar.extractall(tmp, members=members, filter="data")
    return folder / "convert_hf_to_gguf.py"


def _last_error_line(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def _converter_input(model_dir: Path, scratch: Path) -> Path:
    """`model_dir`, or a view of it (links to its files) whose config.json gives multi-query Falcon one KV head.

    transformers saves num_kv_heads = num_attention_heads for multi-query Falcon (Falcon-7B), whose model
    ignores it and uses one key/value head; the converter trusts the number and cannot split the QKV weight.
    """
    config = json.loads((model_dir / "config.json").read_text())
    if not (config.get("model_type") == "falcon" and config.get("multi_query")
            and not config.get("new_decoder_architecture") and config.get("num_kv_heads", 1) != 1):
        return model_dir
    view = scratch / model_dir.name
    view.mkdir()
    for file in model_dir.iterdir():
        if file.name != "config.json":
            (view / file.name).symlink_to(file.resolve())
    (view / "config.json").write_text(json.dumps({**config, "num_kv_heads": 1}, indent=2))
    return view


# llama.cpp's converter (0.3.36) takes a sequence classification head only on BERT-family encoders (rerankers)
NO_HEAD = ("llama.cpp's converter writes no GGUF of a causal model with a classification head (it takes heads on "
           "BERT-family encoders only); use the merged transformers folder, or train with objective label_scoring")


def cannot_hold(model_dir: str | Path) -> str | None:
    """Why the folder's model cannot be a GGUF file, or None."""
    from finetune.model.base_model import is_classifier_folder

    return NO_HEAD if is_classifier_folder(str(model_dir)) else None


def convert(model_dir: str | Path, out_dir: str | Path, types: tuple[str, ...] = ("f16", "q8_0"),
            sdist: str | Path | None = None) -> dict[str, Path]:
    """One GGUF file per type (`out_dir/model-<type>.gguf`) of a plain transformers model folder."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise PipelineError(f"{model_dir} has no config.json: give the merged model's folder")
    if cannot_hold(model_dir):
        raise PipelineError(f"{model_dir}: {cannot_hold(model_dir)}")
    script = converter_script(sdist)
    env = {**os.environ, "TQDM_DISABLE": "1"}  # progress bars would otherwise end up on the error's line
    files = {}
    with tempfile.TemporaryDirectory() as scratch:
        source = _converter_input(model_dir, Path(scratch))
        for outtype in types:
            path = Path(out_dir) / f"model-{outtype}.gguf"
            with atomic_path(path) as tmp:
                done = subprocess.run([sys.executable, str(script), str(source), "--outtype", outtype,
                                       "--outfile", str(tmp)], capture_output=True, text=True, env=env)
                if done.returncode != 0:
                    raise PipelineError(f"llama.cpp's converter could not write {outtype} GGUF of {model_dir}: "
                                        f"{_last_error_line(done.stderr)}")
            files[outtype] = path
    return files


@torch.no_grad()
def check_readback(model_dir: str | Path, gguf_path: str | Path, sequences: int = 4, length: int = 32,
                   seed: int = 0) -> dict[str, float]:
    """Largest logit difference between the GGUF file, loaded back by transformers, and its source folder.

    Both run in float32 on the same seeded random token sequences. `max_rel` divides by the source's
    largest logit, so one tolerance holds whatever the model's logit scale. The loaded-back model
    carries a GGUF `hf_quantizer` (it cannot be saved or trained), which a forward pass does not mind.
    """
    gguf_path = Path(gguf_path)
    source = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    readback = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                    dtype=torch.float32).eval()
    if readback.config.vocab_size != source.config.vocab_size:
        raise PipelineError(f"{gguf_path} has a vocabulary of {readback.config.vocab_size} tokens and {model_dir} "
                            f"of {source.config.vocab_size}: it was not made from that folder; convert it again")
    ids = torch.randint(source.config.vocab_size, (sequences, length), generator=torch.Generator().manual_seed(seed))
    expected = source(input_ids=ids).logits.float()
    diff = (readback(input_ids=ids).logits.float() - expected).abs().max().item()
    return {"max_abs": diff, "max_rel": diff / expected.abs().max().item()}
