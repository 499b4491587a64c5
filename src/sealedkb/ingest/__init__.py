"""Importing files: discovery, Markdown/HTML/text parsing and chunking."""
