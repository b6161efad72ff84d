"""The `study` command (not built yet)."""


def add_arguments(parser):
    """Declare the command's options."""


def main(args) -> int:
    """Say that the command is not built yet."""
    print("study: not built yet")
    return 1
