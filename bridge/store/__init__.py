"""The bridge's own store: engine, models, migrations, housekeeping (docs/architecture.md)."""
