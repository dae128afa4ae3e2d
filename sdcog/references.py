"""The forms a reference to weights may take, checked before anything is fetched: an http(s) URL
(civitai's `api/download/models/<id>` included), a civitai AIR id (`civitai:<model>@<version>`,
short as Runware writes it or as a URN), or a Hugging Face repository `owner/repo`."""

import re
from urllib.parse import urlsplit

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from . import netguard
from .filechecks import PICKLE_SUFFIXES

REPO = re.compile(r"[\w.-]+/[\w.-]+")
AIR = re.compile(r"(?:urn:air:[\w.-]+:[\w.-]+:)?civitai:(?P<model>\d+)@(?P<version>\d+)")


def check_reference(reference: str, input_name: str) -> None:
    """Refuse, before anything is fetched, a reference of no known form: an http(s) URL that
    parses cleanly (netguard) and names no pickle, an AIR id, or a Hugging Face owner/repo."""
    if reference.startswith(("https://", "http://")):
        check_url(reference, input_name)
    elif REPO.fullmatch(reference):
        check_repo(reference, input_name)
    elif not AIR.fullmatch(reference):
        raise ValueError(
            f"{input_name}: {reference[:200]!r} is neither an http(s) URL, a civitai AIR id "
            "(civitai:<model>@<version>) nor a Hugging Face owner/repo"
        )


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
