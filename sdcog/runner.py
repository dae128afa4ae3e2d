"""Two Cog slots, one prediction at a time on the model.

Cog 0.23.1 frees a slot a moment after it has answered, so with one slot a client that sends its
next request at once sometimes got `409 At capacity`. predict() is async with two slots
(`@cog.concurrent(max=2)`; Cog allows more than one only for async predictors), and hands its
work to OneAtATime: each prediction runs in a worker thread after the one before it has ended.
A second request made while one runs waits for it; a third gets 409.

Cog cancels an async prediction by cancelling its task; the worker thread is then told to stop,
and raises PredictionCancelledError at its next denoising step.
"""

import asyncio
import threading
from collections.abc import Callable
from typing import TypeVar

from cog import CancelationException

# The number in predict.py's @concurrent(max=2), and COG_MAX_CONCURRENCY for local servers.
SLOTS = 2

T = TypeVar("T")


class PredictionCancelledError(Exception):
    """Raised in the worker thread when Cog has cancelled the prediction."""


def raise_if_set(event: threading.Event | None) -> None:
    """Between the steps of work that is not denoising (downloads, loading adapters)."""
    if event is not None and event.is_set():
        raise PredictionCancelledError("cancelled")


def stop_if_set(event: threading.Event) -> Callable:
    """A diffusers callback_on_step_end that ends the denoising once `event` is set."""

    def check(pipe: object, step: int, timestep: object, kwargs: dict) -> dict:
        if event.is_set():
            raise PredictionCancelledError("cancelled")
        return kwargs

    return check


class OneAtATime:
    def __init__(self) -> None:
        self._lock = asyncio.Lock()  # binds to Cog's event loop at first use

    async def run(self, work: Callable[[threading.Event], T]) -> T:
        """work(cancelled) in a worker thread, after every earlier call has finished."""
        async with self._lock:
            cancelled = threading.Event()
            job = asyncio.ensure_future(asyncio.to_thread(work, cancelled))
            try:
                return await asyncio.shield(job)
            except (asyncio.CancelledError, CancelationException):
                # Cog 0.23.1 sometimes cancels with its own CancelationException, which it then
                # reports as a failure: it recognises only asyncio's.
                cancelled.set()
                # The model is free again only when the thread has stopped.
                await asyncio.wait([job])
                raise asyncio.CancelledError from None
