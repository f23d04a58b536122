"""Unit tests of the migration report (sniproxy/report/)."""
