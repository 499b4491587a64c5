"""The audit trail: hash-chained events, signed checkpoints, verification."""
