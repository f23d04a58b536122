"""Revocation: CRL sources (HTTP, LDAP, files), validation, compact index, disk cache, refresh."""
