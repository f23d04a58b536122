"""The refusal of a CRL, raised by the validation, the DER walker, the index and the fetch.

Owns: ``CrlRejected``. A leaf: it imports nothing of ``sniproxy.crl`` (only ``sniproxy.errors``), so every module of the
package can raise it without importing another (``entries`` and ``validate`` used to import each
other for it). Must not grow logic.
"""

from __future__ import annotations

from sniproxy.errors import SniproxyError


class CrlRejected(SniproxyError):
    """A CRL (or its fetch) refused, with a stable reason and a message for the log."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message

    def __reduce__(self) -> tuple[type[CrlRejected], tuple[str, str]]:
        # Raised in the indexing helper process: it must cross back to the parent intact.
        return type(self), (self.reason, self.message)
