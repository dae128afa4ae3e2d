"""What the server fetches or opens on a user's behalf.

URLs (adapters, ControlNet models, Hugging Face references): public addresses only. A URL is
parsed once, strictly: anything that HTTP clients read in different ways (backslashes,
whitespace, control characters, user info, percent signs or non-ASCII in the host) is refused,
so the host checked here is the host connected to. The host is resolved once, every address it
resolves to is checked, and sdcog.security.transfer connects to a checked address (no second
lookup), at every redirect hop. Addresses that embed an IPv4 address (::ffff:a.b.c.d, NAT64
64:ff9b::a.b.c.d, 6to4, Teredo) are judged by it; the deprecated IPv4-compatible (::a.b.c.d) and
IPv4-translated (::ffff:0:a.b.c.d) forms are refused. Loopback, private, link-local,
cloud-metadata (169.254.169.254) and reserved addresses are refused unless the allowed networks
(settings: ALLOW_PRIVATE_URLS) hold them: None allows every address. The endpoints the operator
set (HF_ENDPOINT, CIVITAI_ENDPOINT) are trusted origins: their addresses are not checked (a
private mirror works in strict mode), every hop they redirect to elsewhere is.

File inputs: Cog downloads an http(s) URL or data URI given for a file input to a temporary file
and hands predict() that file as a cog Path. A plain string is a path on the server's own disk;
it is refused unless local paths are allowed (settings: ALLOW_LOCAL_INPUT_PATHS).
"""

import ipaddress
import re
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Networks = tuple[Network, ...] | None  # the non-public networks allowed; None: all of them
Origin = tuple[str, str, int]  # scheme, host (lower case, IPv6 without brackets), port
MAX_URL_LENGTH = 4096
# Characters no valid URL holds unescaped, and that clients disagree on: WHATWG parsers (and
# urllib3) read "\" as "/", Python's urlsplit as part of the host; whitespace and control
# characters are stripped by some and kept by others.
AMBIGUOUS = re.compile(r"[\\\s\x00-\x1f\x7f]")
HOST = re.compile(r"[a-z0-9._-]+|\[[0-9a-f:.]+\]")
# IPv6 forms that carry an IPv4 address, and where in them it sits.
NAT64 = ipaddress.ip_network("64:ff9b::/96")
REFUSED_V6 = [
    ipaddress.ip_network("::/96"),  # IPv4-compatible (deprecated): ::127.0.0.1
    ipaddress.ip_network("::ffff:0:0:0/96"),  # IPv4-translated: ::ffff:0:127.0.0.1
    ipaddress.ip_network("64:ff9b:1::/48"),  # local-use NAT64
]
GLOBAL_UNICAST_V6 = ipaddress.ip_network("2000::/3")


@dataclass(frozen=True)
class Url:
    """A URL that parsed cleanly: what every client reads the same way."""

    url: str
    scheme: str
    host: str  # lower case; an IPv6 literal without brackets
    port: int
    target: str  # path and query, as sent in the request line

    @property
    def netloc(self) -> str:
        """The Host header: the host as written, with the port unless it is the default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def origin(self) -> Origin:
        return self.scheme, self.host, self.port


def parse(url: str, input_name: str) -> Url:
    """The URL's parts, or a ValueError naming the input if it is not a plain http(s) URL."""
    shown = url[:200]
    if len(url) > MAX_URL_LENGTH:
        raise ValueError(f"{input_name}: URL longer than {MAX_URL_LENGTH} characters")
    if match := AMBIGUOUS.search(url):
        raise ValueError(
            f"{input_name}: {shown!r} holds {match[0]!r}; a URL must not contain backslashes, "
            "spaces or control characters (percent-encode them)"
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ValueError(f"{input_name}: {shown!r} is not a valid URL: {e}") from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{input_name}: {shown} is not an http(s) URL")
    if "@" in parts.netloc:
        raise ValueError(
            f"{input_name}: {shown} has user info before '@'; URLs with credentials are "
            "refused (tokens go in HF_TOKEN or CIVITAI_TOKEN)"
        )
    host = (parts.hostname or "").rstrip(".")
    if not HOST.fullmatch(f"[{host}]" if ":" in host else host) or host.startswith(("-", ".")):
        raise ValueError(f"{input_name}: {shown!r} has no valid host name")
    port = port or (443 if parts.scheme == "https" else 80)
    parsed = Url(url, parts.scheme, host, port, _target(parts.path, parts.query))
    # The client library must read the same host and port: one parse, no second opinion.
    try:
        theirs = parse_url(url)
    except LocationParseError:
        raise ValueError(f"{input_name}: {shown!r} is not a valid URL (its host or port)") from None
    if ((theirs.host or "").strip("[]").rstrip(".").lower(), theirs.port or port) != (host, port):
        raise ValueError(f"{input_name}: {shown!r} is read differently by HTTP clients")
    return parsed


def _target(path: str, query: str) -> str:
    return (path or "/") + (f"?{query}" if query else "")


def resolve(
    url: str, input_name: str, allowed: Networks = (), trusted: frozenset[Origin] = frozenset()
) -> tuple[Url, list[Address]]:
    """The parsed URL and the addresses to connect to: each one resolved once and checked,
    unless the URL is on a `trusted` origin (an endpoint the operator set)."""
    parsed = parse(url, input_name)
    try:
        infos = socket.getaddrinfo(parsed.host, parsed.port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise ValueError(f"{input_name}: cannot resolve the host of {url[:200]}: {e}") from None
    addresses = list(dict.fromkeys(_address(sockaddr) for *_, sockaddr in infos))
    for address in addresses:
        if parsed.origin not in trusted:
            check_address(address, url, input_name, allowed)
    return parsed, addresses


def _address(sockaddr: tuple) -> Address:
    address = ipaddress.ip_address(sockaddr[0].split("%")[0])  # no IPv6 zone
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1, and connected to as such
    return address


def check_address(address: Address, url: str, input_name: str, allowed: Networks = ()) -> None:
    """Refuse an address that is not public, unless `allowed` holds it."""
    if allowed is None or is_public(address) or any(address in n for n in allowed):
        return
    raise ValueError(
        f"{input_name}: {url[:200]} leads to {address}, a loopback, private, link-local or "
        "reserved address, and such URLs are refused (the server's operator can allow them "
        "with ALLOW_PRIVATE_URLS)"
    )


def is_public(address: Address) -> bool:
    """Globally routable unicast, judged by the IPv4 address an IPv6 form carries."""
    if isinstance(address, ipaddress.IPv4Address):
        return address.is_global and not address.is_multicast
    if address.ipv4_mapped:
        return is_public(address.ipv4_mapped)
    if any(address in network for network in REFUSED_V6):
        return False
    if address in NAT64:
        return is_public(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    if address.sixtofour and not is_public(address.sixtofour):
        return False
    if address.teredo and not all(map(is_public, address.teredo)):
        return False
    return address in GLOBAL_UNICAST_V6 and address.is_global


def networks(value: str | None) -> Networks:
    """ALLOW_PRIVATE_URLS's value as the networks it allows: unset or 0 none, 1 all, or a
    comma-separated list (`10.0.0.0/8,127.0.0.1`)."""
    value = (value or "").strip()
    if value in ("", "0"):
        return ()
    if value == "1":
        return None
    return tuple(
        ipaddress.ip_network(n.strip(), strict=False) for n in value.split(",") if n.strip()
    )


def origins(endpoints: dict[str, str]) -> frozenset[Origin]:
    """The origins of the operator's endpoints, by the variable that sets each (HF_ENDPOINT,
    CIVITAI_ENDPOINT): trusted."""
    return frozenset(parse(url, variable).origin for variable, url in endpoints.items())


def input_file(value: Any, input_name: str, local_paths: bool = False) -> Path:
    """A file input as predict() got it: Cog's download (allowed), or a server path (refused
    unless `local_paths`)."""
    downloaded = isinstance(value, Path) and value.parent == Path(tempfile.gettempdir())
    if downloaded or local_paths:
        return Path(value)
    raise ValueError(
        f"{input_name}: {str(value)[:200]!r} is a path on the server; send the file as an "
        "http(s) URL or a data: URI (script/predict: -i NAME=@file)"
    )
