"""The WSGI entry point for gunicorn: `gunicorn wsgi:app` (see docs/deployment.md)."""

from bridge import create_app

app = create_app()
