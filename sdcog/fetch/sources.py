"""Where an adapter reference's file is, and how it comes down: the URL of an http(s) reference
(civitai's through CIVITAI_ENDPOINT, a mirror), of an AIR id (civitai's download API), or of the
one safetensors file of a Hugging Face repository (HF_ENDPOINT); then the download itself,
through sdcog.security.transfer (netguard at every hop, one deadline, a cancel ends it at
once), bounded in size, with HF_TOKEN and CIVITAI_TOKEN sent to their own hosts only."""

import hashlib
import json
import re
import threading
from contextlib import AbstractContextManager
from pathlib import Path
from urllib.parse import unquote

import requests

from ..security import transfer
from ..security.filechecks import PICKLE_SUFFIXES
from ..serving.settings import Settings
from .references import AIR, Reference, origin

CHUNK = 1 << 16
MAX_LISTING_BYTES = 16 << 20  # a Hugging Face repository's file list (the API's JSON)
PREFERRED = "pytorch_lora_weights.safetensors"
# A diffusers model's weight files, in order of preference.
MODEL_WEIGHTS = ("diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.safetensors")
DISPOSITION_NAME = re.compile(r"""filename\*?=(?:UTF-8'')?"?([^";]+)"?""", re.I)


class Sources:
    def __init__(
        self,
        settings: Settings,
        endpoint: str,
        civitai: str,
        max_file_bytes: int,
        timeout_s: float,
        size_setting: str,
        timeout_setting: str,
    ) -> None:
        """`size_setting` and `timeout_setting` are what the refusals call the bounds."""
        self.endpoint, self.civitai = endpoint.rstrip("/"), civitai.rstrip("/")
        self.max_file_bytes, self.timeout_s = max_file_bytes, timeout_s
        self.size_setting, self.timeout_setting = size_setting, timeout_setting
        self.allowed, self.trusted = settings.private_networks, settings.trusted_origins
        self.tokens = settings.tokens

    def url(self, reference: Reference, stop: threading.Event | None = None) -> str:
        """The URL of the reference's one file."""
        text, input_name = reference.text, reference.input_name
        if reference.kind == "url":
            if origin(text) == ("https", "civitai.com"):  # CIVITAI_ENDPOINT: a mirror
                return self.civitai + text.removeprefix("https://civitai.com")
            return text
        if air := AIR.fullmatch(text):
            return f"{self.civitai}/api/download/models/{air['version']}"
        names = self._repo_files(reference, stop)
        candidates = [n for n in names if n.endswith(".safetensors")]
        if PREFERRED in candidates:
            candidates = [PREFERRED]
        if len(candidates) != 1:
            raise ValueError(
                f"{input_name}: {text} holds {len(candidates)} safetensors files "
                f"({', '.join(candidates) or 'none'}); give the URL of one"
            )
        return f"{self.endpoint}/{text}/resolve/main/{candidates[0]}"

    def model_urls(self, reference: Reference, stop: threading.Event | None) -> dict[str, str]:
        """config.json and weights of a diffusers model: a .safetensors URL with config.json
        beside it, or a Hugging Face repository (its fp16 weights when it ships them)."""
        if reference.kind == "url":
            weights = self.url(reference, stop)
            return {"weights": weights, "config": weights.rsplit("/", 1)[0] + "/config.json"}
        if reference.kind != "repo":  # an AIR id names a file, not a diffusers model
            raise ValueError(
                f"{reference.input_name}: {reference.text[:200]!r} is not a Hugging Face owner/repo"
            )
        names = self._repo_files(reference, stop)
        choice = next((n for n in MODEL_WEIGHTS if n in names), None)
        if "config.json" not in names or choice is None:
            raise ValueError(
                f"{reference.input_name}: {reference.text} is not a diffusers-format model (it "
                f"needs config.json and {' or '.join(MODEL_WEIGHTS)})"
            )
        base = f"{self.endpoint}/{reference.text}/resolve/main"
        return {"weights": f"{base}/{choice}", "config": f"{base}/config.json"}

    def download(
        self, url: str, dest: Path, input_name: str, key: str, stop: threading.Event | None
    ) -> str:
        """`url`'s file into `dest`; its sha256. `key` is what the logs call it."""
        print(f"{input_name}: downloading {key}")
        digest = hashlib.sha256()
        too_big = ValueError(
            f"{input_name}: {key} is larger than the {self.max_file_bytes} byte limit "
            f"({self.size_setting})"
        )
        with self._get(url, input_name, stop) as response:
            self._check_response(response, input_name, key)
            if _content_length(response) > self.max_file_bytes:
                raise too_big
            written = 0
            with open(dest, "wb") as f:
                for chunk in response.iter_content(CHUNK):
                    written += len(chunk)
                    if written > self.max_file_bytes:
                        raise too_big
                    digest.update(chunk)
                    f.write(chunk)
        return digest.hexdigest()

    def _repo_files(self, reference: Reference, stop: threading.Event | None) -> list[str]:
        text, input_name = reference.text, reference.input_name
        with self._get(f"{self.endpoint}/api/models/{text}", input_name, stop) as response:
            if response.status_code == 404:
                raise ValueError(f"{input_name}: no Hugging Face repository {text}")
            status = response.status_code
            body = response.raw.read(MAX_LISTING_BYTES + 1, decode_content=True)
        if len(body) > MAX_LISTING_BYTES:
            raise ValueError(
                f"{input_name}: {text}'s file list is larger than {MAX_LISTING_BYTES} bytes"
            )
        try:
            if status != 200:
                raise ValueError(f"status {status}")
            return [s["rfilename"] for s in json.loads(body).get("siblings", [])]
        except (ValueError, AttributeError, KeyError, TypeError) as e:
            # An answer that is not a Hugging Face model listing.
            raise ValueError(f"{input_name}: could not look up {text}: {e}") from None

    def _get(
        self, url: str, input_name: str, stop: threading.Event | None
    ) -> AbstractContextManager[requests.Response]:
        return transfer.get(
            url, input_name, self.timeout_s, stop, self._headers, self.allowed, self.trusted,
            self.timeout_setting,
        )  # fmt: skip

    def _token_variable(self, url: str) -> str | None:
        """The token a host gets, if it is one that takes one."""
        hosts = {origin(self.endpoint): "HF_TOKEN", origin(self.civitai): "CIVITAI_TOKEN"}
        return hosts.get(origin(url))

    def _headers(self, url: str) -> dict[str, str]:
        """A token for its own host only: HF_TOKEN to Hugging Face, CIVITAI_TOKEN to civitai."""
        variable = self._token_variable(url)
        token = variable and self.tokens.get(variable)
        return {"Authorization": f"Bearer {token}"} if token else {}

    def _check_response(self, response: requests.Response, input_name: str, key: str) -> None:
        """Before the body: an error status, or a file that names itself as pickled weights."""
        if response.status_code in (401, 403):
            variable = self._token_variable(response.url)
            hint = f"; set {variable}" if variable else ""
            status = response.status_code
            raise ValueError(f"{input_name}: {key} needs a login ({status}){hint}")
        response.raise_for_status()
        disposition = DISPOSITION_NAME.search(response.headers.get("Content-Disposition", ""))
        if disposition:
            name = unquote(disposition[1].strip())
            if name.lower().endswith(PICKLE_SUFFIXES):
                raise ValueError(
                    f"{input_name}: {key} serves {name}, pickled weights, which are never "
                    "loaded; choose its .safetensors file"
                )
            print(f"{input_name}: {key} is {name}")


def _content_length(response: requests.Response) -> int:
    """The announced size, 0 when there is none (or it is not a number)."""
    value = response.headers.get("Content-Length", "")
    return int(value) if value.isdigit() else 0
