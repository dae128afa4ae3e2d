"""Cog's slots, one prediction at a time on the model.

Cog 0.23.1 frees a slot only after it has answered (it waits, in the background, for the worker
to say the slot is idle), so a client that sends its next request at once can find its last
slot still taken: with one slot 1 in 10-15 back-to-back requests got `409 At capacity`, with two
slots and two clients 12 in 300. predict() is async with SLOTS slots (`@cog.concurrent(max=4)`;
Cog allows more than one only for async predictors): each client may hold a second slot for that
moment, so two clients sending back to back never see 409. The model runs one prediction at a
time (OneAtATime): each runs in a worker thread after the one before it has ended, and requests
beyond the first wait their turn (first come, first served); a fifth concurrent request gets 409.

Cog cancels an async prediction by cancelling its task; the worker thread is then told to stop,
and raises PredictionCancelledError at its next denoising step, download or adapter load. The
cancels Cog 0.23.1 loses on the way are found and honoured by cog_cancel.
"""

import asyncio
import contextvars
import functools
import json
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from cog import CancelationException

from . import cog_cancel

# The number in predict.py's @concurrent(max=4), and COG_MAX_CONCURRENCY for local servers.
SLOTS = 4

T = TypeVar("T")


class OneAtATime:
    def __init__(self, status_file: Path | None = None) -> None:
        """status_file: where script/serve's supervisor reads how many predictions are inside
        predict(): Cog's slots all busy while none is would mean Cog has leaked them."""
        self._lock = asyncio.Lock()  # binds to Cog's event loop at first use
        # One thread for every prediction: torch's and oneDNN's per-thread buffers are made
        # once, not once per thread of a pool (about 25 MB more RSS over a pool's threads).
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prediction")
        self._inside = 0
        self._status = status_file
        self._report()

    async def stream(
        self, work: Callable[[threading.Event, Callable[[T], None]], list[T]]
    ) -> AsyncIterator[T]:
        """work(cancelled, emit) as run() runs it; what it emits as it goes (from its thread)
        is yielded at once, then the items it returns."""
        loop, items = asyncio.get_running_loop(), asyncio.Queue()

        def emit(item: T) -> None:
            loop.call_soon_threadsafe(items.put_nowait, item)

        job = asyncio.ensure_future(
            self.run(lambda cancelled: work(cancelled, emit), watch=asyncio.current_task())
        )
        item: asyncio.Task | None = None
        try:
            while not job.done() or not items.empty():
                item = asyncio.ensure_future(items.get())
                await asyncio.wait({item, job}, return_when=asyncio.FIRST_COMPLETED)
                if item.done():
                    yield item.result()
                else:
                    item.cancel()
            for result in job.result():
                yield result
        finally:
            # A cancel while waiting for the next item: the wait for it goes too (left pending,
            # asyncio would log it destroyed, paths and all, into a later prediction's logs).
            if item is not None and not item.done():
                item.cancel()
            if not job.done():  # cancelled: the model is free once the thread has stopped
                job.cancel()
                await asyncio.wait([job])

    async def run(
        self, work: Callable[[threading.Event], T], watch: asyncio.Task | None = None
    ) -> T:
        """work(cancelled) in the prediction thread, after every earlier call has finished.
        `watch`: the task Cog runs the prediction in (default: this one), for lost cancels."""
        task = watch or asyncio.current_task()
        watcher = asyncio.ensure_future(cog_cancel.honour_lost_cancels(task))
        self._inside += 1
        self._report()
        try:
            async with self._lock:
                return await self._in_thread(work)
        finally:
            watcher.cancel()
            self._inside -= 1
            self._report()

    async def _in_thread(self, work: Callable[[threading.Event], T]) -> T:
        cancelled = threading.Event()
        # In this task's context: Cog routes what the thread prints to this prediction's logs.
        call = functools.partial(contextvars.copy_context().run, work, cancelled)
        job = asyncio.get_running_loop().run_in_executor(self._thread, call)
        try:
            return await asyncio.shield(job)
        except (asyncio.CancelledError, CancelationException):
            # Cog 0.23.1 sometimes cancels with its own CancelationException, which it then
            # reports as a failure: it recognises only asyncio's.
            cancelled.set()
            # The model is free again only when the thread has stopped.
            await asyncio.wait([job])
            if not job.cancelled():
                job.exception()  # else asyncio logs it, traceback and all, as never retrieved
            raise asyncio.CancelledError from None

    def _report(self) -> None:
        if self._status is not None:
            part = self._status.with_suffix(".part")
            part.write_text(json.dumps({"predictions": self._inside}))
            part.replace(self._status)
