"""What every stage script shares: logging, and one-line errors with a non-zero exit."""

from __future__ import annotations

import logging
import os
import sys
from typing import Callable


def run(main: Callable[[], None]) -> None:
    """Run a stage's `main`; a PipelineError becomes one line on stderr and exit status 1."""
    from finetune.errors import PipelineError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "httpx2", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        main()
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
