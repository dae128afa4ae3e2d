"""Which model a request names (base_model, vae), checked before anything is fetched.

A reference is a Hugging Face repository in diffusers' layout, `owner/repo` or
`owner/repo@revision` (a branch, tag or commit); the URL of a single-file .safetensors checkpoint
in the original (A1111/civitai) layout, civitai's `api/download/models/<id>` included; or a
civitai AIR id (`civitai:<model>@<version>`). A name the build's own pin answers to (its
repository, an alias, an AIR id it lists) is that pin: nothing is fetched. The operator's
ALLOWED_MODELS patterns (shell-style: `owner/*`, `civitai:*`, `https://host/*`) say what else may
be loaded; `none` allows only the pins.
"""

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path

from ..common.pins import names, read_pins
from ..fetch.references import AIR, check_repo, check_url

HUB = re.compile(r"(?P<repo>[\w.-]+/[\w.-]+)(?:@(?P<revision>[\w.\-/]+))?")
# The pin entries a request's model inputs replace.
ENTRIES = {"base_model": "base", "vae": "vae"}


@dataclass(frozen=True)
class ModelReference:
    input_name: str  # base_model or vae
    text: str  # as the request gives it
    kind: str  # "hub", "url" or "air"
    repo: str | None = None  # hub: owner/repo
    revision: str = "main"  # hub

    @property
    def name(self) -> str:
        """What the allow-list and the logs see: the repository without its revision, the URL,
        or the AIR id in its short form."""
        if self.kind == "hub":
            return self.repo or self.text
        if self.kind == "air":
            air = AIR.fullmatch(self.text)
            return f"civitai:{air['model']}@{air['version']}" if air else self.text
        return self.text


def parse(text: str, input_name: str) -> ModelReference:
    """The reference, or a ValueError naming the input and the forms it may take."""
    if text.startswith(("https://", "http://")):
        check_url(text, input_name)
        return ModelReference(input_name, text, "url")
    if AIR.fullmatch(text):
        return ModelReference(input_name, text, "air")
    if hub := HUB.fullmatch(text):
        check_repo(hub["repo"], input_name)
        return ModelReference(input_name, text, "hub", hub["repo"], hub["revision"] or "main")
    raise ValueError(
        f"{input_name}: {text[:200]!r} is neither a Hugging Face owner/repo[@revision], the URL "
        "of a .safetensors checkpoint, nor a civitai AIR id (civitai:<model>@<version>)"
    )


@dataclass(frozen=True)
class Choice:
    """The models a request runs on, allowed: None for the build's own."""

    base_model: ModelReference | None
    vae: ModelReference | None


class ModelChoice:
    """The names the build's pins answer to, and what else the operator allows."""

    def __init__(self, pin_file: Path | None, allowed: tuple[str, ...]) -> None:
        pins = read_pins(pin_file) if pin_file and pin_file.exists() else []
        self.pinned = {pin.name: set(names(pin)) for pin in pins}
        self.allowed = allowed

    def resolve(self, reference: ModelReference | None) -> ModelReference | None:
        """The reference to fetch; None for the build's own (none given, or a name of its
        pin). Anything else must be allowed by ALLOWED_MODELS."""
        if reference is None:
            return None
        own = self.pinned.get(ENTRIES[reference.input_name], ())
        if reference.text in own or reference.name in own:
            return None
        if not any(fnmatch.fnmatchcase(reference.name, p) for p in self.allowed):
            allowed = ", ".join(self.allowed) or "none but the build's own"
            raise ValueError(
                f"{reference.input_name}: {reference.name} is not allowed on this server (its "
                f"operator allows: {allowed}; ALLOWED_MODELS)"
            )
        return reference
