"""Unit tests of processes, cutovers, reload watch (sniproxy/lifecycle/)."""
