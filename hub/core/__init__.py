"""Decisions only: no I/O, no clock reads, no environment reads."""
