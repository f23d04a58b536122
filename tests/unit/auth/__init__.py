"""Unit tests of login decisions and SASL (sniproxy/auth/)."""
