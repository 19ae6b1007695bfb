"""The base URL a client used to reach the service, for the absolute links it is sent back
(search ``next``/``self``, ``fullUrl``, CDS card links).

``TRIALSCREEN_PUBLIC_BASE_URL``, when set explicitly, wins. Otherwise the request says: its
scheme and ``Host``, or, when the connection comes from a configured trusted proxy, what that
proxy forwarded (RFC 7239 ``Forwarded``, else ``X-Forwarded-Proto/Host/Prefix``). Forwarded
headers from anyone else are ignored: a client must not choose the links other clients follow.
"""

import ipaddress
import re
from functools import lru_cache

from starlette.requests import Request

from app.core.settings import Settings

_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")
_PREFIX = re.compile(r"^(/[A-Za-z0-9._~\-]+)*$")
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def public_base(request: Request, settings: Settings) -> str:
    """``scheme://host[:port][/prefix]`` without a trailing slash."""
    if "public_base_url" in settings.model_fields_set:
        return settings.public_base_url.rstrip("/")
    scheme, host, prefix = request.url.scheme, request.headers.get("host", ""), ""
    if _trusted(request, settings.trusted_proxies):
        scheme, host, prefix = _forwarded(request, scheme, host)
    if not _HOST.match(host):
        host = request.url.netloc if _HOST.match(request.url.netloc) else "localhost"
    if scheme not in ("http", "https"):
        scheme = "http"
    root = request.scope.get("root_path", "")
    return f"{scheme}://{host}{prefix}{root if _PREFIX.match(root) else ''}".rstrip("/")


def _trusted(request: Request, proxies: tuple[str, ...]) -> bool:
    if not proxies or request.client is None:
        return False
    try:
        address = ipaddress.ip_address(request.client.host)
    except ValueError:
        return False
    return any(address in network for network in _networks(proxies))


@lru_cache(maxsize=8)
def _networks(proxies: tuple[str, ...]) -> tuple[_Network, ...]:
    return tuple(ipaddress.ip_network(p, strict=False) for p in proxies)


def _forwarded(request: Request, scheme: str, host: str) -> tuple[str, str, str]:
    """What the nearest trusted proxy says the client asked for. Only the first element of
    each header counts: it is what the client-facing proxy saw."""
    prefix = ""
    forwarded = request.headers.get("forwarded")
    if forwarded:
        first = forwarded.split(",")[0]
        pairs = dict(_pair(p) for p in first.split(";") if "=" in p)
        scheme = pairs.get("proto", scheme).lower()
        host = pairs.get("host", host)
    else:
        if proto := request.headers.get("x-forwarded-proto"):
            scheme = proto.split(",")[0].strip().lower()
        if forwarded_host := request.headers.get("x-forwarded-host"):
            host = forwarded_host.split(",")[0].strip()
            if (port := request.headers.get("x-forwarded-port")) and ":" not in host:
                port = port.split(",")[0].strip()
                default = {"http": "80", "https": "443"}.get(scheme)
                host = host if port == default else f"{host}:{port}"
    candidate = request.headers.get("x-forwarded-prefix", "").split(",")[0].strip().rstrip("/")
    if _PREFIX.match(candidate):
        prefix = candidate
    return scheme, host, prefix


def _pair(text: str) -> tuple[str, str]:
    key, _, value = text.partition("=")
    return key.strip().lower(), value.strip().strip('"')
