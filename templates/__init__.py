"""Jinja2 templates of the generated module (package data)."""
