"""A module that fails while it is imported (the app's own bug, not a usage error)."""

from __future__ import annotations

raise RuntimeError("configuration server unreachable")
