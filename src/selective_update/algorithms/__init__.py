"""The math, written once over the `ops` contract (algorithms.ops.Ops) that tf1/ and torch/ fill.

    ops            the contract: the tensor operations each framework provides
    strategy_step  a strategy's step written once: its variables, loss, start and aftermath
    solve          the one solver: pseudo-inverse, Cholesky (with refinement) and SVD solves
    nullspace      the batch null-space step in layer-wise Gram form (no Jacobian materialized)
    protected      null-space steps that protect chosen inputs (run(reference=...))
    compensated    compensated_gradient: G' = [-alpha, G2], first order on the protected inputs
    subspace       layer_subspace (GPM / Adam-NSCL) and distill (LwF)
    growth         grow: function-preserving new hidden units
"""
