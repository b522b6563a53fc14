"""What every stage script shares: logging, and one-line errors with a non-zero exit (one line for all processes)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Callable


def run(main: Callable[[], None]) -> None:
    """Run a stage's or command's `main`; a PipelineError becomes one line on stderr and exit status 1, Ctrl-C one
    line and 130 (the shell's status for it)."""
    from finetune.errors import PipelineError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "httpx2", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        main()
    except PipelineError as e:
        if not _left_for_the_launcher(str(e)):
            print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:  # Ctrl-C: every output is written atomically, so what was under way is gone
        print("\nerror: interrupted (Ctrl-C); nothing was written", file=sys.stderr)
        sys.exit(130)


ERRORS_ENV = "FINETUNE_RANK_ERRORS"  # set by finetune/train/distributed.py: where a launched process leaves its error


def _left_for_the_launcher(message: str) -> bool:
    """In a process of a multi-process stage: leave the error for the launching stage, which prints one line for all."""
    folder = os.environ.get(ERRORS_ENV)
    if not folder or "LOCAL_RANK" not in os.environ:
        return False
    rank, world = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
    path = Path(folder) / f"rank-{rank}.txt"
    path.with_suffix(".tmp").write_text(f"{message} (process {rank} of {world})\n")
    os.replace(path.with_suffix(".tmp"), path)
    return True
