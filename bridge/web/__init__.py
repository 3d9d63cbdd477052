"""The web process's edges: caller authentication, health, gunicorn (docs/deployment.md)."""
