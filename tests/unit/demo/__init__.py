"""Unit tests of the demo kit (sniproxy/demo/)."""
