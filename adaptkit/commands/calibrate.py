"""`adaptkit calibrate` (being built)."""

from adaptkit.commands.common import DebugOpt


def command(debug: DebugOpt = False) -> None:
    """Not available yet."""
    from adaptkit.errors import AdaptkitError

    raise AdaptkitError("adaptkit calibrate is not available in this build yet")
