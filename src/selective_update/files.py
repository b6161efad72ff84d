"""Files the package writes: all-or-nothing (atomic) writes, byte-stable CSV and Markdown text."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write(path, data):
    """Write text or bytes to path through a temporary sibling and os.replace (all or nothing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if mode == "wb" else {"encoding": "utf-8"})) as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def tidy(frame, order):
    """Sort rows deterministically (stable) and renumber the index."""
    return frame.sort_values(order, kind="mergesort").reset_index(drop=True)


def markdown_table(head, rows) -> str:
    """A Markdown table from a header and rows of cell texts."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def csv_text(frame) -> str:
    """CSV with floats as their shortest round-trip repr: byte-identical for identical numbers."""
    return frame.to_csv(index=False, lineterminator="\n", float_format=lambda v: repr(float(v)))
