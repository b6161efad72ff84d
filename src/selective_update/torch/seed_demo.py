"""The seed's demo in PyTorch: train_op2, train_op12, train_op_all on one SGD optimizer, then
train_op_compensated: G = [0, -1] per sample becomes G' = [-alpha, -1] and
torch.autograd.grad(out, params, grad_outputs=G') is applied (tf1/seed_demo.py's twin)."""
from __future__ import annotations

import torch

from .. import core
from ..algorithms import compensated, training
from . import ops
from .runner import NAME, Trainer


def seed_demo(params, data, *, lr=0.1, steps=1, keep=(0,), train=(1,)) -> core.SeedDemo:
    """Replay the seed's demo: train_op2, train_op12, train_op_all, one SGD optimizer; then
    train_op_compensated: G = [0, -1] per sample becomes G' = [-alpha, -1] and
    torch.autograd.grad(out, params, grad_outputs=G') is applied."""
    config = core.check_run("all_params", NAME, params=params, data=data, keep=keep,
                            train=train, optimizer="sgd", lr=lr, steps=steps)
    trainer = Trainer(config, [strategy for _, strategy in core.SEED_PHASES])
    batch = trainer.prepare(training.batch_for(config, None))

    def seen():
        hs, out = trainer.layer_inputs(data.x)
        return hs[1], out

    record = [seen()]
    for _, strategy in core.SEED_PHASES:
        for _ in range(config.steps):
            trainer.step(strategy, batch)
        record.append(seen())
    G = trainer.tensor(core.question_gradient(*data.y.shape, config.train))
    compensation = [_compensated_step(trainer, batch.x, G) for _ in range(config.steps)][0]
    record.append(seen())
    return core.make_seed_demo(config, record, *compensation)


def _compensated_step(trainer, x, G):
    """Take one optimizer step of every variable along G' (compensated G); return (alpha, G')."""
    net = trainer.net
    hs, out = trainer.forward(x)
    with torch.no_grad():
        G_prime, alpha = compensated.compensate(ops, net.Ws, hs, G, trainer.config.keep)
    grads = torch.autograd.grad(out, net.variables, grad_outputs=G_prime)
    trainer.apply(grads, net.variables)
    return alpha.numpy(), G_prime.numpy()
