"""The money rules: the refunds ledger and applying results (docs/architecture.md)."""
