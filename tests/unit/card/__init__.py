"""Unit tests of the card module (sniproxy/card/)."""
