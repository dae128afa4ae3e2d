"""Where a prediction's time goes: one log line of stage timings, in milliseconds.

The VAE decode happens inside the pipeline call, so it is timed by hooks on the decoder and
taken out of the denoising time. On CUDA each stage ends with a synchronize, so the work is
counted in the stage that queued it.
"""

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from . import protocol

STAGES = ("read", "adapters", "prompts", "denoise", "decode", "face_fix", "upscale", "watermark",
          "safety", "encode")  # fmt: skip
# setup(): each part of the model, loaded straight to the device.
SETUP_STAGES = ("pipelines", "safety", "controlnets", "ip_adapters", "previews", "finishing",
                "compile")  # fmt: skip


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Timings:
    def __init__(self, stages: tuple[str, ...] = STAGES, label: str = "timings") -> None:
        self.label = label
        self.seconds = dict.fromkeys(stages, 0.0)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            _sync()
            self.seconds[name] += time.perf_counter() - start

    @contextmanager
    def denoising(self, vae: torch.nn.Module) -> Iterator[None]:
        """A stage of pipeline calls: decoder time goes to "decode", the rest to "denoise"."""
        decoding: list[float] = []

        def started(module: torch.nn.Module, args: tuple) -> None:
            _sync()
            decoding.append(time.perf_counter())

        def finished(module: torch.nn.Module, args: tuple, output: object) -> None:
            _sync()
            self.seconds["decode"] += time.perf_counter() - decoding.pop()

        hooks = [vae.decoder.register_forward_pre_hook(started),
                 vae.decoder.register_forward_hook(finished)]  # fmt: skip
        decode_before = self.seconds["decode"]
        try:
            with self.stage("denoise"):
                yield
        finally:
            for hook in hooks:
                hook.remove()
            self.seconds["denoise"] -= self.seconds["decode"] - decode_before

    @property
    def milliseconds(self) -> dict[str, float]:
        return {name: seconds * 1000 for name, seconds in self.seconds.items()}

    def line(self) -> str:
        return protocol.timings_line(self.milliseconds, self.label)
