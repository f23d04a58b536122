"""Unit tests of the sans-IO protocol code (sniproxy/proto/)."""
