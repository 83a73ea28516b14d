"""``cdsf-bench plugins``: every registered component, and the plugins that failed to load.

It loads the plugins (and so torch, which their component types need) and nothing of the
training stack.
"""

from __future__ import annotations

import json

import click
from rich.table import Table

from cdsf_bench.progress import console


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plugins(as_json: bool) -> None:
    """List every registered plugin component: kind, name, distribution, description."""
    from cdsf_bench.registry import KINDS, default_registry

    registry = default_registry()
    rows = [
        {
            "kind": kind,
            "name": c.name,
            "plugin": c.plugin,
            "distribution": c.distribution,
            "version": c.version,
            "description": c.description,
        }
        for kind in KINDS
        for c in sorted(registry.components.get(kind, {}).values(), key=lambda c: c.name)
    ]
    failures = [{"plugin": name, "error": error} for name, error in registry.failures.items()]
    if as_json:
        click.echo(json.dumps({"components": rows, "failed": failures}, indent=2))
        return
    table = Table(title="cdsf-bench plugins")
    for column in ("kind", "name", "distribution", "description"):
        table.add_column(column)
    for row in rows:
        dist = f"{row['distribution']} {row['version']}".strip() or row["plugin"]
        table.add_row(row["kind"], row["name"], dist, row["description"])
    console.print(table)
    for failure in failures:
        console.print(f"[red]failed to load plugin {failure['plugin']}:[/] {failure['error']}")
