"""Apps that cannot start, and an attribute that is not an app."""

from __future__ import annotations

from pyncette import Pyncette

app = Pyncette(batch_size=0)  # refused by app.create(), as in 1.x

not_an_app = 42
