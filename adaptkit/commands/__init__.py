"""One module per subcommand. Each exposes either `command` (a function) or `app` (a Typer group)."""
