"""The strategies: what each one trains, with which loss and step, and what it promises."""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

from ..validation import check_choice, check_int, check_real
from .options import REFERENCE_USERS, check_options

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")
FRAMEWORKS = ("tf1", "torch")
DTYPES = ("float32", "float64")
# exact: every input; batch_exact / reference_exact: within BATCH_EXACT_TOL on the batch / the
# reference inputs; first_order / reference_first_order: the leak there is second order; none.
# minibatch_exact / minibatch_first_order (run(batch_size=...) without a reference): each step
# holds the rows it trained on, across that step only; earlier mini-batches may move.
PROMISES = ("exact", "batch_exact", "first_order", "none", "reference_exact",
            "reference_first_order", "minibatch_exact", "minibatch_first_order")
DEVICES = ("cpu", "cuda")


TRAINS = ("all", "last_layer", "train_heads", "grown")
LOSSES = ("full", "masked", "output_gradient", "distill", "compensated_gradient")
AFTER = ("none", "project", "project_corrected", "subspace")


@dataclass(frozen=True)
class Strategy:
    """Describe one way of training the `train` outputs while leaving `keep` alone.

    A strategy is this description only: both frameworks' runners interpret it, and the math of
    its loss and of what follows the step is written once in algorithms/ (algorithms.steps).
      trains: which variables the optimizer is given (its var_list)
        all | last_layer | train_heads (one variable per output unit, the trained ones) |
        grown (the new units and the trained heads of a grown network)
      loss: what is differentiated
        full | masked (mask * (out - y)) | output_gradient (back-propagate G) |
        distill (masked + distill_weight * change of the kept outputs on the protected inputs) |
        compensated_gradient (back-propagate G' = G - alpha on the kept outputs, G the masked
        loss's gradient with respect to the outputs: algorithms.compensated)
      after: what happens to the step the optimizer took
        none | project (onto the kept outputs' null space) | project_corrected (then
        Gauss-Newton back to the kept outputs before the step) | subspace (off each layer's
        protected input directions, layer_subspace)
    """

    name: str
    summary: str
    source: str
    trains: str
    loss: str
    after: str = "none"

    def __post_init__(self):
        for field_name, allowed in (("trains", TRAINS), ("loss", LOSSES), ("after", AFTER)):
            if getattr(self, field_name) not in allowed:
                raise ValueError(f"{field_name}: got {getattr(self, field_name)!r}; allowed: "
                                 f"{', '.join(allowed)}")

    @property
    def projected(self) -> bool:
        """The step is projected onto the kept outputs' null space (null_space*)."""
        return self.after in ("project", "project_corrected")

    @property
    def corrected(self) -> bool:
        """Gauss-Newton corrections follow the projection."""
        return self.after == "project_corrected"

    @property
    def subspace(self) -> bool:
        """The step is projected off each layer's protected input directions."""
        return self.after == "subspace"

    @property
    def solves(self) -> bool:
        """Each step solves a Gram system over the protected inputs (its cost grows with them):
        the null-space projections and compensated_gradient."""
        return self.projected or self.loss == "compensated_gradient"

    @property
    def starts(self) -> bool:
        """The strategy takes something from its start (layer bases, kept outputs to distill)."""
        return self.subspace or self.loss == "distill"


STRATEGIES = MappingProxyType({s.name: s for s in (
    Strategy("all_params", "Full loss on every output; the optimizer updates every variable.",
             "seed: train_op_all", trains="all", loss="full"),
    Strategy("last_layer", "Full loss; only the last layer (W2, b2) is in var_list.",
             "seed, old answer: train_op12", trains="last_layer", loss="full"),
    Strategy("output_gradient",
             "Back-propagate G (0 on kept outputs, -1/n per sample on trained outputs) to every "
             "variable: tf.gradients(out, vars, grad_ys=G) / out.backward(G).",
             "the question itself", trains="all", loss="output_gradient"),
    Strategy("masked_loss", "Loss on mask * out (mask is 1 on trained outputs); every variable.",
             "seed's mask without var_list", trains="all", loss="masked"),
    Strategy("masked_last_layer",
             "Loss on mask * out; only the last layer (W2, b2) is in var_list.",
             "seed: train_op2", trains="last_layer", loss="masked"),
    Strategy("split_head",
             "One variable per output unit, joined with tf.stack / torch.stack; only the trained "
             "heads are given to the optimizer.",
             "seed: first approach (var_list=[W_h_to_out2, b_h_to_out2])", trains="train_heads",
             loss="masked"),
    Strategy("null_space",
             "Masked loss, every parameter; the optimizer's proposed step is projected onto the "
             "null space of the kept outputs' Jacobian over the batch (layer-wise Gram form).",
             "beyond the answer (OGD/GPM family)", trains="all", loss="masked", after="project"),
    Strategy("compensated_gradient",
             "Back-propagate G' = [-alpha, G_2] instead of G = [0, G_2] (G: the masked loss's "
             "gradient with respect to the outputs): alpha, one number per sample and kept "
             "output, makes the kept outputs' first-order change on the batch zero (K_kk alpha = "
             "K_kt G_2, layer-wise Gram form). tf.gradients(out, vars, grad_ys=G') / "
             "torch.autograd.grad(out, params, grad_outputs=G'): one backward pass.",
             "the question in its own terms: change G", trains="all",
             loss="compensated_gradient"),
    Strategy("null_space_corrected",
             "null_space, then Gauss-Newton steps (minimum-norm, layer-wise Gram form) until the "
             "kept outputs on the batch are back to their values before the step.",
             "beyond the answer", trains="all", loss="masked", after="project_corrected"),
    Strategy("layer_subspace",
             "Masked loss, every parameter; the optimizer's step of every hidden layer and of the "
             "kept output columns is projected off the top singular directions (energy) of that "
             "layer's inputs (with a 1 for the bias) on the protected inputs, taken once at start.",
             "GPM (Saha et al., ICLR 2021), Adam-NSCL (Wang et al., CVPR 2021): step, not gradient",
             trains="all", loss="masked", after="subspace"),
    Strategy("grow",
             "Add `grow` hidden units to each hidden layer (zero weights to the kept outputs and "
             "to the old units, never in the optimizer); train the new units and trained heads.",
             "Progressive Networks (Rusu et al., 2016): function-preserving growth",
             trains="grown", loss="masked"),
    Strategy("distill",
             "Masked loss + distill_weight * mean squared change of the kept outputs on the "
             "protected inputs since the start; every variable.",
             "Learning without Forgetting (Li & Hoiem, 2016)", trains="all", loss="distill"),
)})


def promise(strategy, optimizer, *, weight_decay=0.0, warm_start_steps=0, reference=None,
            energy=None, grow=None, distill_weight=None, batch_size=None) -> str:
    """Say what a strategy guarantees for the kept outputs under this optimizer set-up.

    reference: None, or the reference inputs (any array, or True): the protected inputs of
    null_space, null_space_corrected, compensated_gradient, layer_subspace and distill become the
    reference inputs.
    batch_size: None (every step on the whole batch) or run()'s mini-batch size. Without a
    reference, a batch promise then holds on each step's own mini-batch across that step
    (minibatch_exact, minibatch_first_order): the rows of earlier steps are free to move. The
    exact promises and the reference promises do not depend on it.

    | strategy                         | promise (where it holds)                            |
    |----------------------------------|-----------------------------------------------------|
    | split_head, grow                 | exact: every input, any optimizer, decay, warm start |
    | masked_last_layer                | exact with sgd, or fresh state and no decay; else none |
    | null_space                       | first_order on the batch; reference_first_order     |
    |                                  | (minibatch_first_order with batch_size)             |
    | compensated_gradient             | first_order with sgd, or momentum from fresh state, |
    |                                  | and no decay (the step is a sum of compensated      |
    |                                  | gradients); reference_first_order; with batch_size  |
    |                                  | and no reference, sgd only: minibatch_first_order;  |
    |                                  | else none                                           |
    | null_space_corrected             | batch_exact; reference_exact with a reference       |
    | layer_subspace, energy=1.0       | (minibatch_exact with batch_size)                   |
    | layer_subspace, energy<1; distill; all_params, last_layer, output_gradient, masked_loss |
    |                                  | none                                                |
    """
    check_choice("strategy", strategy, STRATEGIES)
    check_choice("optimizer", optimizer, OPTIMIZERS)
    check_real("weight_decay", weight_decay, 0.0)
    check_int("warm_start_steps", warm_start_steps, 0)
    if batch_size is not None:
        check_int("batch_size", batch_size, 1)
    options = check_options(strategy, energy=energy, grow=grow, distill_weight=distill_weight)
    on_reference = (reference is not None and reference is not False
                    and strategy in REFERENCE_USERS)
    where = "reference_" if on_reference else "minibatch_" if batch_size is not None else ""
    if strategy in ("split_head", "grow"):
        return "exact"
    if strategy == "null_space":
        return f"{where}first_order"
    if strategy == "compensated_gradient":
        # Only sgd's step, or fresh momentum's (a sum of earlier compensated gradients), is made of
        # compensated gradients: each has no first-order effect where it was taken, so the leak
        # is second order. Decay adds lr * wd * theta and Adam rescales each coordinate: none.
        # On mini-batches, earlier steps' gradients were compensated on other rows: sgd only.
        momentum_ok = where != "minibatch_" and warm_start_steps == 0
        sums_gradients = optimizer == "sgd" or (optimizer == "momentum" and momentum_ok)
        return f"{where}first_order" if weight_decay == 0 and sums_gradients else "none"
    if strategy == "null_space_corrected" or (strategy == "layer_subspace"
                                              and options["energy"] == 1.0):
        return f"{where}exact" if where else "batch_exact"
    if strategy == "masked_last_layer":
        # A zero gradient freezes a weight only when no decay and no leftover state move it.
        stateless = optimizer == "sgd" or warm_start_steps == 0
        return "exact" if weight_decay == 0 and stateless else "none"
    return "none"
