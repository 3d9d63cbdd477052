"""Operator features: the monthly report, its endpoint, reconciliation (docs/operations.md)."""
