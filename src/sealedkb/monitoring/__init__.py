"""Metrics, telemetry counters, alarms and their notifications."""
