"""The knowledge base facade and its wiring: access rules, bearer tokens, status and
the auditor summary."""
