"""The study's result files: tidy rows, byte-stable CSV, atomic writes, reading a study back."""
from __future__ import annotations

from pathlib import Path

from .. import validation
from ..files import atomic_write, csv_text, tidy
from ..settings import REPORTS_DIR, ROOT

RESULT_COLUMNS = ["dataset", "strategy", "framework", "optimizer", "weight_decay",
                  "warm_start_steps", "lr", "seed", "step", "dtype", "n_sample", "hidden", "loss",
                  "train_loss", "drift_train", "drift_eval", "acc_keep", "acc_train", "promise",
                  "holds", "drift_ratio"]
RESULT_ORDER = ["dataset", "strategy", "framework", "optimizer", "weight_decay",
                "warm_start_steps", "seed", "step"]
SWEEP_COLUMNS = ["dataset", "strategy", "framework", "optimizer", "weight_decay",
                 "warm_start_steps", "seed", "lr", "drift_train", "drift_eval", "promise"]
SWEEP_ORDER = ["dataset", "strategy", "framework", "optimizer", "weight_decay",
               "warm_start_steps", "seed", "lr"]
# One row per run: what its promise measured (the reason when it broke).
VERDICT_COLUMNS = ["dataset", "strategy", "framework", "optimizer", "weight_decay",
                   "warm_start_steps", "seed", "promise", "holds", "measured"]
VERDICT_ORDER = VERDICT_COLUMNS[:7]
STATUS_COLUMNS = ["name", "notebook", "dataset", "strategy", "status", "error", "html",
                  "attempts", "seconds"]


def write_results(grid, results_dir):
    """Write <dataset>-<strategy>.csv, -lr.csv and -verdicts.csv into results_dir (atomic)."""
    if results_dir is None:
        return []
    name = f"{grid.cfg['dataset']}-{grid.cfg['strategy']}"
    paths = []
    for suffix, frame in (("", grid.rows), ("-lr", grid.sweep), ("-verdicts", grid.verdicts)):
        paths.append(Path(results_dir) / f"{name}{suffix}.csv")
        atomic_write(paths[-1], csv_text(frame))
    return paths


def load_reports(reports_dir=None):
    """Read a study's results.csv, lr_sweep.csv and status.csv (for notebooks/summary.ipynb)."""
    import pandas as pd

    reports_dir = _reports(reports_dir)
    if not reports_dir.is_dir():
        validation.fail("reports_dir", str(reports_dir), "a folder written by `python -m "
                        "selective_update study` (results.csv, lr_sweep.csv, status.csv)")

    def read(name, columns):
        path = reports_dir / name
        return pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=columns)

    return (read("results.csv", RESULT_COLUMNS), read("lr_sweep.csv", SWEEP_COLUMNS),
            read("status.csv", STATUS_COLUMNS))


def load_verdicts(reports_dir=None):
    """Read a study's verdicts.csv: one row per run, its promise, whether it held and why."""
    import pandas as pd

    path = _reports(reports_dir) / "verdicts.csv"
    return pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=VERDICT_COLUMNS)


def _reports(reports_dir):
    return Path(ROOT / REPORTS_DIR if reports_dir is None else reports_dir)


def read_optional(reports_dir, name):
    """Read a CSV a study may have written into reports_dir; None when it is not there."""
    import pandas as pd

    path = _reports(reports_dir) / name
    return pd.read_csv(path) if path.is_file() else None


def write_text(reports_dir, name, text):
    """Write a text file into reports_dir (atomic); return its path."""
    path = _reports(reports_dir) / name
    atomic_write(path, text if text.endswith("\n") else text + "\n")
    return path


def _suffix(path):
    """Return which of a run's files this is: '' (rows), '-lr' or '-verdicts'."""
    return next((s for s in ("-lr", "-verdicts") if path.stem.endswith(s)), "")


def concat_results(staging):
    """Concatenate the runs' rows into results.csv, lr_sweep.csv and verdicts.csv (sorted)."""
    import pandas as pd

    runs = Path(staging) / "runs"
    out = {}
    for name, suffix, columns, order in (
            ("results.csv", "", RESULT_COLUMNS, RESULT_ORDER),
            ("lr_sweep.csv", "-lr", SWEEP_COLUMNS, SWEEP_ORDER),
            ("verdicts.csv", "-verdicts", VERDICT_COLUMNS, VERDICT_ORDER)):
        files = sorted(p for p in runs.glob("*.csv") if _suffix(p) == suffix)
        frames = [pd.read_csv(p) for p in files]
        frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
        frame = tidy(frame[columns], order)
        atomic_write(Path(staging) / name, csv_text(frame))
        out[name] = frame
    return out


def combine_parts(staging, name, labels=None):
    """Concatenate the CSV files of a scenario's parts (runs/<name>-<label>/*.csv) into
    staging/<file>, parts in the order of `labels` (default: widths h<width> in increasing
    order), as text (every cell as written); return the paths.

    A line an earlier part already wrote is left out (a sweep each part runs alike); each part's
    rows are sorted by its own key first (a width, a framework), so the result is byte for byte
    the file one run of every part writes. A part that failed is missing: the others' rows stay.
    """
    found = {p.name[len(name) + 1:]: p for p in Path(staging).glob(f"runs/{name}-*/")}
    if labels is None:
        labels = sorted((k for k in found if k[1:].isdigit()), key=lambda k: int(k[1:]))
    parts = [found[label] for label in labels if label in found]
    names = sorted({f.name for part in parts for f in part.glob("*.csv")})
    paths = []
    for file in names:
        texts = [(part / file).read_text() for part in parts if (part / file).is_file()]
        header = texts[0].split("\n", 1)[0]
        if any(t.split("\n", 1)[0] != header for t in texts):
            raise ValueError(f"{file}: the parts of {name} have different columns")
        seen, body = set(), []
        for text in texts:
            lines = text.split("\n", 1)[1].splitlines(keepends=True)
            body += [line for line in lines if line not in seen]
            seen.update(lines)
        paths.append(Path(staging) / file)
        atomic_write(paths[-1], f"{header}\n{''.join(body)}")
    return paths
