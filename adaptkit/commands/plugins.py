"""`adaptkit plugins`: every registered component, which plugin provides it, and broken plugins."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from adaptkit.commands.common import Console


def command(
    ctx: typer.Context,
    kind: Annotated[Optional[str], typer.Option("--kind", help="Only this kind: scorer, method, merge method, eval backend, lid backend, command.")] = None,
) -> None:
    """List registered plugins and methods: name, kind, plugin, summary, reference, parameters."""
    from adaptkit.errors import InputError
    from adaptkit.registry import HOOK_FOR_KIND, did_you_mean, get_registry

    if kind is not None and kind not in HOOK_FOR_KIND:
        raise InputError(f"--kind: unknown kind '{kind}'{did_you_mean(kind, HOOK_FOR_KIND)} (kinds: {', '.join(HOOK_FOR_KIND)})")
    registry = get_registry()
    specs = [s for s in registry.all_specs() if kind is None or s.kind == kind]
    console = Console.of(ctx)
    rows = [
        {
            "name": s.name,
            "kind": s.kind,
            "plugin": s.plugin,
            "summary": s.summary,
            "reference": s.reference,
            "parameters": s.param_summary(),
            "extras": list(s.extras),
        }
        for s in sorted(specs, key=lambda s: (s.kind, s.name))
    ]
    broken = [{"plugin": b.name, "error": b.error} for b in registry.broken]
    conflicts = [{"kind": c.kind, "name": c.name, "plugins": c.plugins} for c in registry.conflicts.values()]
    console.table(
        "adaptkit plugins",
        ["name", "kind", "plugin", "summary", "reference", "parameters"],
        [[r["name"], r["kind"], r["plugin"], r["summary"], r["reference"], r["parameters"]] for r in rows],
    )
    for b in broken:
        console.print(f"[red]BROKEN[/red] plugin {b['plugin']}: {b['error']}")
    for c in conflicts:
        console.print(f"[red]CONFLICT[/red] {c['kind']} '{c['name']}' registered by: {', '.join(c['plugins'])}")
    console.result({"plugins": rows, "broken": broken, "conflicts": conflicts})
