"""Alembic revisions of the d365ct store, one file per schema change, oldest first.

Alembic skips this file; it exists so setuptools ships the directory as a package.
"""
