"""Unit tests of CRL sources, validation, index, state, manager (sniproxy/crl/)."""
