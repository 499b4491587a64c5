"""Stored formats: the entry document layout and (aad) the one place AAD strings are made."""
