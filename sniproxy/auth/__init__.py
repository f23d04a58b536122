"""Proxy-side SASL EXTERNAL: which mailboxes a verified card may log in to."""
