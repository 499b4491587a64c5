"""Encrypted snapshots: the file format, create, verify, restore, copy, drill, schedule."""
