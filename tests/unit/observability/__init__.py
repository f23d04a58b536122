"""Unit tests of logs and metrics (sniproxy/observability/)."""
