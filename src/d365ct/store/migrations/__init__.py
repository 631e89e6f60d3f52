"""Alembic environment and revisions of the d365ct store, shipped inside the package.

Run them with ``d365ct.store.migrate(url)``; no alembic.ini is needed.
"""
