"""The SQL backend: one SQLAlchemy Core (asyncio) repository for SQLite, PostgreSQL and
MySQL/MariaDB.

The per-database modules (:mod:`pyncette.sqlite`, :mod:`pyncette.postgres`,
:mod:`pyncette.mysql`) only turn options into settings (``XSettings.from_options``: a
URL, a table name and its options) and open them with
:func:`pyncette.sql.connect.open_sql_repository`.
The package itself imports nothing, so validating options needs no SQLAlchemy.
"""
