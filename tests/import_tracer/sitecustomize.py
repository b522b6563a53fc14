"""Record which finetune modules a stage ran: put this folder on PYTHONPATH and set IMPORT_TRACE_DIR.

When a `python -m stages.<name>` process ends, it writes IMPORT_TRACE_DIR/<name>-<pid>.json: the files (relative to
its working folder) of every finetune module it imported, whether at its start or inside a function it called.
tests/test_pipeline.py holds them against the stage's dependencies in dvc.yaml.
"""

import atexit
import json
import os
import sys

_FOLDER = os.environ.get("IMPORT_TRACE_DIR")


def _write() -> None:
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is None or not spec.name.startswith("stages."):
        return
    files = sorted({os.path.relpath(module.__file__) for name, module in list(sys.modules.items())
                    if (name == "finetune" or name.startswith("finetune.")) and getattr(module, "__file__", None)})
    with open(os.path.join(_FOLDER, f"{spec.name.removeprefix('stages.')}-{os.getpid()}.json"), "w") as f:
        json.dump(files, f)


if _FOLDER:
    atexit.register(_write)
