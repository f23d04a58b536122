"""Unit tests of the config readers and model (sniproxy/config/)."""
