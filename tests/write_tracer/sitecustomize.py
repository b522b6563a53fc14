"""Record what each process of a multi-process stage writes: put this folder on PYTHONPATH and set WRITE_TRACE_DIR.

Every process started under a distributed launcher (LOCAL_RANK set) appends one JSON line per write to
WRITE_TRACE_DIR/rank-<RANK>.jsonl: files opened for writing, folders made, files renamed or removed (Python's
audit events), and the tensors torch.save and safetensors write from C++ and Rust, which no audit event sees.
"""

import json
import os
import sys

_FOLDER = os.environ.get("WRITE_TRACE_DIR")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_busy = False


def _record(event, path):
    global _busy
    if _busy or path is None:
        return
    _busy = True
    try:
        path = os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else None
        if path is not None:
            with open(os.path.join(_FOLDER, f"rank-{os.environ.get('RANK', '0')}.jsonl"), "a") as f:
                f.write(json.dumps({"event": event, "path": os.path.abspath(path)}) + "\n")
    finally:
        _busy = False


def _hook(event, args):
    if event == "open":
        path, mode, flags = args
        if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (mode is None and flags & _WRITE_FLAGS):
            _record("open", path)
    elif event in ("os.mkdir", "os.remove", "os.rmdir", "os.rename", "os.replace", "shutil.rmtree", "shutil.copyfile"):
        _record(event, args[1] if event in ("os.rename", "os.replace", "shutil.copyfile") else args[0])


def _wrap(module, name):
    original = getattr(module, name)

    def traced(obj, f, *args, **kwargs):
        _record(f"{module.__name__}.{name}", f if isinstance(f, (str, bytes, os.PathLike)) else None)
        return original(obj, f, *args, **kwargs)

    setattr(module, name, traced)


if _FOLDER and "LOCAL_RANK" in os.environ:
    sys.addaudithook(_hook)
    import safetensors.torch
    import torch

    _wrap(torch, "save")
    _wrap(safetensors.torch, "save_file")
