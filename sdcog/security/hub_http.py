"""huggingface_hub's HTTP, through sdcog.security.transfer: every request it makes for a model
download (the hub API, configs, weights, each redirect hop to a CDN) is checked by netguard and sent
to the checked address, within the download's one deadline, stopped at once by a cancel, and its
bytes counted against the download's bounds.

huggingface_hub makes its requests with one shared httpx2 client, made by a factory it lets
users replace (`set_client_factory`): `install()` gives it a client whose transport is
`GuardedTransport`. The transport sends each request as one hop of the `transfer.Download` that
`guarded()` set for the current thread; httpx2 follows redirects, so each hop comes back here and
is checked again. A request made outside a guarded download is refused: nothing in the server
reaches the network through huggingface_hub unguarded.

Xet: for repositories stored on Xet, the hub's answers name a Xet hash, and huggingface_hub
then downloads with hf_xet's own client, which would bypass all of this. The transport drops
those headers, so every file comes over HTTP, through here.
"""

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx2
import requests
import urllib3
from huggingface_hub import set_client_factory

from . import transfer

CHUNK = 1 << 20
# Headers httpx2 sets for its own connection; requests sets its own.
HOP_HEADERS = {"host", "content-length", "connection", "transfer-encoding"}


@dataclass
class Limit:
    """A bound on bytes, and what sets it (for the refusal: "MODEL_CACHE_GB")."""

    bytes: int
    name: str


@dataclass
class Guard:
    """One model download: its transfer (deadline, cancel, addresses), a bound on the bytes of
    each response (the caller changes it between configs and weights) and on all of them."""

    download: transfer.Download
    total: Limit
    per_file: Limit
    received: int = 0

    def count(self, n: int) -> None:
        self.received += n
        if self.received > self.total.bytes:
            raise transfer.DownloadError(
                f"{self.download.input_name}: {self.download.name} is larger than "
                f"{self.total.bytes:,} bytes ({self.total.name})"
            )


_GUARD: contextvars.ContextVar[Guard] = contextvars.ContextVar("hub_guard")


def install() -> None:
    """huggingface_hub's requests, from now on, through GuardedTransport (idempotent)."""
    set_client_factory(_client)


def _client() -> httpx2.Client:
    # trust_env off: no proxy or .netrc from httpx2 (transfer applies the environment's proxy
    # to the URL as written, and sends no credentials but the hub token).
    return httpx2.Client(
        transport=GuardedTransport(),
        follow_redirects=True,
        max_redirects=transfer.MAX_REDIRECTS,
        trust_env=False,
        timeout=None,
    )


@contextmanager
def guarded(download: transfer.Download, total: Limit, per_file: Limit) -> Iterator[Guard]:
    """huggingface_hub's requests in this thread, inside the with-block, go through
    `download` and its bounds."""
    guard = Guard(download, total, per_file)
    token = _GUARD.set(guard)
    try:
        yield guard
    finally:
        _GUARD.reset(token)


class GuardedTransport(httpx2.BaseTransport):
    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        guard = _GUARD.get(None)
        if guard is None:
            raise transfer.DownloadError(
                f"huggingface_hub: {str(request.url)[:200]} is outside a guarded download"
            )
        download, url = guard.download, str(request.url)
        if request.method not in ("GET", "HEAD"):
            raise transfer.DownloadError(
                f"{download.input_name}: {request.method} {url[:200]} is not a download"
            )
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        try:
            response = download.send(request.method, url, headers)
        except transfer.DownloadError:
            raise
        except ValueError as e:  # netguard's refusal of this hop, already naming the input
            raise transfer.DownloadError(str(e)) from None
        except (requests.RequestException, OSError) as e:
            download.watch.raise_if_fired()
            raise transfer.DownloadError(
                f"{download.input_name}: could not download {url[:200]}: {transfer.reason(e)}"
            ) from None
        announced = response.headers.get("Content-Length", "")
        body = request.method == "GET" and response.status_code in (200, 206)
        if body and announced.isdigit() and int(announced) > guard.per_file.bytes:
            response.close()
            raise _too_big(guard, url)
        return httpx2.Response(
            response.status_code,
            headers=[
                (k, v)
                for k, v in response.raw.headers.items()
                if not k.lower().startswith("x-xet-")
            ],  # fmt: skip
            stream=_Body(response, guard, url),
            request=request,
        )


def _too_big(guard: Guard, url: str) -> transfer.DownloadError:
    return transfer.DownloadError(
        f"{guard.download.input_name}: {url[:200]} is larger than {guard.per_file.bytes:,} "
        f"bytes ({guard.per_file.name})"
    )


class _Body(httpx2.SyncByteStream):
    """A response's bytes as they arrive (still encoded: httpx2 decodes), counted against the
    guard's bounds. A connection lost mid-body is httpx2's ReadError, which huggingface_hub
    answers by resuming from where it broke; the deadline and a cancel end it for good."""

    def __init__(self, response: requests.Response, guard: Guard, url: str) -> None:
        self.response, self.guard, self.url = response, guard, url

    def __iter__(self) -> Iterator[bytes]:
        read = 0
        try:
            for chunk in self.response.raw.stream(CHUNK, decode_content=False):
                read += len(chunk)
                if read > self.guard.per_file.bytes:
                    raise _too_big(self.guard, self.url)
                self.guard.count(len(chunk))
                yield chunk
        except (urllib3.exceptions.HTTPError, OSError) as e:
            self.guard.download.watch.raise_if_fired()
            raise httpx2.ReadError(transfer.reason(e)) from None
        self.guard.download.watch.raise_if_fired()  # a socket shut down can look like the end

    def close(self) -> None:
        self.response.close()
