"""`slm models`: the built-in catalog and what loads right now."""

from __future__ import annotations

from rich.table import Table

from slmkit.cli.common import JsonOpt, print_json, stdout
from slmkit.models.catalog import CATALOG, DEFAULT_MODEL, packaged_path


def available_now(entry) -> str:
    """'packaged', 'cached' or 'no' (needs the hub), checked without loading anything."""
    from huggingface_hub import try_to_load_from_cache

    if packaged_path(entry) is not None:
        return "packaged"
    return "cached" if isinstance(try_to_load_from_cache(entry.hub_id, "config.json"), str) else "no"


def models(json_output: JsonOpt = False) -> None:
    """List the model aliases slmkit knows, and which load offline now.

    Example: slm models --json
    """
    rows = [{"alias": e.alias, "hub_id": e.hub_id, "architecture": e.architecture, "kind": e.kind,
             "parameters": e.parameters, "available": available_now(e), "default": e.alias == DEFAULT_MODEL}
            for e in CATALOG]
    if json_output:
        print_json(rows)
        return
    table = Table("alias", "architecture", "kind", "parameters", "loads now", "hub id")
    for row in rows:
        alias = f"{row['alias']} (default)" if row["default"] else row["alias"]
        params = f"{row['parameters'] / 1e6:,.0f}M" if row["parameters"] < 1e9 else f"{row['parameters'] / 1e9:.1f}B"
        table.add_row(alias, row["architecture"], row["kind"], params,
                      row["available"] if row["available"] != "no" else "needs the hub", row["hub_id"])
    stdout.print(table)
