"""Dynamic batching: the model belongs to one worker thread, which gathers the requests that arrive within a short
window (up to a batch) and runs them through the model together, so throughput grows with the number of clients."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections import deque
from typing import Callable

log = logging.getLogger("finetune.serve")


class QueueFull(Exception):
    """More requests are waiting than the server takes (--max-queue)."""


class Closed(Exception):
    """The server is shutting down and takes no new work."""


@dataclasses.dataclass(eq=False)
class Job:
    """One request's work: `work` names the runner ("generate" or "predict"), `size` counts toward a batch; the
    worker hands events to the request's asyncio queue as they come."""

    work: str
    request: dict
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    size: int = 1
    cancelled: bool = False
    arrived: float = dataclasses.field(default_factory=time.monotonic)

    def emit(self, *event) -> None:
        """Hand an event to the request's queue (safe from the worker thread)."""
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class Batcher:
    """Runs jobs in batches in its own thread, each kind of work by its runner: `runners[job.work](jobs)`."""

    def __init__(self, runners: dict[str, Callable[[list[Job]], None]], window_s: float, max_batch: int,
                 max_queue: int):
        self.runners, self.window_s, self.max_batch, self.max_queue = runners, window_s, max_batch, max_queue
        self.waiting: deque[Job] = deque()
        self.closing = False
        self.condition = threading.Condition()
        self.thread = threading.Thread(target=self._loop, name="finetune-serve-model", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def submit(self, job: Job) -> None:
        with self.condition:
            if self.closing:
                raise Closed
            if len(self.waiting) >= self.max_queue:
                raise QueueFull
            self.waiting.append(job)
            self.condition.notify()

    def cancel(self, job: Job) -> None:
        """The request is gone (it timed out, or its client left): drop it if it waits, stop it if it runs."""
        job.cancelled = True
        with self.condition:
            if job in self.waiting:
                self.waiting.remove(job)

    def close(self) -> None:
        """Take no new work, finish what is waiting, and stop the thread."""
        with self.condition:
            self.closing = True
            self.condition.notify()
        if self.thread.is_alive():
            self.thread.join()

    def _next_batch(self) -> list[Job] | None:
        """The next batch (empty when its requests were all cancelled while it gathered), None once closed."""
        with self.condition:
            while not self.waiting and not self.closing:
                self.condition.wait()
            if not self.waiting:
                return None
            first = self.waiting[0]
            deadline = first.arrived + self.window_s
            while not self.closing and self._size(first.work) < self.max_batch:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.condition.wait(left)
            batch, size = [], 0
            for job in list(self.waiting):  # the oldest first; a request of another kind waits for the next batch
                if job.work == first.work and (not batch or size + job.size <= self.max_batch):
                    batch.append(job)
                    size += job.size
                    self.waiting.remove(job)
            return batch

    def _size(self, work: str) -> int:
        return sum(job.size for job in self.waiting if job.work == work)

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            if not batch:
                continue
            try:
                self.runners[batch[0].work](batch)
            except Exception as e:  # a failed batch answers its requests with the reason; the server goes on
                log.exception("a batch of %d %s requests failed", len(batch), batch[0].work)
                for job in batch:
                    job.emit("error", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
