"""What a result was made with: library versions, hashes of its inputs, the machine."""

from __future__ import annotations

import importlib.metadata
import platform
from pathlib import Path

from finetune.files import sha256_of

LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "scikit-learn", "sacrebleu", "rouge-score",
             "datasets", "dvc", "dvclive")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def data_hash(*paths: str | Path) -> str:
    """sha256 over the given data files."""
    return sha256_of(paths)
