"""The outbox: work that talks to the outside, done at least once (docs/worker.md)."""
