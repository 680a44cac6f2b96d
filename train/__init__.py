"""Thin training loop that consumes the packed shards (built in a later issue)."""
