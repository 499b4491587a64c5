"""Search quality harness: corpus builders, question sets, metrics and the paired test."""
