"""The `ops` contract: the tensor operations the math in algorithms/ is written against.

tf1/ops.py builds each as a graph op, torch/ops.py runs it eagerly; both are modules whose
functions have the names and arguments below (tests/test_house.py checks that), in d2l's style of
parallel framework modules. `Ops` is a typing.Protocol: a module with these functions satisfies
it, and the algorithms take it as their first argument, `ops`.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

Tensor = Any  # a tf.Tensor or a torch.Tensor


class Ops(Protocol):
    """What a framework provides to the algorithms (each a module-level function there)."""

    # --- elementwise and shape ------------------------------------------------------------
    def sigmoid(self, a: Tensor) -> Tensor: """Apply the logistic sigmoid."""
    def relu(self, a: Tensor) -> Tensor: """Apply max(a, 0)."""
    def positive(self, a: Tensor) -> Tensor: """Return 1.0 where a > 0, else 0.0 (a's dtype)."""
    def exp(self, a: Tensor) -> Tensor: """Exponentiate elementwise."""
    def square(self, a: Tensor) -> Tensor: """Square elementwise."""
    def maximum(self, a: Tensor, b: Tensor) -> Tensor: """Take the elementwise maximum."""
    def where(self, condition: Tensor, a: Tensor, b: Tensor) -> Tensor: """Pick a or b."""
    def zeros_like(self, a: Tensor) -> Tensor: """Make zeros shaped like a."""
    def transpose(self, a: Tensor) -> Tensor: """Transpose a 2-D tensor."""
    def reshape(self, a: Tensor, shape: Sequence[int]) -> Tensor: """Reshape a tensor."""
    def permute(self, a: Tensor, perm: Sequence[int]) -> Tensor: """Reorder a tensor's axes."""
    def concat(self, tensors: Sequence[Tensor], axis: int) -> Tensor: """Join along an axis."""
    def gather(self, a: Tensor, indices: Sequence[int], axis: int) -> Tensor:
        """Take the given indices along an axis."""
    def const(self, array: Any, like: Tensor) -> Tensor:
        """Make a constant with the dtype (and device) of `like`."""
    def eps(self, like: Tensor) -> float: """Return the machine epsilon of like's dtype."""

    # --- reductions and products ------------------------------------------------------------
    def reduce_sum(self, a: Tensor, axis: int) -> Tensor: """Sum over one axis."""
    def reduce_max(self, a: Tensor) -> Tensor: """Return the largest element."""
    def reduce_mean(self, a: Tensor) -> Tensor: """Return the mean of every element."""
    def logsumexp(self, a: Tensor, axis: int) -> Tensor:
        """Return log(sum(exp(a))) over one axis, the axis kept (size 1)."""
    def trace(self, a: Tensor) -> Tensor: """Sum the diagonal of a square matrix."""
    def add_diagonal(self, a: Tensor, value: Tensor) -> Tensor:
        """Return a square matrix with value added to its diagonal (a + value * I)."""
    def matmul(self, a: Tensor, b: Tensor) -> Tensor: """Multiply matrices."""
    def dot(self, a: Tensor, b: Tensor, transpose_a: bool = False) -> Tensor:
        """Return (a or a^T) @ b for a matrix a and a vector or matrix b."""
    def einsum(self, equation: str, *operands: Tensor) -> Tensor: """Evaluate an einsum."""

    # --- factorizations ---------------------------------------------------------------------
    def eigh(self, a: Tensor) -> tuple: """Return (ascending eigenvalues, eigenvectors)."""
    def svd(self, a: Tensor) -> tuple: """Return thin (U, S, V) with a = U diag(S) V^T."""
    def cholesky(self, a: Tensor) -> tuple:
        """Return (lower factor, whether it is finite and complete)."""
    def cholesky_solve(self, factor: Tensor, b: Tensor) -> Tensor: """Solve L L^T x = b."""

    def numpy_call(self, fn: Callable, args: Sequence[Tensor], like: Tensor) -> Tensor:
        """Return fn(*args as numpy arrays) as a tensor shaped and typed like `like` (tf1: a
        tf.numpy_function in the graph): a maintained numpy solver inside a step."""

    # --- control flow (eager in torch, graph ops in tf1) ---------------------------------------
    def while_loop(self, test: Callable, body: Callable, loop_vars: tuple) -> tuple:
        """Run body while test holds."""
    def cond(self, pred: Tensor, true_fn: Callable, false_fn: Callable) -> Any:
        """Return true_fn() if pred holds, else false_fn()."""
