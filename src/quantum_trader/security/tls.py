"""TLS for uvicorn: the keyword arguments ``uvicorn.Config`` needs, from ``security:``.

Production terminates TLS in nginx (deploy/nginx); this is for a service exposed without it.
Python's default server context already refuses anything below TLS 1.2.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from quantum_trader.config import Settings

__all__ = ["uvicorn_options"]


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """TLS files (when configured) and the proxies whose X-Forwarded-For uvicorn trusts."""
    sec = settings.security
    opts: dict[str, Any] = {"forwarded_allow_ips": list(sec.trusted_proxies)}
    if sec.tls_certfile is not None and sec.tls_keyfile is not None:
        for what, path in (("certificate", sec.tls_certfile), ("key", sec.tls_keyfile)):
            if not path.is_file():
                raise ValueError(f"TLS {what} file {path} not found (security.tls_*)")
        opts["ssl_certfile"] = str(sec.tls_certfile)
        opts["ssl_keyfile"] = str(sec.tls_keyfile)
    return opts
