"""References to weights, parsed once where a request is built, before anything is fetched: an
http(s) URL (civitai's `api/download/models/<id>` included), a civitai AIR id
(`civitai:<model>@<version>`, short as Runware writes it or as a URN), or a Hugging Face
repository `owner/repo`; an embedding's may name its token first (`TOKEN=REFERENCE`)."""

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from ..security import netguard
from ..security.filechecks import PICKLE_SUFFIXES

REPO = re.compile(r"[\w.-]+/[\w.-]+")
AIR = re.compile(r"(?:urn:air:[\w.-]+:[\w.-]+:)?civitai:(?P<model>\d+)@(?P<version>\d+)")


@dataclass(frozen=True)
class Reference:
    """A reference of a known form, naming the input it came from."""

    text: str  # as the request gives it
    input_name: str
    kind: str  # "url", "repo" or "air"

    @classmethod
    def parse(cls, text: str, input_name: str) -> "Reference":
        """The reference, or a ValueError naming the input: an http(s) URL that parses cleanly
        (netguard) and names no pickle, a Hugging Face owner/repo, or an AIR id."""
        if text.startswith(("https://", "http://")):
            check_url(text, input_name)
            return cls(text, input_name, "url")
        if REPO.fullmatch(text):
            check_repo(text, input_name)
            return cls(text, input_name, "repo")
        if AIR.fullmatch(text):
            return cls(text, input_name, "air")
        raise ValueError(
            f"{input_name}: {text[:200]!r} is neither an http(s) URL, a civitai AIR id "
            "(civitai:<model>@<version>) nor a Hugging Face owner/repo"
        )


@dataclass(frozen=True)
class EmbeddingReference:
    """A textual inversion: `TOKEN=REFERENCE`, or `REFERENCE` (the file names its token)."""

    token: str | None
    reference: Reference

    @classmethod
    def parse(cls, item: str, input_name: str = "textual_inversions") -> "EmbeddingReference":
        token, sep, text = item.partition("=")
        if not (sep and token and "/" not in token and ":" not in token):
            token, text = None, item
        return cls(token, Reference.parse(text, input_name))


def check_repo(repo: str, input_name: str) -> None:
    """A Hugging Face owner/repo as the hub allows it (huggingface_hub's own rule)."""
    try:
        validate_repo_id(repo)
    except HFValidationError:
        raise ValueError(
            f"{input_name}: {repo[:200]!r} is not a Hugging Face owner/repo the hub allows: "
            "letters, digits, '-', '_' and '.', neither part starting or ending with '-' or '.', "
            "no '--' or '..', at most 96 characters a part"
        ) from None


def check_url(url: str, input_name: str) -> None:
    """An http(s) URL that parses cleanly (netguard) and names no pickle."""
    netguard.parse(url, input_name)
    if urlsplit(url).path.lower().endswith(PICKLE_SUFFIXES):
        raise ValueError(
            f"{input_name}: {url} is pickled weights ({', '.join(PICKLE_SUFFIXES)} files are "
            "never loaded); give a .safetensors file"
        )


def origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc.lower()
