"""sniproxy: the TLS front door of an MSSanté operator (IGC CPS -> IGC Santé migration)."""

__version__ = "0.1.0"
