"""sealedkb: an encrypted-at-rest knowledge base on PostgreSQL + pgvector."""

__version__ = "0.1.0"
