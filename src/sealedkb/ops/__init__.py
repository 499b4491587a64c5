"""Operator tooling: doctor."""
