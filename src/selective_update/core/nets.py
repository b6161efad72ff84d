"""The study's MLPs as numpy: initial weights, widths, the forward pass, output masks, toy data."""
from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from ..validation import check_choice, check_int, check_real

@dataclass(frozen=True)
class Data:
    """Hold a training batch and held-out inputs (numpy float64)."""

    x: np.ndarray
    y: np.ndarray
    x_eval: np.ndarray
    y_eval: np.ndarray


@dataclass(frozen=True)
class Memory:
    """Stored examples of earlier tasks, for run(reference=...): inputs x (n, n_in), their
    targets y (n, n_out, like data.y) and the task each came from (n integers). A strategy that
    protects outputs on inputs reads x only; gem and ewc need y (gem one constraint per task)."""

    x: np.ndarray
    y: np.ndarray
    task: np.ndarray


def _toy_split(rng, n, noise):
    x = rng.random((n, 3))
    y = np.stack([x.sum(axis=1), (x ** 2).sum(axis=1) + noise * rng.random(n)], axis=1)
    return x, y


def make_toy_data(n_sample=8, n_eval=256, seed=0, noise=0.01) -> Data:
    """Draw the seed's data: x ~ U[0,1)^3, y1 = sum(x), y2 = sum(x^2) + noise * U[0,1)."""
    check_int("n_sample", n_sample, 1)
    check_int("n_eval", n_eval, 1)
    check_int("seed", seed, 0)
    check_real("noise", noise, 0.0)
    rng = np.random.default_rng(seed)
    x, y = _toy_split(rng, n_sample, noise)
    x_eval, y_eval = _toy_split(rng, n_eval, noise)
    return Data(x, y, x_eval, y_eval)


INITS = ("normal", "xavier_uniform")
ACTIVATIONS = ("sigmoid", "relu")  # of the hidden layers (algorithms.nullspace.activate)
LOSSES = ("mse", "cross_entropy")


def init_params(sizes=(3, 4, 2), seed=0, stddev=0.1, init="normal") -> dict:
    """Draw the weights and biases of an MLP with the given layer widths.

    init: "normal", N(0, stddev) weights and biases (the seed's); "xavier_uniform", weights from
    U(-a, a) with a = sqrt(6 / (fan_in + fan_out)) and zero biases (GEM's MLP; stddev unused).
    """
    sizes = tuple(sizes) if isinstance(sizes, (list, tuple)) else sizes
    if (not isinstance(sizes, tuple) or len(sizes) < 3
            or not all(isinstance(s, numbers.Integral) and s >= 1 for s in sizes)):
        raise ValueError(f"sizes: got {sizes!r}; allowed: input, hidden layer(s) and output "
                         "widths, at least 3 positive integers")
    if sizes[-1] < 2:
        raise ValueError(f"sizes: got {sizes!r}; allowed: at least 2 outputs")
    check_int("seed", seed, 0)
    check_real("stddev", stddev, 0.0)
    check_choice("init", init, INITS)
    rng = np.random.default_rng(seed)
    params = {}
    for layer, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        if init == "normal":
            params[f"W{layer}"] = rng.normal(0.0, stddev, (d_in, d_out))
            params[f"b{layer}"] = rng.normal(0.0, stddev, d_out)
        else:
            bound = np.sqrt(6.0 / (d_in + d_out))
            params[f"W{layer}"] = rng.uniform(-bound, bound, (d_in, d_out))
            params[f"b{layer}"] = np.zeros(d_out)
    return params


def n_layers(params) -> int:
    """Count the weight layers of a params dict."""
    return sum(1 for name in params if name.startswith("W"))


def layer_sizes(params) -> tuple:
    """Return (input, hidden..., output) widths of a params dict."""
    L = n_layers(params)
    return (params["W1"].shape[0],) + tuple(params[f"W{l}"].shape[1] for l in range(1, L + 1))


def output_mask(n_out, outputs, dtype="float64") -> np.ndarray:
    """Return the (n_out,) row that is 1 on the given outputs and 0 elsewhere (dtype bool: a
    boolean mask): the one mask builder of the package, for losses, heads and constraints."""
    mask = np.zeros(n_out, dtype=dtype)
    mask[list(outputs)] = 1
    return mask


def output_gradient(n, n_out, train, dtype="float64") -> np.ndarray:
    """Return the question's G: 0 on other outputs, -1 on trained ones, averaged over the batch."""
    return np.tile(-output_mask(n_out, train, dtype) / n, (n, 1))


def forward(params, x, activation="sigmoid"):
    """Return the layer inputs [x, h1, ..., h_{L-1}] and the outputs of an MLP (numpy).

    The numpy twin of algorithms.nullspace.forward, for pretraining and scoring.
    """
    L = n_layers(params)
    hs = [x]
    for l in range(1, L):
        a = hs[-1] @ params[f"W{l}"] + params[f"b{l}"]
        hs.append(1.0 / (1.0 + np.exp(-a)) if activation == "sigmoid" else np.maximum(a, 0.0))
    return hs, hs[-1] @ params[f"W{L}"] + params[f"b{L}"]


def n_params(params) -> int:
    """Count the scalar parameters of a params dict."""
    return int(sum(np.asarray(v).size for v in params.values()))
