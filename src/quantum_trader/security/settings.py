"""``SecuritySection``: the ``security:`` section of the configuration.

It holds no secret values: tokens live hashed in the token file, TLS keys in files. That keeps
the section safe to print (``quantum-trader config``) and to back up with the config.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RateLimit(_Section):
    """A token bucket: ``rate`` requests per second sustained, bursts up to ``burst``."""

    rate: float = Field(gt=0)
    burst: int = Field(ge=1)


class SecuritySection(_Section):
    # Hashed API tokens (``quantum-trader token create``); empty: <state_dir>/tokens.json.
    tokens_file: Path | None = None
    # /metrics without a token from these networks (e.g. the Prometheus container's subnet).
    # Empty (the default): scraping needs a read-scope bearer token like every other caller.
    metrics_allow: list[str] = Field(default_factory=list)
    # Peers whose X-Forwarded-For we believe (the nginx in front of the gateway). Anyone else
    # could forge the header to dodge the per-client rate limit.
    trusted_proxies: list[str] = Field(default_factory=lambda: ["127.0.0.1", "::1"])
    # Per client IP, before authentication: also slows down token guessing.
    client_limit: RateLimit = RateLimit(rate=10.0, burst=40)
    # Per token, after authentication.
    token_limit: RateLimit = RateLimit(rate=20.0, burst=60)
    # /health and /metrics per client IP: generous, so monitoring is never throttled.
    monitoring_limit: RateLimit = RateLimit(rate=50.0, burst=200)
    # Serve HTTPS directly from uvicorn (both or neither). Production terminates TLS in nginx.
    tls_certfile: Path | None = None
    tls_keyfile: Path | None = None

    @field_validator("metrics_allow", "trusted_proxies")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for net in v:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(f"{net!r} is not an IP address or CIDR network") from None
        return v

    @model_validator(mode="after")
    def _tls_pair(self) -> SecuritySection:
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ValueError("tls_certfile and tls_keyfile go together: set both or neither")
        return self

    def tokens_path(self, state_dir: Path) -> Path:
        return self.tokens_file if self.tokens_file is not None else state_dir / "tokens.json"
