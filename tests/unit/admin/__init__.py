"""Unit tests of the admin endpoint (sniproxy/admin/)."""
