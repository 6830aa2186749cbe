"""`adaptkit plugins`: every registered component, which plugin provides it, and broken plugins."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from adaptkit.commands.common import Console


def command(
    ctx: typer.Context,
    kind: Annotated[Optional[str], typer.Option("--kind", help="Only this kind: scorer, method, merge (merge method), eval (eval backend), lid (lid backend), initializer or command.")] = None,
) -> None:
    """List registered plugins and methods: name, kind, plugin, summary, reference, parameters."""
    from adaptkit.registry import get_registry

    kind = resolve_kind(kind) if kind is not None else None
    registry = get_registry()
    specs = sorted((s for s in registry.all_specs() if kind is None or s.kind == kind), key=lambda s: (s.kind, s.name))
    console = Console.of(ctx)
    rows = [
        {
            "name": s.name,
            "kind": s.kind,
            "plugin": s.plugin,
            "summary": s.summary,
            "reference": s.reference,
            "parameters": s.parameters(),
            "extras": list(s.extras),
        }
        for s in specs
    ]
    broken = [{"plugin": b.name, "error": b.error} for b in registry.broken]
    conflicts = [{"kind": c.kind, "name": c.name, "plugins": c.plugins} for c in registry.conflicts.values()]
    console.table(
        "adaptkit plugins",
        ["name", "kind", "plugin", "summary", "reference", "parameters"],
        [[s.name, s.kind, s.plugin, s.summary, s.reference, s.param_summary()] for s in specs],
    )
    for b in broken:
        console.print(f"[red]BROKEN[/red] plugin {b['plugin']}: {b['error']}")
    for c in conflicts:
        console.print(f"[red]CONFLICT[/red] {c['kind']} '{c['name']}' registered by: {', '.join(c['plugins'])}")
    console.result({"plugins": rows, "broken": broken, "conflicts": conflicts})


def resolve_kind(text: str) -> str:
    """A kind by its name or its first word: `merge` and `merge-method` are `merge method`."""
    from adaptkit.errors import InputError, did_you_mean
    from adaptkit.registry import HOOK_FOR_KIND

    wanted = " ".join(text.replace("-", " ").replace("_", " ").lower().split())
    matches = [k for k in HOOK_FOR_KIND if wanted in (k, k.split()[0])]
    if len(matches) != 1:
        raise InputError(f"--kind: unknown kind '{text}'{did_you_mean(wanted, HOOK_FOR_KIND)} (kinds: {', '.join(HOOK_FOR_KIND)})")
    return matches[0]
