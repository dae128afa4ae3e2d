"""What the server fetches or opens on a user's behalf.

URLs (adapters, ControlNet models, Hugging Face references): public addresses only. Every
address a host resolves to is checked before each connection, at every redirect hop, so a URL
cannot reach loopback, private, link-local or cloud-metadata (169.254.169.254) services.
ALLOW_PRIVATE_URLS=1 allows every address; a comma-separated list of networks
(`10.0.0.0/8,127.0.0.1`) allows just those.

File inputs: Cog downloads an http(s) URL or data URI given for a file input to a temporary file
and hands predict() that file as a cog Path. A plain string is a path on the server's own disk;
it is refused unless ALLOW_LOCAL_INPUT_PATHS=1.
"""

import ipaddress
import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests

MAX_REDIRECTS = 5
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _allowed_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network] | None:
    """The private networks URLs may reach; None: all of them."""
    value = os.environ.get("ALLOW_PRIVATE_URLS", "").strip()
    if value in ("", "0"):
        return []
    if value == "1":
        return None
    return [ipaddress.ip_network(n.strip(), strict=False) for n in value.split(",") if n.strip()]


def _address(sockaddr: tuple) -> Address:
    address = ipaddress.ip_address(sockaddr[0].split("%")[0])  # no IPv6 zone
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    return address


def check_url(url: str, input_name: str) -> None:
    """Refuse a URL that is not http(s) or whose host resolves to any non-public address."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{input_name}: {url} is not an http(s) URL")
    allowed = _allowed_networks()
    if allowed is None:
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise ValueError(f"{input_name}: cannot resolve the host of {url}: {e}") from None
    for *_, sockaddr in infos:
        address = _address(sockaddr)
        public = address.is_global and not address.is_multicast
        if not public and not any(address in network for network in allowed):
            raise ValueError(
                f"{input_name}: {url} leads to {address}, a loopback, private, link-local or "
                "reserved address, and such URLs are refused (the server's operator can allow "
                "them with ALLOW_PRIVATE_URLS)"
            )


def get(
    url: str,
    input_name: str,
    timeout: float,
    stream: bool = False,
    headers: Callable[[str], dict[str, str]] = lambda url: {},
) -> requests.Response:
    """requests.get, following redirects one hop at a time, each hop checked before it is
    connected to. `headers(url)` gives each hop its headers, so a token goes to its own host
    and not to wherever that host redirects (civitai: a signed storage URL)."""
    for _ in range(MAX_REDIRECTS + 1):
        check_url(url, input_name)
        response = requests.get(
            url, headers=headers(url), allow_redirects=False, stream=stream, timeout=timeout
        )
        if not response.is_redirect:
            return response
        response.close()
        url = urljoin(url, response.headers["Location"])
    raise ValueError(f"{input_name}: more than {MAX_REDIRECTS} redirects from {url}")


def input_file(value: Any, input_name: str) -> Path:
    """A file input as predict() got it: Cog's download (allowed), or a server path (refused
    unless ALLOW_LOCAL_INPUT_PATHS=1)."""
    downloaded = isinstance(value, Path) and value.parent == Path(tempfile.gettempdir())
    if downloaded or os.environ.get("ALLOW_LOCAL_INPUT_PATHS") == "1":
        return Path(value)
    raise ValueError(
        f"{input_name}: {str(value)[:200]!r} is a path on the server; send the file as an "
        "http(s) URL or a data: URI (script/predict: -i NAME=@file)"
    )
