"""Run the train_qlora stage with its process of rank 1 refusing to train, as a real error on one GPU would:
`python -m tests.fail_on_rank <train_qlora's arguments>` (the test that one failing rank ends them all, in one line)."""

import os
import runpy

from finetune.errors import PipelineError
from finetune.train import training

if os.environ.get("RANK") == "1":
    def refuse(*args, **kwargs):
        raise PipelineError("rank 1 cannot train")

    training.train_model = refuse

runpy.run_module("stages.train_qlora", run_name="__main__")
