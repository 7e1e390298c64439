"""``pyncette healthcheck``: probe an app's health endpoint, for container health checks."""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request

import click

from pyncette.cli.common import CommandFailed

DEFAULT_URL = "http://127.0.0.1:8080/health"
"""Where :func:`pyncette.healthcheck.use_healthcheck_server` answers by default."""


@click.command()
@click.option(
    "--url",
    default=DEFAULT_URL,
    show_default=True,
    envvar="PYNCETTE_HEALTHCHECK_URL",
    help="The health endpoint (env PYNCETTE_HEALTHCHECK_URL).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=5.0,
    show_default=True,
    help="Seconds to wait for the answer.",
)
def healthcheck(url: str, timeout: float) -> None:
    """Exit 0 if GET URL answers 2xx, else 1 (for container liveness probes).

    Prints nothing when healthy; otherwise one line on stderr says why.
    """
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise click.BadParameter(
            f"expected an http:// or https:// URL, got {url!r}", param_hint="--url"
        )
    request = urllib.request.Request(url, method="GET")  # noqa: S310 (scheme checked)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            status: int = response.status
    except urllib.error.HTTPError as error:
        status = error.code
        error.close()
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise CommandFailed(f"Unhealthy: no answer from {url} ({reason})") from None
    if not 200 <= status < 300:
        raise CommandFailed(f"Unhealthy: {url} answered HTTP {status}")
