"""Other systems' request payloads, translated to predict()'s inputs (the same Request).

One module per system: its payload's JSON Schema (a .schema.json file beside it, checked with
jsonschema before anything else), a translation to predict()'s inputs, and its response shape.
A field this package cannot honour fails naming the field as the payload spells it.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

from ..weights import PIN_FILE, read_pins

HERE = Path(__file__).parent
# Names users write for the same weights a pin fetches (the repository moved or was renamed).
ALIASES = {
    "stable-diffusion-v1-5/stable-diffusion-v1-5": {"runwayml/stable-diffusion-v1-5"},
}


@dataclass(frozen=True)
class Build:
    """What this build serves: each pinned entry's repository (or URL), by entry name."""

    pins: dict[str, str]

    @classmethod
    def from_pins(cls, pin_file: Path = PIN_FILE) -> "Build":
        return cls({pin.name: getattr(pin, "repo", None) or pin.url for pin in read_pins(pin_file)})

    def serves(self, entry: str, name: str) -> bool:
        """Whether `name` (a repository id or URL) is what entry `entry` pins."""
        pinned = self.pins.get(entry)
        return pinned is not None and name in {pinned, *ALIASES.get(pinned, ())}


def validate(payload: Any, dialect: str) -> None:
    """The payload against the dialect's JSON Schema; the first error names its field."""
    schema = json.loads((HERE / f"{dialect}.schema.json").read_text())
    error = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(schema).iter_errors(payload)
    )
    if error is not None:
        field = ".".join(str(part) for part in error.absolute_path) or "(the payload)"
        raise ValueError(f"{dialect}: {field}: {error.message}")
