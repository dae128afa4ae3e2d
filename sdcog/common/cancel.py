"""A cancelled prediction, as the work inside it sees it: an event set by Cog's cancel
(sdcog/serving/runner.py), checked between steps of work, and the error that ends the work."""

import threading
from collections.abc import Callable


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
