"""More than one process: a stage run again under `accelerate launch`, who writes, how work is shared and gathered.

With `distributed.processes` 1 nothing here changes a stage. Above 1 the stage's own command runs again
under `accelerate launch` with configs/accelerate/<strategy>.yaml, one process per GPU (on CPU: per share
of the cores, over gloo). The first process (rank 0) alone writes; an error on any rank ends them all and
the stage prints that one line.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

from finetune.errors import PipelineError
from finetune.param_schemas import DistributedParams
from finetune.stage import ERRORS_ENV

T = TypeVar("T")
R = TypeVar("R")

CONFIG_DIR = Path("configs/accelerate")
MAIN_ADDRESS_ENV = "FINETUNE_MAIN_ADDRESS"  # host:port of machine 0, with distributed.machines above 1
MACHINE_RANK_ENV = "FINETUNE_MACHINE_RANK"  # this machine's number, 0 to machines - 1


def rank() -> int:
    """This process's number among all processes (0 without accelerate launch)."""
    return int(os.environ.get("RANK", 0))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


def is_main() -> bool:
    """The process that writes outputs, logs and shows progress."""
    return rank() == 0


def launched() -> bool:
    """Whether this process was started by a distributed launcher (torchrun, accelerate launch)."""
    return "LOCAL_RANK" in os.environ


def config_file(strategy: str) -> Path:
    path = CONFIG_DIR / f"{strategy}.yaml"
    if not path.is_file():
        raise PipelineError(f"distributed.strategy is {strategy!r} but {path} is missing; run from the repository root "
                            "(the accelerate config files live in configs/accelerate/)")
    return path


def _gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _main_address(dist: DistributedParams) -> tuple[str, str, str]:
    """(main host, port, this machine's rank): localhost and a free port on one machine, else from the environment."""
    if dist.machines == 1:
        with socket.socket() as s:  # a free port, so that two stages (queued experiments) never collide
            s.bind(("127.0.0.1", 0))
            return "127.0.0.1", str(s.getsockname()[1]), "0"
    address, machine = os.environ.get(MAIN_ADDRESS_ENV, ""), os.environ.get(MACHINE_RANK_ENV, "")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not machine.isdigit() or int(machine) >= dist.machines:
        raise PipelineError(f"distributed.machines is {dist.machines}: set {MAIN_ADDRESS_ENV}=host:port (machine 0's "
                            f"address, the same on every machine) and {MACHINE_RANK_ENV}=0..{dist.machines - 1} "
                            f"(this machine's number); found {address!r} and {machine!r}")
    return host, port, machine


def launch_command(module: str, args: list[str], dist: DistributedParams) -> list[str]:
    """`accelerate launch` of `python -m module args` under the strategy's config, with the params' counts."""
    host, port, machine = _main_address(dist)
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file(dist.strategy)),
            "--num_processes", str(dist.processes * dist.machines), "--num_machines", str(dist.machines),
            "--machine_rank", machine, "--main_process_ip", host, "--main_process_port", port,
            "-m", module, *args]


def check(dist: DistributedParams) -> None:
    """Refuse what this machine cannot run: more processes than GPUs, or FSDP without GPUs."""
    gpus = _gpus()
    if gpus and dist.processes > gpus:
        raise PipelineError(f"distributed.processes is {dist.processes} but this machine has {gpus} GPU(s); "
                            f"set it to at most {gpus}")
    if not gpus and dist.strategy == "fsdp" and dist.processes * dist.machines > 1:
        raise PipelineError("distributed.strategy is fsdp but this machine has no GPU: accelerate shards weights on "
                            "CUDA devices only; on CPU use ddp")


def relaunch(dist: DistributedParams) -> bool:
    """Run this stage again under `accelerate launch` if the params ask for more than one process.

    Returns False when the caller should go on itself (one process, or already launched), True once the
    launched processes have all finished. A PipelineError on any rank comes back as one PipelineError:
    the launcher's own report of the failed worker is not shown.
    """
    if launched() or dist.processes * dist.machines == 1:
        return False
    check(dist)
    main = sys.modules["__main__"]
    module = main.__spec__.name if getattr(main, "__spec__", None) else None
    if not module:
        raise PipelineError("more than one process needs the stage run as a module (python -m stages.<name>)")
    env = dict(os.environ)
    if not _gpus():
        env["ACCELERATE_USE_CPU"] = "true"  # the config's MULTI_GPU then runs its processes over gloo
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // dist.processes)))  # no two share a core
    errors = Path(tempfile.mkdtemp(prefix="finetune-ranks-"))
    env[ERRORS_ENV] = str(errors)
    try:
        code = _run_forwarding(launch_command(module, sys.argv[1:], dist), env, errors)
        if code == 0:
            return True
        reported = sorted(errors.glob("rank-*.txt"), key=lambda p: (p.stat().st_mtime_ns, p.name))
        if reported:
            raise PipelineError(reported[0].read_text().strip())
        raise PipelineError(f"{module} failed in one of its {dist.processes * dist.machines} processes "
                            f"(exit status {code}); its traceback is above")
    finally:
        shutil.rmtree(errors, ignore_errors=True)


def _run_forwarding(cmd: list[str], env: dict, errors: Path) -> int:
    """Run `cmd`, passing its stderr through until a rank has reported an error (the rest is the launcher's traceback).

    SIGTERM and SIGINT are passed on, so that a pre-empted stage still writes its checkpoint. What was passed through
    is ended with a newline if it did not end one (a progress bar redraws its line with "\r"), so that the error the
    caller prints starts a line of its own.
    """
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE)
    last = [b"\n"]

    def forward() -> None:
        fd = proc.stderr.fileno()
        while chunk := os.read(fd, 65536):
            if not any(errors.iterdir()):
                sys.stderr.buffer.write(chunk)
                sys.stderr.buffer.flush()
                last[0] = chunk[-1:]

    reader = threading.Thread(target=forward, daemon=True)
    reader.start()
    previous = {sig: signal.signal(sig, lambda signum, _frame: proc.send_signal(signum))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    reader.join(timeout=5)
    if last[0] != b"\n":
        sys.stderr.buffer.write(b"\n")
        sys.stderr.buffer.flush()
    return code


def start() -> None:
    """In a launched process: join the process group; the other ranks show no warnings, logs or progress."""
    if not launched():
        return
    from accelerate import PartialState

    PartialState()  # nccl on GPUs, gloo on CPU (ACCELERATE_USE_CPU)
    if not is_main():
        import logging
        import warnings

        import transformers

        warnings.simplefilter("ignore")
        logging.getLogger().setLevel(logging.ERROR)
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()


def barrier() -> None:
    if world_size() > 1:
        import torch.distributed as dist

        dist.barrier()


def from_main(value: T) -> T:
    """Rank 0's `value` on every rank (a decision every rank must take alike)."""
    if world_size() == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gathered(items: list[T]) -> list[T]:
    """Every rank's `items`, rank after rank, on every rank."""
    if world_size() == 1:
        return list(items)
    import torch.distributed as dist

    boxes: list[Any] = [None] * world_size()
    dist.all_gather_object(boxes, items)
    return [item for box in boxes for item in box]


def map_batches(fn: Callable[[T], R], batches: list[T], progress: Callable[[Iterable], Iterable] = iter) -> list[R]:
    """`fn` of every batch, in batch order, on every rank: each rank computes every world_size-th batch.

    Whole batches are shared out, never split, so each result is computed on exactly the inputs one process
    would give it, and the gathered results equal one process's. `progress` wraps this rank's batches
    (rank 0 shows its share).
    """
    results = [(k, fn(batches[k])) for k in progress(range(rank(), len(batches), world_size()))]
    if world_size() == 1:
        return [r for _, r in results]
    return [r for _, r in sorted(gathered(results), key=lambda kr: kr[0])]


def per_process_batch(batch_size: int, accumulation: int, processes: int) -> tuple[int, int]:
    """(examples per process step, steps per update) that keep `batch_size` x `accumulation` examples an update.

    The params describe the recipe, a batch of batch_size x gradient_accumulation examples per optimizer
    update; more processes share it (batch divided first, else the accumulation), so the process count
    never changes what is learnt.
    """
    if batch_size % processes == 0:
        return batch_size // processes, accumulation
    if accumulation % processes == 0:
        return batch_size, accumulation // processes
    raise PipelineError(f"a batch of {batch_size} x gradient_accumulation {accumulation} examples cannot be shared "
                        f"evenly by {processes} processes: make the task's train.batch_size (or "
                        f"train.gradient_accumulation) a multiple of {processes}")

