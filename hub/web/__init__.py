"""Read-only pages over the shared care record, for people who print and take them into a meeting."""
