"""Per-sample checks: pure functions over one record, so they test without Ray."""
