"""The admin endpoint: ``/healthz``, ``/readyz``, ``/metrics``, ``POST /reload``, ``POST /drain``, ``/migration``."""

from sniproxy.admin.routes import AdminApp, not_ready_reasons
from sniproxy.admin.server import AdminServer, start

__all__ = ["AdminApp", "AdminServer", "not_ready_reasons", "start"]
