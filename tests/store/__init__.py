"""Tests of d365ct.store: migrations and the D365 job store on SQLite and PostgreSQL."""
