"""Per-step work: one ordered list of hooks, run at the end of every denoising step of every
pipeline call of a prediction (diffusers' callback_on_step_end). Each hook takes what diffusers
hands the callback and returns its kwargs: the cancel check, previews, DeepCache's window, and
anything later, each registered where it is set up, none wrapping another."""

from collections.abc import Callable
from typing import Any

Hook = Callable[[Any, int, Any, dict], dict]


class StepHooks:
    def __init__(self) -> None:
        self.hooks: list[Hook] = []

    def add(self, hook: Hook) -> None:
        self.hooks.append(hook)

    def __call__(self, pipe: Any, step: int, timestep: Any, kwargs: dict) -> dict:
        for hook in self.hooks:
            kwargs = hook(pipe, step, timestep, kwargs)
        return kwargs
