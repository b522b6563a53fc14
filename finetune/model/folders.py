"""What a model folder is, read from its files alone (no model library imported): local or on the hub, a whole model
or an adapter. The commands check a folder with these before they load anything."""

from __future__ import annotations

from pathlib import Path

LOCAL_PREFIXES = ("models/", "./", "../", "/", "~")


def is_local(name: str) -> bool:
    """A folder on this machine (it exists, or is named as a path), not a hub id."""
    return Path(name).expanduser().exists() or name.startswith(LOCAL_PREFIXES)


def is_whole_model(folder: str | Path) -> bool:
    """A full fine-tuning result (a model folder) rather than an adapter."""
    folder = Path(folder)
    return (folder / "config.json").is_file() and not (folder / "adapter_config.json").is_file()
