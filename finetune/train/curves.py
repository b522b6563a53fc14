"""The training curves DVCLive keeps (metrics/train_live): every number the Trainer logs of the training, none it logs
of the run, so that the same training gives the same curves however often it was interrupted (the timings go to the
run's timings file, finetune/train/training.py)."""

from __future__ import annotations

from pathlib import Path

from dvclive import Live
from transformers.integrations import DVCLiveCallback

# The run's, not the training's: its wall clock (train_runtime, eval_samples_per_second, ...) and train_loss, the mean
# loss of the steps this process ran (after a resume, of the steps since).
RUN_ONLY = ("_runtime", "_per_second", "train_loss")


class TrainingCurves(DVCLiveCallback):
    """DVCLive's callback for the Trainer, less what each log says of the run rather than the training."""

    def on_log(self, args, state, control, model=None, logs=None, **kwargs):
        logs = {key: value for key, value in (logs or {}).items() if not key.endswith(RUN_ONLY)}
        super().on_log(args, state, control, model=model, logs=logs, **kwargs)


def curves(folder: str | Path, resume: bool) -> TrainingCurves:
    """The callback that writes the curves into `folder`, continuing them when a run resumes."""
    return TrainingCurves(live=Live(str(folder), dvcyaml=False, save_dvc_exp=False, resume=resume))
