"""The study's datasets as files under data/: the seed's toy data and scikit-learn's 8x8 digits."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import core, validation
from .settings import (
    DATA_DIR,
    DATA_FILES,
    DEFAULT_HIDDEN,
    DEFAULT_N_SAMPLE,
    DIGITS_TRAIN,
    MOMENTUM,
    PRETRAIN_LR,
    PRETRAIN_STEPS,
)

DATASETS = ("toy", "digits")


@dataclass(frozen=True)
class Setup:
    """Hold what one study run starts from: data, initial params, kept and trained outputs."""

    dataset: str
    data: core.Data
    params: dict
    keep: tuple
    train: tuple


def default_outputs(dataset):
    """Return the default (keep, train) outputs: toy keeps 0 and trains 1; digits trains class 9."""
    validation.check_choice("dataset", dataset, DATASETS)
    return ((0,), (1,)) if dataset == "toy" else (tuple(range(9)), (9,))


def _frame(split, x, y, y_names):
    import pandas as pd

    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(x.shape[1])])
    for i, name in enumerate(y_names):
        frame[name] = y[:, i]
    frame.insert(0, "split", split)
    return frame


def build_tables():
    """Compute the CSV tables from their sources: {file name: pandas DataFrame}."""
    import pandas as pd
    from sklearn.datasets import load_digits

    toy = core.make_toy_data()
    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))
    x, labels = digits.data[order] / 16.0, digits.target[order]
    return {
        "toy.csv": pd.concat([_frame("train", toy.x, toy.y, ["y0", "y1"]),
                              _frame("eval", toy.x_eval, toy.y_eval, ["y0", "y1"])]),
        "digits.csv": pd.concat([
            _frame("train", x[:DIGITS_TRAIN], labels[:DIGITS_TRAIN, None], ["label"]),
            _frame("eval", x[DIGITS_TRAIN:], labels[DIGITS_TRAIN:, None], ["label"])]),
    }


def write_data(out=DATA_DIR):
    """Write data/toy.csv and data/digits.csv (float64 round-trips exactly through %.17g)."""
    from .files import atomic_write

    paths = []
    for name, frame in build_tables().items():
        path = Path(out) / name
        atomic_write(path, frame.to_csv(index=False, float_format="%.17g", lineterminator="\n"))
        paths.append(path)
    return paths


class DataFileError(ValueError):
    """A data file is missing or damaged (one line naming it and `make data`)."""


def check_file(name, data_dir=None) -> Path:
    """Check data/<name>.csv against settings.DATA_FILES: header, row count, then SHA-256.

    Raises DataFileError, one line naming the file and the fix, before anything reads it.
    """
    import hashlib

    validation.check_choice("dataset", name, DATASETS)
    data_dir = DATA_DIR if data_dir is None else data_dir
    path, expected = Path(data_dir) / f"{name}.csv", DATA_FILES[name]
    if not path.is_file():
        raise DataFileError(f"{path} is missing; regenerate it with `make data`")
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    header = lines[0].decode("utf-8", "replace").split(",")
    rows = len(lines) - 1 - (lines[-1] == b"")  # a last line without a newline still counts
    problem = None
    columns = expected["columns"]
    if len(header) != len(columns):
        problem = f"its header has {len(header)} columns, expected {len(columns)}"
    elif header != columns:
        at = next(i for i, (a, b) in enumerate(zip(header, columns)) if a != b)
        problem = f"its column {at + 1} is {header[at]!r}, expected {columns[at]!r}"
    elif rows != expected["rows"]:
        problem = f"it has {rows} rows, expected {expected['rows']}"
    elif hashlib.sha256(raw).hexdigest() != expected["sha256"]:
        problem = "its SHA-256 differs from settings.DATA_FILES"
    if problem:
        raise DataFileError(f"{path} is damaged ({problem}); regenerate it with `make data`")
    return path


def _read(name, data_dir):
    import pandas as pd

    path = check_file(name, data_dir)
    frame = pd.read_csv(path)
    return frame[frame.split == "train"].drop(columns="split"), \
        frame[frame.split == "eval"].drop(columns="split")


def load_dataset(name, data_dir=DATA_DIR) -> core.Data:
    """Load a dataset from its CSV file as Data (digits targets are one-hot over 10 classes)."""
    validation.check_choice("dataset", name, DATASETS)
    train, held_out = _read(name, data_dir)
    if name == "toy":
        def xy(f):
            return (f[[c for c in f if c.startswith("x")]].to_numpy(np.float64),
                    f[["y0", "y1"]].to_numpy(np.float64))
    else:
        def xy(f):
            return (f[[c for c in f if c.startswith("x")]].to_numpy(np.float64),
                    np.eye(10)[f["label"].to_numpy()])
    (x, y), (x_eval, y_eval) = xy(train), xy(held_out)
    return core.Data(x, y, x_eval, y_eval)


def pretrain(params, x, y, steps=PRETRAIN_STEPS, lr=PRETRAIN_LR):
    """Fit an MLP on every output by full-batch momentum steps on the MSE (numpy, deterministic)."""
    params = {k: v.copy() for k, v in params.items()}
    L = core.n_layers(params)
    velocity = {k: np.zeros_like(v) for k, v in params.items()}
    for _ in range(steps):
        hs, out = core.forward(params, x)
        delta = 2.0 * (out - y) / y.size
        for l in range(L, 0, -1):
            grads = {f"W{l}": hs[l - 1].T @ delta, f"b{l}": delta.sum(axis=0)}
            if l > 1:
                delta = (delta @ params[f"W{l}"].T) * hs[l - 1] * (1.0 - hs[l - 1])
            for k, g in grads.items():
                velocity[k] = MOMENTUM * velocity[k] + g
                params[k] -= lr * velocity[k]
    return params


def accuracy(outputs, y, classes):
    """Return the argmax accuracy on the samples whose label is in `classes`."""
    labels = y.argmax(axis=-1)
    rows = np.isin(labels, list(classes))
    return float((outputs[rows].argmax(axis=-1) == labels[rows]).mean())


def prepare(dataset, *, n_sample=None, hidden=None, seed=0, keep=None, train=None,
            data_dir=DATA_DIR) -> Setup:
    """Return the data, initial params and outputs one study run starts from."""
    validation.check_choice("dataset", dataset, DATASETS)
    hidden = DEFAULT_HIDDEN[dataset] if hidden is None else hidden
    validation.check_int("hidden", hidden, 1)
    validation.check_int("seed", seed, 0)
    full = load_dataset(dataset, data_dir)
    limit = len(full.x)
    n_sample = DEFAULT_N_SAMPLE[dataset] if n_sample is None else n_sample
    if not validation.is_int(n_sample) or not 1 <= n_sample <= limit:
        validation.fail("n_sample", n_sample, f"an integer in 1..{limit} for dataset {dataset!r}")
    default_keep, default_train = default_outputs(dataset)
    n_out = full.y.shape[1]
    keep = validation.check_outputs("keep", default_keep if keep is None else keep, n_out)
    train = validation.check_outputs("train", default_train if train is None else train, n_out)
    validation.check_disjoint(keep, train)
    sizes = (full.x.shape[1], hidden, n_out)
    params = core.init_params(sizes, seed=seed)
    if dataset == "digits":
        params = pretrain(params, full.x, full.y)
    data = core.Data(full.x[:n_sample], full.y[:n_sample], full.x_eval, full.y_eval)
    return Setup(dataset, data, params, keep, train)


MEMORY_ROWS = 16  # the promise table's memory for gem and ewc: two earlier tasks of 8 examples


def memory_for(setup: Setup) -> core.Memory:
    """Return the promise table's Memory for gem and ewc: the first MEMORY_ROWS held-out examples
    with their targets, as two earlier tasks (the held-out inputs stay the held-out ones)."""
    x, y = setup.data.x_eval[:MEMORY_ROWS], setup.data.y_eval[:MEMORY_ROWS]
    return core.Memory(x, y, np.repeat([0, 1], MEMORY_ROWS // 2))


def add_arguments(parser: argparse.ArgumentParser):
    """Declare the `data` command's options."""
    parser.add_argument("--out", default=str(DATA_DIR), help="folder for the CSV files")


def main(args) -> int:
    """Regenerate the CSV files under data/."""
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise SystemExit(f"--out: {out} is a file; allowed: a folder")
    for path in write_data(out):
        print(f"wrote {path}")
    return 0
