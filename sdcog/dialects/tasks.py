"""Another system's task payload run as predictions: the dialect's translation into predict()'s
inputs, one prediction per input set, and the system's answer. The front door gives `predict`
(script/task: Cog's server, sdcog/tools/task.py)."""

from collections.abc import Callable
from pathlib import Path

from ..common import protocol
from . import ModelNames, a1111, hydrogen, opensourceais, real_esrgan, runware

DIALECTS = {"a1111": a1111, "hydrogen": hydrogen, "opensourceais": opensourceais,
            "real-esrgan": real_esrgan, "runware": runware}  # fmt: skip


def run(
    predict: Callable[[dict], dict], dialect: str, payload: object, build: ModelNames, out: Path
) -> str:
    """What the system answers, its images written to `out`; a ValueError names what the payload
    got wrong. `predict(inputs)` returns the finished prediction as Cog's server answers it."""
    module = DIALECTS[dialect]
    results = []
    for index, inputs in enumerate(module.translate(payload, build)):
        result = predict(inputs)
        if result["status"] != "succeeded":
            message = protocol.error_message(result.get("error") or "") or result["status"]
            raise module.failed(payload, index, message)
        results.append(result)
    return module.answer(payload, results, out)
