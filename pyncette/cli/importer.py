"""``pyncette import-1x``: carry Pyncette 1.x dynamic instances over from another store."""

from __future__ import annotations

import json
from typing import Any

import click

from pyncette.cli.common import run_async
from pyncette.cli.loading import APP_HELP, load_app

_SOURCES = {
    "sql": ("sql_url", ("sql_table",)),
    "redis": ("redis_url", ("redis_namespace",)),
    "dynamodb": (
        "dynamodb_table",
        ("dynamodb_region", "dynamodb_endpoint", "dynamodb_partition_prefix"),
    ),
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _source(options: dict[str, Any]) -> str:
    """The one store the options name; a usage error unless exactly one is named and
    no option of another store is given."""
    chosen = [source for source, (main, _) in _SOURCES.items() if options[main] is not None]
    if len(chosen) != 1:
        mains = ", ".join(_flag(main) for main, _ in _SOURCES.values())
        raise click.UsageError(f"Give exactly one source of 1.x data: {mains}")
    for source, (_, extras) in _SOURCES.items():
        stray = [_flag(extra) for extra in extras if options[extra] is not None]
        if source != chosen[0] and stray:
            raise click.UsageError(f"{', '.join(stray)} only go with {_flag(_SOURCES[source][0])}")
    return chosen[0]


@click.command("import-1x", epilog=APP_HELP)
@click.argument("app", metavar="APP")
@click.option(
    "--sql-url",
    metavar="URL",
    help="1.x SQL database: postgresql://user@host/db, mysql://user:pw@host/db or "
    "sqlite:///path/to/file.",
)
@click.option("--sql-table", metavar="TABLE", help="1.x table (default: pyncette_tasks).")
@click.option("--redis-url", metavar="URL", help="1.x Redis server or cluster: redis://host:6379.")
@click.option(
    "--redis-namespace", metavar="NAMESPACE", help="1.x's redis_namespace (default: empty)."
)
@click.option("--dynamodb-table", metavar="TABLE", help="1.x's dynamodb_table_name.")
@click.option("--dynamodb-region", metavar="REGION", help="1.x's dynamodb_region_name.")
@click.option("--dynamodb-endpoint", metavar="URL", help="1.x's dynamodb_endpoint.")
@click.option(
    "--dynamodb-partition-prefix",
    metavar="PREFIX",
    help="1.x's dynamodb_partition_prefix (default: empty).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def import_1x(app: str, as_json: bool, **options: Any) -> None:
    """Import the dynamic task instances Pyncette 1.x kept under another name.

    Stop the 1.x apps first. The instances of the app's dynamic and partitioned tasks
    are registered with their options, arguments and next run (an instance already
    registered keeps the sooner run); 1.x leases are dropped and the 1.x data is only
    read. Give exactly one source: --sql-url, --redis-url or --dynamodb-table. (1.x data
    under the app's own table, namespace or prefix is converted at start-up instead.)
    """
    from pyncette import legacy

    source = _source(options)
    pyncette = load_app(app)

    async def run() -> legacy.ImportResult:
        async with pyncette.create(fixtures=False) as ctx:
            if source == "sql":
                return await legacy.import_pyncette1_sql(
                    ctx, options["sql_url"], table=options["sql_table"] or legacy.DEFAULT_TABLE
                )
            if source == "redis":
                return await legacy.import_pyncette1_redis(
                    ctx, options["redis_url"], namespace=options["redis_namespace"] or ""
                )
            return await legacy.import_pyncette1_dynamodb(
                ctx,
                table_name=options["dynamodb_table"],
                region_name=options["dynamodb_region"],
                endpoint=options["dynamodb_endpoint"],
                partition_prefix=options["dynamodb_partition_prefix"] or "",
            )

    result = run_async(run())
    if as_json:
        click.echo(json.dumps({"imported": result.imported, "skipped": result.skipped}, indent=2))
        return
    click.echo(f"{result.imported} imported, {len(result.skipped)} skipped")
    for key, why in result.skipped.items():
        click.echo(f"  skipped {key}: {why}")
