"""Other systems' request payloads, translated to predict()'s inputs (the same Request).

One module per system: its payload's JSON Schema (a .schema.json file beside it, checked with
jsonschema before anything else), a translation to predict()'s inputs, and its response shape.
A field this package cannot honour fails naming the field as the payload spells it.

A dialect module offers (sdcog/dialects/tasks.py runs them in this order):
    translate(payload, build) -> list of predict() inputs, one per prediction
    failed(payload, index, message) -> the error for prediction `index` having failed
    answer(payload, results, out) -> what the system answers for the finished predictions
    failure(error) -> how the system reports an error
"""

import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

from ..common.pins import PIN_FILE, names, read_pins
from ..fetch.references import AIR
from ..request import model_choice
from ..request.control_slots import CONTROL_KINDS

HERE = Path(__file__).parent


@dataclass(frozen=True)
class ModelNames:
    """The names of what this build serves: each pinned entry's weights, by entry name (its
    repository or URL first, then aliases and the AIR ids its pin lists under `air`)."""

    names: dict[str, tuple[str, ...]]
    ip_adapters: tuple[str, ...] = ()  # the adapter files [ip_adapter] pins, by stem

    @classmethod
    def from_pins(cls, pin_file: Path = PIN_FILE) -> "ModelNames":
        pins = read_pins(pin_file)
        files = next((pin.files or [] for pin in pins if pin.name == "ip_adapter"), [])
        adapters = tuple(Path(f).stem for f in files if Path(f).name.startswith("ip-adapter"))
        return cls({pin.name: names(pin) for pin in pins}, adapters)

    def pinned(self, entry: str) -> str | None:
        """The repository (or URL) entry `entry` pins, if it is pinned."""
        return self.names[entry][0] if entry in self.names else None

    def serves(self, entry: str, name: str) -> bool:
        """Whether `name` (a repository id, URL or AIR id, short or as a URN) names what entry
        `entry` pins."""
        air = AIR.fullmatch(name)
        short = f"civitai:{air['model']}@{air['version']}" if air else name
        return bool({name, short} & set(self.names.get(entry, ())))

    def controlnet(self, model: str, kind: str | None = None) -> tuple[str | None, bool]:
        """ControlNet `model`'s kind (`kind` if given, else from the model's name, else from
        the pin that lists it) and whether the build's own ControlNet for that kind is it."""
        entry = next(
            (entry for entry, names in self.names.items()
             if entry.startswith("controlnet_") and model in names), None
        )  # fmt: skip
        kind = kind or next((k for k in CONTROL_KINDS if k in model.lower()), None)
        if kind is None and entry not in (None, "controlnet_union"):
            kind = entry.removeprefix("controlnet_")
        own = kind is not None and entry in (
            f"controlnet_{kind.removesuffix('_face')}",
            "controlnet_union",
        )
        return kind, own


class FieldError(ValueError):
    """A payload's field that cannot be honoured: `path` as the payload spells it, in the task
    with id `task` (of type `kind`) where a payload holds several."""

    def __init__(self, dialect: str, path: tuple[str | int, ...], problem: str,
                 task: str | None = None, kind: str | None = None) -> None:  # fmt: skip
        self.dialect, self.path, self.problem, self.task = dialect, path, problem, task
        self.kind = kind  # the task's type, where a payload mixes several
        super().__init__(f"{dialect}: {self.field}: {problem}")

    @property
    def field(self) -> str:
        return ".".join(str(part) for part in self.path) or "(the payload)"


def check_model(dialect: str, field: str, name: str) -> None:
    """A model the payload names in a form this package can fetch (sdcog.request.model_choice), or a
    FieldError naming the payload's field."""
    try:
        model_choice.parse(name, field)
    except ValueError as e:
        raise FieldError(dialect, (field,), str(e).split(": ", 1)[1]) from None


def validate(payload: Any, dialect: str) -> None:
    """The payload against the dialect's JSON Schema; the first error names its field."""
    schema = json.loads((HERE / f"{dialect}.schema.json").read_text())
    error = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(schema).iter_errors(payload)
    )
    if error is None:
        return
    path, problem = tuple(error.absolute_path), error.message
    if error.validator == "additionalProperties":  # name the unexpected field itself
        known = error.schema.get("properties", {})
        unexpected = min(set(error.instance) - set(known))
        path += (unexpected,)
        if close := difflib.get_close_matches(unexpected, known, n=1):
            problem += f" (did you mean {close[0]}?)"
    raise FieldError(dialect, path, problem)
