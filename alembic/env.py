"""Alembic environment for pyncette task tables; the logic lives in pyncette.sql.migrations."""

from __future__ import annotations

import logging.config

from alembic import context

from pyncette.sql.migrations import run_env

if context.config.config_file_name is not None:
    logging.config.fileConfig(context.config.config_file_name, disable_existing_loggers=False)

run_env()
