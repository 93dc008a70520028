"""Fetch an input image from a URL without letting callers reach private networks (SSRF).

Only http and https. The host name is resolved once and every address it resolves to must be
public; the connection goes to that vetted address (so a second, different DNS answer cannot
redirect it), redirects are not followed, and the body is capped in size and time.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
from urllib.parse import urlsplit

from threegen.errors import InvalidArgument, Unavailable

FIELD = "image_url"


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def vetted_address(host: str, port: int) -> str:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise InvalidArgument([(FIELD, f"host {host!r} does not resolve: {exc}")]) from None
    addresses = sorted({info[4][0] for info in infos})
    private = [a for a in addresses if not _public(a)]
    if private or not addresses:
        raise InvalidArgument(
            [(FIELD, f"host {host!r} resolves to a non-public address ({', '.join(private)})")]
        )
    return addresses[0]


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, host: str, address: str, port: int, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, address: str, port: int, timeout: float):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def fetch(url: str, max_bytes: int, timeout: float = 10.0) -> bytes:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidArgument([(FIELD, "must be an http or https URL with a host")])
    port = parts.port or (443 if parts.scheme == "https" else 80)
    address = vetted_address(parts.hostname, port)
    connection_class = _PinnedHTTPSConnection if parts.scheme == "https" else _PinnedHTTPConnection
    connection = connection_class(parts.hostname, address, port, timeout)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    try:
        connection.request("GET", path, headers={"User-Agent": "threegen-gateway", "Accept": "image/*"})
        response = connection.getresponse()
        if 300 <= response.status < 400:
            raise InvalidArgument([(FIELD, f"redirects are not followed (HTTP {response.status})")])
        if response.status != 200:
            raise InvalidArgument([(FIELD, f"the server answered HTTP {response.status}")])
        body = response.read(max_bytes + 1)
    except (OSError, http.client.HTTPException) as exc:
        raise Unavailable(f"could not fetch {FIELD}: {exc}") from None
    finally:
        connection.close()
    if len(body) > max_bytes:
        raise InvalidArgument([(FIELD, f"the image exceeds the limit of {max_bytes} bytes")])
    return body
