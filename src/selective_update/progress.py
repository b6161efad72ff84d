"""Progress bars for a notebook's long cells: tqdm.auto when run by hand, silent in the batch.

The study's workers set settings.PROGRESS_ENV=0 in their kernels' environment, so the pages it
renders carry no bar; a notebook opened in JupyterLab shows a widget bar (a text bar elsewhere).
"""
from __future__ import annotations

import os

from .settings import PROGRESS_ENV


def shown() -> bool:
    """Say whether bars are shown here (not when settings.PROGRESS_ENV is "0")."""
    return os.environ.get(PROGRESS_ENV, "1") != "0"


def progress(iterable=None, **kwargs):
    """Wrap an iterable in a tqdm.auto bar (kwargs: tqdm's, e.g. total, desc), or a silent one."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=not shown(), **kwargs)
