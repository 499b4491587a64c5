"""Migrations: plaintext to encrypted in place, foreign tables, the guard, rollback."""
