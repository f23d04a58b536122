"""Unit tests of contexts and verification (sniproxy/tls/)."""
