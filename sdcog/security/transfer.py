"""HTTP GETs on a user's behalf: to the address netguard checked, within one wall-clock
deadline, stopped at once when the prediction is cancelled.

requests does the HTTP. A Download is one download however many requests it takes: each hop
is sent to an IP literal that netguard resolved and checked, with the Host header, TLS SNI and
certificate check of the host as written, so nothing resolves the name a second time between
check and connect. `get` follows redirects one hop at a time, each parsed and checked again;
hub_http sends huggingface_hub's requests as hops of a Download the same way. A proxy from the
environment (HTTPS_PROXY, NO_PROXY) applies as it would to the URL as written, and is handed
the checked address.

A watchdog thread shuts a hop's socket down when the deadline passes or the prediction is
cancelled, whatever the transfer is doing then (connecting, the TLS handshake, headers, body):
a server that trickles bytes cannot hold a download past its deadline.
"""

import contextvars
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import urljoin

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection

from ..common.cancel import PredictionCancelledError
from . import netguard

MAX_REDIRECTS = 5
CONNECT_TIMEOUT_S = 10.0
WATCH_INTERVAL_S = 0.05  # how often the watchdog looks at the cancel flag

Headers = Callable[[str], dict[str, str]]


class DownloadError(ValueError):
    """A download refused or failed, its message naming the input."""


@contextmanager
def get(
    url: str,
    input_name: str,
    timeout_s: float,
    stop: threading.Event | None = None,
    headers: Headers = lambda url: {},
    allowed: netguard.Networks = (),
    trusted: frozenset[netguard.Origin] = frozenset(),
    setting: str = "ADAPTER_TIMEOUT_S",
) -> Iterator[requests.Response]:
    """The response to GET `url` (redirects followed, each hop checked against the `allowed`
    non-public networks and the `trusted` origins), its body not read yet; read it inside the
    with-block. `headers(url)` gives each hop its headers, so a token goes to its own host and
    not to wherever that host redirects. A refusal, a failure, the deadline (`setting` names
    it) or `stop` raise DownloadError naming the input (PredictionCancelledError for `stop`)."""
    with Download(input_name, timeout_s, stop, allowed, trusted, setting, name=url) as download:
        with download.guarded(url), _follow(download, url, headers) as response:
            yield response
        # A socket shut down mid-body can look like the body's end: never hand that on as
        # complete.
        download.watch.raise_if_fired()


class Download:
    """One download, however many requests and redirects it takes: each hop is parsed, resolved
    and checked (netguard) and sent to the checked address, and one deadline and the
    prediction's cancel cover them all. `name` is what the messages call it."""

    def __init__(
        self,
        input_name: str,
        timeout_s: float,
        stop: threading.Event | None = None,
        allowed: netguard.Networks = (),
        trusted: frozenset[netguard.Origin] = frozenset(),
        setting: str = "ADAPTER_TIMEOUT_S",
        name: str = "",
    ) -> None:
        self.input_name, self.name = input_name, name
        self.allowed, self.trusted = allowed, trusted
        self.watch = Watchdog(timeout_s, stop, f"{input_name}: {name[:200]}", setting)
        self._session = requests.Session()

    def __enter__(self) -> "Download":
        self._token = _WATCHDOG.set(self.watch)
        self.watch.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.watch.__exit__()
        self._session.close()
        _WATCHDOG.reset(self._token)

    def send(self, method: str, url: str, headers: dict[str, str]) -> requests.Response:
        """One hop, not followed if it redirects: to the first checked address that accepts the
        connection. Its body is not read yet."""
        parsed, addresses = netguard.resolve(url, self.input_name, self.allowed, self.trusted)
        self._session.mount(f"{parsed.scheme}://", _PinnedAdapter(parsed.host))
        # The environment's proxies for the URL as written (NO_PROXY judged on its host name):
        # the explicit None keeps requests from choosing again for the address.
        proxies = {"http": None, "https": None, **requests.utils.get_environ_proxies(url)}
        error: Exception | None = None
        for address in addresses:
            literal = f"[{address}]" if address.version == 6 else str(address)
            remaining = self.watch.remaining()
            try:
                return self._session.request(
                    method,
                    f"{parsed.scheme}://{literal}:{parsed.port}{parsed.target}",
                    headers={**headers, "Host": parsed.netloc},
                    proxies=proxies,
                    allow_redirects=False,
                    stream=True,
                    timeout=(min(CONNECT_TIMEOUT_S, remaining), remaining),
                )
            except requests.ConnectionError as e:
                self.watch.raise_if_fired()
                error = e  # the next address, if the host has another
            except ValueError as e:  # requests reads a redirect's Location even when not asked
                raise DownloadError(
                    f"{self.input_name}: could not download {url[:200]}: {reason(e)}"
                ) from None
        raise DownloadError(f"{self.input_name}: could not connect to {url[:200]}: {reason(error)}")

    @contextmanager
    def guarded(self, url: str) -> Iterator[None]:
        """Failures inside as DownloadError naming the input (the deadline's and a cancel's
        first, whatever they made the transfer raise)."""
        try:
            yield
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as e:
            self.watch.raise_if_fired()
            raise DownloadError(
                f"{self.input_name}: could not download {url[:200]}: {reason(e)}"
            ) from None
        except Exception:
            self.watch.raise_if_fired()  # what a cut-off body made the caller raise
            raise


@contextmanager
def _follow(download: Download, url: str, headers: Headers) -> Iterator[requests.Response]:
    for _ in range(MAX_REDIRECTS + 1):
        response = download.send("GET", url, headers(url))
        if not response.is_redirect:
            response.url = url  # as written, not the address it was sent to
            with response:
                yield response
            return
        response.close()
        url = urljoin(url, response.headers["Location"])
    raise DownloadError(
        f"{download.input_name}: more than {MAX_REDIRECTS} redirects from {url[:200]}"
    )


def reason(error: BaseException | None) -> str:
    """The innermost cause of a failed transfer, without the wrappers' text (which names the
    address it was sent to, not the URL the user wrote)."""
    for _ in range(10):
        inner = getattr(error, "reason", None) or error.__cause__ or error.__context__
        if inner is None and error.args and isinstance(error.args[0], BaseException):
            inner = error.args[0]
        if not isinstance(inner, BaseException):
            break
        error = inner
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error)[:300]


class Watchdog:
    """Ends one transfer at its deadline or when `stop` is set, by shutting down its sockets."""

    def __init__(
        self, timeout_s: float, stop: threading.Event | None, what: str, setting: str
    ) -> None:
        """`what` ("lora_weights: URL") and `setting` (the variable that sets `timeout_s`)
        name the download in the deadline's message."""
        self.timeout_s, self.what, self.setting = timeout_s, what, setting
        self.deadline = time.monotonic() + timeout_s
        self.stop = stop or threading.Event()
        self.fired: str | None = None  # "deadline" or "cancelled"
        # Connections while they connect, then their sockets: http.client lets go of a
        # connection's socket once the response owns it.
        self.watched: list[HTTPConnection | socket.socket] = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="transfer-watchdog")

    def __enter__(self) -> "Watchdog":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def connect(self, connection: HTTPConnection, connect: Callable[[], None]) -> None:
        """connect(), watched: the connection during its handshake, then its socket."""
        with self._lock:
            if self.fired:
                raise ConnectionAbortedError(f"transfer ended: {self.fired}")
            self.watched.append(connection)
        connect()
        with self._lock:
            self.watched.append(connection.sock)
        if self.fired:  # fired between the two: the socket was not there to shut down yet
            self._shutdown(connection.sock)

    def remaining(self) -> float:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0 or self.stop.is_set():
            self._fire("cancelled" if self.stop.is_set() else "deadline")
            self.raise_if_fired()
        return remaining

    def raise_if_fired(self) -> None:
        if self.fired == "cancelled":
            raise PredictionCancelledError("cancelled")
        if self.fired == "deadline":
            raise DownloadError(
                f"{self.what} took longer than {self.timeout_s:g} s ({self.setting})"
            )

    def _watch(self) -> None:
        while not self._done.wait(WATCH_INTERVAL_S):
            if self.stop.is_set():
                return self._fire("cancelled")
            if time.monotonic() >= self.deadline:
                return self._fire("deadline")

    def _fire(self, reason: str) -> None:
        with self._lock:
            if self.fired:
                return
            self.fired = reason
            watched = list(self.watched)
        for item in watched:
            self._shutdown(item.sock if isinstance(item, HTTPConnection) else item)

    @staticmethod
    def _shutdown(sock: socket.socket | None) -> None:
        if sock is not None:
            try:  # the plain socket's shutdown, under TLS too: a blocked read returns at once
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass  # already closed


_WATCHDOG: contextvars.ContextVar[Watchdog] = contextvars.ContextVar("transfer_watchdog")


class _WatchedHTTPConnection(HTTPConnection):
    def connect(self) -> None:
        _WATCHDOG.get().connect(self, super().connect)


class _WatchedHTTPSConnection(HTTPSConnection):
    def connect(self) -> None:
        _WATCHDOG.get().connect(self, super().connect)


class _PinnedAdapter(HTTPAdapter):
    """Sends to the IP literal in the URL while TLS names and verifies `host`; every connection
    it opens is watched."""

    def __init__(self, host: str) -> None:
        super().__init__(max_retries=0)
        self.host = host

    def build_connection_pool_key_attributes(self, request, verify, cert=None):
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(
            request, verify, cert
        )
        if host_params["scheme"] == "https":
            pool_kwargs.update(server_hostname=self.host, assert_hostname=self.host)
        return host_params, pool_kwargs

    def get_connection_with_tls_context(self, request, verify, proxies=None, cert=None):
        pool = super().get_connection_with_tls_context(request, verify, proxies, cert)
        pool.ConnectionCls = (
            _WatchedHTTPSConnection if pool.scheme == "https" else _WatchedHTTPConnection
        )
        return pool
