"""Security: bearer-token auth with scopes, rate limits, secret registration, TLS options.

Kept import-light on purpose: ``quantum_trader.config`` imports ``security.settings``, so
nothing here may import the config (or FastAPI) at package import time.
"""
