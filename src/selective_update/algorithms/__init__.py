"""The math, written once over the `ops` contract (algorithms.ops.Ops) that tf1/ and torch/ fill.

    ops        the contract: the tensor operations each framework provides
    nullspace  the batch null-space step in layer-wise Gram form (no Jacobian materialized)
    protected  null-space steps that protect chosen inputs (run(reference=...))
    subspace   layer_subspace (GPM / Adam-NSCL) and distill (LwF)
    growth     grow: function-preserving new hidden units
"""
