"""algorithms.memory: gem's projection (GEM's project2cone2) and ewc's Fisher and penalty, over
torch's ops in float64, against independent computations."""
import numpy as np
import pytest
import torch

from selective_update.algorithms import memory
from selective_update.torch import ops

RNG = np.random.default_rng(7)


def test_gem_project_leaves_a_gradient_alone_when_no_memory_loss_rises():
    M = RNG.normal(size=(3, 8))
    g = M.sum(axis=0)  # positive dot product with every row here
    assert (M @ g >= 0).all()
    assert memory.gem_project(g, M, 0.5) is g


def test_gem_project_solves_the_dual_qp_as_project2cone2():
    M, g = RNG.normal(size=(4, 12)), RNG.normal(size=12)
    g = g - 2 * M[0] * (M[0] @ g) / (M[0] @ M[0]) - M[0]  # <g, M[0]> < 0 for sure
    assert (M @ g < 0).any()
    margin, eps = 0.5, memory.GEM_EPS
    projected = memory.gem_project(g, M, margin)
    v = (projected - g) @ np.linalg.pinv(M)  # the dual variables: projected = g + v M
    assert np.allclose(v @ M + g, projected)
    assert (v >= margin - 1e-9).all()  # the dual's constraint (GEM's margin)
    # KKT of min 1/2 v'(MM' + eps I)v + (Mg)'v s.t. v >= margin: the gradient is >= 0 and
    # zero where the bound is not active
    grad = (M @ M.T + eps * np.eye(4)) @ v + M @ g
    assert (grad >= -1e-8).all() and np.allclose(grad[v > margin + 1e-9], 0, atol=1e-8)
    # so <projected, g_k> = grad_k - eps v_k >= -eps v_k: no memory's loss rises to first
    # order but for the ridge's share
    assert (M @ projected >= -eps * v - 1e-8).all()


def test_by_task_splits_a_memory_in_task_order():
    x = torch.arange(12.0, dtype=torch.float64).reshape(6, 2)
    y = torch.eye(6, dtype=torch.float64)
    tasks = np.array([2, 0, 2, 1, 0, 1])
    split = memory.by_task(ops, x, y, tasks)
    parts = split.parts
    assert [p[0][:, 0].tolist() for p in parts] == [[2.0, 8.0], [6.0, 10.0], [0.0, 4.0]]
    assert all(torch.equal(py, y[torch.as_tensor(memory.groups(tasks)[k])])
               for k, (_, py) in enumerate(parts))
    xs, ys = split.stacked  # as many examples a task: stacked (tasks, 2, ...)
    assert xs.shape == (3, 2, 2) and torch.equal(xs[1], parts[1][0]) and ys.shape == (3, 2, 6)
    assert memory.by_task(ops, x[:5], y[:5], tasks[:5]).stacked is None


def test_flatten_and_unflatten_invert_each_other():
    parts = [torch.randn(3, 4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)]
    back = memory.unflatten(ops, memory.flatten(ops, parts), parts)
    assert all(torch.equal(a, b) for a, b in zip(parts, back))


def test_fisher_start_adds_the_squared_gradient_anchored_at_the_start():
    params = {"W1": RNG.normal(size=(3, 2)), "b1": RNG.normal(size=2)}
    g = {k: RNG.normal(size=v.shape) for k, v in params.items()}
    first = memory.fisher_start(g, params)
    assert all(np.allclose(first["fisher"][k], g[k] ** 2) for k in params)
    assert all(np.allclose(first["anchored"][k], g[k] ** 2 * params[k]) for k in params)
    later = {k: v + 1.0 for k, v in params.items()}
    second = memory.fisher_start(g, later, first)
    assert all(np.allclose(second["fisher"][k], 2 * g[k] ** 2) for k in params)
    assert all(np.allclose(second["anchored"][k], g[k] ** 2 * (params[k] + later[k]))
               for k in params)
    again = memory.fisher_start(None, params, first)  # no memory: the carried terms as they were
    assert all(np.array_equal(again[n][k], first[n][k]) for n in first for k in params)


def test_ewc_penalty_has_gem_codes_gradient():
    """strength * sum_t F_t (p - a_t)^2 (GEM's model/ewc.py) has gradient 2 strength (A p - C)."""
    shapes = [(3, 2), (2,)]
    Fs = [[RNG.random(s) for s in shapes] for _ in range(2)]
    anchors = [[RNG.normal(size=s) for s in shapes] for _ in range(2)]
    A = [sum(F[i] for F in Fs) for i in range(2)]
    C = [sum(F[i] * a[i] for F, a in zip(Fs, anchors)) for i in range(2)]
    p = [torch.tensor(RNG.normal(size=s), requires_grad=True) for s in shapes]
    t = [torch.as_tensor(a) for a in A], [torch.as_tensor(c) for c in C]
    ours = memory.ewc_penalty(ops, [p[0]], [p[1]], [tuple(t[0])], [tuple(t[1])], 1000.0)
    theirs = sum(1000.0 * (torch.as_tensor(F[i]) * (p[i] - torch.as_tensor(a[i])) ** 2).sum()
                 for F, a in zip(Fs, anchors) for i in range(2))
    g_ours = torch.autograd.grad(ours, p)
    g_theirs = torch.autograd.grad(theirs, p)
    assert all(torch.allclose(a, b) for a, b in zip(g_ours, g_theirs))
    constant = sum(1000.0 * (F[i] * a[i] ** 2).sum() for F, a in zip(Fs, anchors)
                   for i in range(2))
    assert float(theirs) == pytest.approx(float(ours) + constant)


@pytest.mark.parametrize("kind, activation", [("cross_entropy", "relu"), ("mse", "sigmoid")])
def test_task_gradients_are_each_tasks_autograd_gradient(kind, activation):
    from selective_update.algorithms import nullspace, strategy_step

    sizes = (5, 7, 6, 3)
    Ws = [torch.tensor(RNG.normal(size=(a, b)), requires_grad=True)
          for a, b in zip(sizes[:-1], sizes[1:])]
    bs = [torch.tensor(RNG.normal(size=b), requires_grad=True) for b in sizes[1:]]
    xs = torch.as_tensor(RNG.normal(size=(4, 6, sizes[0])))
    ys = torch.as_tensor(np.eye(3)[RNG.integers(0, 3, (4, 6))])
    rows = memory.task_gradients(ops, Ws, bs, xs, ys, kind, activation)
    variables = [v for pair in zip(Ws, bs) for v in pair]
    for k in range(4):
        _, out = nullspace.forward(ops, Ws, bs, xs[k], activation)
        expected = torch.autograd.grad(strategy_step.full_loss(ops, out, ys[k], kind), variables)
        assert torch.allclose(rows[k], memory.flatten(ops, expected), atol=1e-13)


def test_gem_steps_the_same_with_one_backward_pass_per_task(monkeypatch):
    """The stacked memory gradients against GEM's own way, one autodiff pass per task."""
    import selective_update as su

    rng = np.random.default_rng(0)
    x, y = rng.random((20, 4)), np.eye(3)[rng.integers(0, 3, 20)]
    kw = dict(params=su.init_params((4, 6, 3), init="xavier_uniform"), data=su.Data(x, y, x, y),
              keep=(0, 1, 2), train=(0, 1, 2), lr=0.5, steps=3, activation="relu",
              loss="cross_entropy", reference=su.Memory(x[:8], y[:8], np.repeat([0, 1], 4)))
    fast = su.run("gem", "torch", **kw)
    split = memory.by_task
    monkeypatch.setattr(memory, "by_task", lambda *a: split(*a)._replace(stacked=None))
    slow = su.run("gem", "torch", **kw)
    assert not np.array_equal(fast.outputs[0], fast.outputs[-1])
    np.testing.assert_allclose(fast.outputs, slow.outputs, atol=1e-12)
