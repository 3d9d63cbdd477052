"""Small things the commands and the worker share, kept apart from Flask's app."""

from __future__ import annotations


def instance_path() -> str:
    """The Flask instance folder of the `bridge` package (where the SQLite file lives)."""
    from flask import Flask

    return Flask("bridge", instance_relative_config=True).instance_path
