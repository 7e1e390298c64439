"""``python -m pyncette``: the ``pyncette`` command."""

from __future__ import annotations

from pyncette.cli import main

if __name__ == "__main__":
    main()
