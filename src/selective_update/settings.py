"""One home for the study's settings: paths, grids, tolerances and optimizer constants.

Every other module reads these names; change a value here and the notebooks, the batch, the bench
and the tests follow.
"""
from __future__ import annotations

from pathlib import Path

# --- paths (the package is installed editable, so the repo is two folders up) -------------------
ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = ROOT / "data"
NOTEBOOKS_DIR = ROOT / "notebooks"
REPORTS_DIR = Path("reports")  # the single default of every --out (relative to where you run)

# --- optimizer constants shared by both frameworks (torch defaults; TF1 is set to match) --------
MOMENTUM = 0.9
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8

# --- tolerances ---------------------------------------------------------------------------------
# null_space_corrected takes Gauss-Newton steps until the kept outputs on the protected inputs are
# back within RESTORE_TOL of their values before the step, at most GAUSS_NEWTON_MAX_STEPS (the toy
# batch's Gram is ill-conditioned, so Adam-sized steps can need 7-9; SGD steps need 2-3).
GAUSS_NEWTON_MAX_STEPS = 12
RESTORE_TOL = {"float64": 1e-13, "float32": 1e-5}
# batch_exact holds when the kept outputs on the protected inputs stay within this of their start.
BATCH_EXACT_TOL = {"float64": 1e-10, "float32": 1e-4}
# first_order holds when one step's drift at lr is >= this times the drift at lr/2
# (a second-order leak falls 4x, a first-order one 2x).
FIRST_ORDER_RATIO = 2.8

# --- the study's grids --------------------------------------------------------------------------
# The default grid: what `make study` and a bare `papermill notebooks/strategy.ipynb` run;
# notebooks/strategy.ipynb's parameters cell holds the same values (a test checks it).
DEFAULT_GRID = dict(optimizers=["sgd", "momentum", "adam", "adamw"], weight_decays=[0.0, 0.01],
                    warm_start_steps=[0, 2], lr=0.1, steps=5, seeds=[0, 1])
# --quick: a much smaller grid that still touches both frameworks and both datasets.
QUICK_GRID = dict(optimizers=["sgd", "adam"], weight_decays=[0.0, 0.01], warm_start_steps=[0],
                  lr=0.1, steps=3, seeds=[0])
# One-step runs at lr * factor (first optimizer set-up, first seed): drift vs lr in the summary.
LR_FACTORS = (1.0, 0.5, 0.25, 0.125)

# --- datasets -----------------------------------------------------------------------------------
DIGITS_TRAIN = 1200  # rows of the shuffled 1797 digits used for training; the rest are held out
PRETRAIN_STEPS = 300  # full-batch momentum steps that fit the digits net first
PRETRAIN_LR = 0.5
# Hidden width when none is given: the seed's 4 for toy; 16 for digits, where 4 units reach only
# 64% held-out accuracy (16: 95%) and 1,210 parameters leave a null space for 9 x 32 constraints.
DEFAULT_HIDDEN = {"toy": 4, "digits": 16}
DEFAULT_N_SAMPLE = {"toy": 8, "digits": 32}

# The data files `make data` writes (data/<name>.csv): their header, rows and SHA-256 of their
# bytes (written deterministically, floats as %.17g). Each load checks them; the study checks the
# files it will read before any kernel starts, and names a damaged file with its fix.
DATA_FILES = {
    "toy": dict(columns=["split", "x0", "x1", "x2", "y0", "y1"], rows=264,
                sha256="87d462409b61fc6bbeba01f3277249c16705620ebfb20b3c059a2d44f62683ca"),
    "digits": dict(columns=["split", *(f"x{i}" for i in range(64)), "label"], rows=1797,
                   sha256="b50fb88c935a4f50fe094a1722b599b48f6345c607e5f8aa0db54d5d56c9a7ed"),
}

# --- the batch ----------------------------------------------------------------------------------
KERNEL = "python3"
CELL_TIMEOUT = 600.0  # seconds per cell, default
START_TIMEOUT = 60  # seconds for a kernel to start
JOBS = 2  # notebooks run in parallel by default
# --cluster ADDRESS: seconds to reach the Dask scheduler before the study is refused, and how many
# times a run whose worker died (Dask's KilledWorker) is submitted again before it is failed.
CLUSTER_CONNECT_TIMEOUT = 5
WORKER_RETRIES = 1
# Notebooks the batch runs once each besides the strategy grid (name -> notebook file); each
# takes the parameters `quick` (bool) and `reports_dir` (where it writes its CSV files) and is
# published as reports/<name>.html.
SCENARIO_NOTEBOOKS = {"rotations": "rotations.ipynb", "new_class": "new_class.ipynb",
                      "class_sequence": "class_sequence.ipynb", "your_model": "your_model.ipynb"}
SCENARIO_DATASETS = ("digits",)  # the data files every scenario notebook reads
# The study's kernels get PROGRESS_ENV=0: the long cells' progress bars stay off its pages.
PROGRESS_ENV = "SELECTIVE_UPDATE_PROGRESS"

# --- beyond the batch: grow's new units and the solvers' constants ------------------------------
# grow's new units: incoming weights drawn N(0, GROW_STDDEV) from GROW_SEED (outgoing weights
# start at 0, so the function is unchanged). The options' defaults are in the registry
# (core.strategies: ENERGY, GROW, DISTILL_WEIGHT).
GROW_STDDEV = 0.1
GROW_SEED = 0
# Reference-protected projections solve with a Cholesky factor of Gram + jitter * mean(diag) * I
# (an eigenvalue pseudo-inverse when the factor is not finite); the projection is applied this
# many times, each removing what the jitter left (a factor jitter / (eigenvalue + jitter)).
CHOLESKY_JITTER = 1e-12
PROJECTION_SWEEPS = 2
# compensated_gradient solves its Gram system by that Cholesky factor and refines the solution with
# it this many times (iterative refinement, O(m^2) each). Measured on the toy batch (cond 2e11,
# where the jitter is a quarter of the smallest eigenvalue): the leak |J_k g'| reaches rounding
# after 2 (0: 5e-9; 1: 1.5e-10; 2: 3e-12), but the step itself only after 4: 3 SGD steps end 8e-9
# from the exact projected steps (mpmath) after 2 refinements, 9e-10 after 4, as null_space's
# eigendecomposition (2e-9). Better-conditioned Grams (digits, cond 2e5) need 1.
COMPENSATION_REFINEMENTS = 4
# Reference Jacobians up to this many entries (kept outputs x reference inputs x parameters) are
# materialized and factored by SVD (no squared condition number); larger ones use Cholesky.
DENSE_JACOBIAN_MAX = 250_000
# A reference-protected Gauss-Newton correction reuses its factored Jacobian while each step
# shrinks the residual at least this much, and factors it afresh where one does not.
CHORD_RATE = 0.1

# --- the new-class scenario (scenarios.new_class, notebooks/new_class.ipynb) ---------------------
# Pretrain on digits 0-8 (output 9 stays at its init), then learn class 9 keeping outputs 0-8.
# The 1,200 training digits split into a fit part (pretraining, the mini-batches, the reference
# sets) and the last NEW_CLASS_N_VAL digits, a validation split for the sweep; final numbers are on
# the 597 held-out digits, which no choice sees.
NEW_CLASS = 9
NEW_CLASS_N_VAL = 240
# run(batch_size=NEW_CLASS_BATCH, batch_seed=seed): each step takes the next 32 fit digits of every
# class (960 // 32 = 30 steps an epoch), so class 9 is learned from every one of its fit digits.
NEW_CLASS_BATCH = 32
# A sweep point is admissible when validation accuracy on 0-8 falls by at most this.
NEW_CLASS_MAX_ACC_DROP = 0.02
# The sweep (torch, validation, sweep_seeds) and the final runs (both frameworks, held out, seeds).
# epochs are checkpoints of one run of max(epochs) epochs; references: "batch" (each step's
# mini-batch), a number of kept fit digits, or "all" of them; options: run()'s strategy options,
# swept for the strategies that take them (an option missing here runs at its default).
# (SGD is not swept: at lr 1 and 3 it learned almost no 9 within 3 epochs or, at hidden 64,
# wrecked the accuracy on 0-8, seeds 0 and 1, while this grid was designed.)
# bound: the ceiling's own points (joint training, as the literature trains it: every output on
# all the data, its own lr and enough epochs, chosen by validation accuracy over all classes,
# with no kept-accuracy rule).
NEW_CLASS_GRID = dict(
    hidden=[16, 64], seeds=[0, 1, 2, 3, 4], sweep_seeds=[0, 1], optimizers=["adam"],
    lrs={"adam": [0.01, 0.03, 0.1]}, epochs=[1, 2, 3], references=["batch", 64, 256, "all"],
    options={"energy": [0.9, 0.97, 0.99, 1.0], "distill_weight": [1.0, 10.0], "grow": [4, 16]},
    bound=dict(optimizers=["adam"], lrs={"adam": [0.003, 0.01, 0.03]}, epochs=[3, 10, 30]))
NEW_CLASS_QUICK_GRID = dict(
    hidden=[16], seeds=[0, 1], sweep_seeds=[0], optimizers=["adam"], lrs={"adam": [0.03]},
    epochs=[1, 2], references=["batch"],
    options={"energy": [0.97], "distill_weight": [10.0], "grow": [4]},
    bound=dict(optimizers=["adam"], lrs={"adam": [0.01]}, epochs=[3, 10]))
# What a projection costs: its work per step grows as min(m, P)^2 * max(m, P) (m = kept outputs x
# protected inputs, P parameters), times NEW_CLASS_CORRECTED_FACTOR with Gauss-Newton corrections
# (measured 1-2.5x with chord steps). Projections get NEW_CLASS_REDUCED_GRID in the sweep; none
# whose work per step exceeds NEW_CLASS_MAX_WORK is run (the notebook lists them with their work):
# at 90 steps x 5 seeds x 2 frameworks a step of ~3e9 (~30 ms here) costs most of a minute.
NEW_CLASS_MAX_WORK = 3e9
NEW_CLASS_CORRECTED_FACTOR = 2
NEW_CLASS_REDUCED_GRID = dict(optimizers=["adam"], lrs={"adam": [0.01, 0.03]})
# --- the class sequence (scenarios.class_sequence, notebooks/class_sequence.ipynb) --------------
# Pretrain on 0-4, then learn these classes one task at a time, each from the fit digits of every
# class seen so far in mini-batches of CLASS_SEQUENCE_BATCH. references: "batch", or N fit digits
# of every kept class (the set grows by N with each task); the cost rule is new_class's, at the
# last task (9 kept outputs). epochs: per task, a grid dimension (a task starts where the last
# one ended, so they are not checkpoints of one run).
CLASS_SEQUENCE = (5, 6, 7, 8, 9)
CLASS_SEQUENCE_BATCH = 32
CLASS_SEQUENCE_GRID = dict(
    hidden=[64], seeds=[0, 1, 2, 3, 4], sweep_seeds=[0], optimizers=["adam"],
    lrs={"adam": [0.03]}, epochs=[1, 2], references=["batch", 8],
    options={"energy": [0.97, 1.0], "distill_weight": [1.0, 10.0], "grow": [4, 16]},
    bound=dict(optimizers=["adam"], lrs={"adam": [0.01, 0.03]}, epochs=[2, 5, 10]))
CLASS_SEQUENCE_QUICK_GRID = dict(  # hidden 16: the quick study's longest run, made shorter
    hidden=[16], seeds=[0, 1], sweep_seeds=[0], optimizers=["adam"], lrs={"adam": [0.03]},
    epochs=[1], references=["batch"], options={"energy": [0.97], "distill_weight": [10.0],
                                               "grow": [4]},
    bound=dict(optimizers=["adam"], lrs={"adam": [0.03]}, epochs=[3]))
# Intervals over seeds: Student t at this level (scenarios.stats); the sequence's answer names the
# best ACC among strategies whose BWT interval lies above -CLASS_SEQUENCE_MAX_FORGETTING.
INTERVAL_LEVEL = 0.95
CLASS_SEQUENCE_MAX_FORGETTING = 0.02
# The bounds, labelled in every table: joint training (every output, every parameter, on all the
# data, with the grids' own `bound` points and chosen by accuracy over all classes) is the
# ceiling; fine-tuning (the masked loss on every parameter) the floor.
BOUND_SETTINGS = {"all_params": "joint", "masked_loss": "fine-tuning"}
# --- end of the new-class scenario ------------------------------------------------------------

# --- the helpers for your own model (selective_update.torch) -------------------------------------
# NullSpaceProjector: a projected random step keeping less than this share of its norm means the
# constraints span every direction the optimizer can take (TrivialNullSpaceWarning at attach()).
TRIVIAL_SHARE = 1e-3
# A float32 model's explicit Jacobian rows (convolutions, per-sample rows) enter J Jᵀ through a
# float32 product (twice as fast); the projection is kept when it leaves at most this share of
# J v (the step's first-order change of the kept outputs), else J Jᵀ is formed again in float64.
FAST_GRAM_RTOL = 1e-6
# That J Jᵀ is first factored in float32 too (half the time of float64's; at 4,608 constraints
# 0.5 s against 1.0 s) and the projection swept in float64 with it, at most FAST_SWEEPS times,
# until it holds to FAST_GRAM_RTOL; else the float64 factor of the same J Jᵀ, then the above.
FAST_SWEEPS = 4
# Forming J Jᵀ = R Rᵀ: row blocks (only the blocks on and below the diagonal are multiplied), and
# protected inputs per chunk of the per-sample vmap pass (bounds its memory).
GRAM_BLOCKS = 8
SAMPLE_CHUNK = 128

# --- GEM's MNIST Rotations (scenarios.rotations*, notebooks/rotations.ipynb) ----------------------
# The paper's rows run with its per-method settings (scenarios.rotations.PAPER_ROWS). The study's
# rows (each protects the kept outputs, every one of the ten, on a memory of the earlier tasks)
# and the i.i.d. bound's learning rate are chosen on the validation split (sweep_seeds, torch):
# the highest validation ACC among the points whose run took at most ROTATIONS_COST_LIMIT times
# the fine-tune run of the same seed, measured side by side (a point is stopped once it is over);
# ties go to the higher BWT, then the cheaper point. memories: examples kept per task.
ROTATIONS_COST_LIMIT = 5.0
ROTATIONS_GRID = dict(
    hidden=[100], seeds=[0, 1, 2, 3, 4], sweep_seeds=[0], frameworks=["torch", "tf1"],
    epochs=[1], iid_lrs=[0.01, 0.03, 0.1, 0.3],
    study=dict(null_space=dict(lrs=[0.01, 0.03], memories=[1, 2]),
               null_space_corrected=dict(lrs=[0.03], memories=[2]),
               compensated_gradient=dict(lrs=[0.01, 0.03], memories=[1, 2]),
               layer_subspace=dict(lrs=[0.1], memories=[10, 50],
                                   options={"energy": [0.97, 0.99]}),
               distill=dict(lrs=[0.03, 0.1], memories=[10, 50],
                            options={"distill_weight": [1.0]})))
# --quick: the same 20-task protocol, one seed, one point per row, GEM with 32 memories a task.
ROTATIONS_QUICK_GRID = dict(
    hidden=[100], seeds=[0], sweep_seeds=[0], frameworks=["torch", "tf1"], epochs=[1],
    iid_lrs=[0.1], gem_memories=32,
    study=dict(null_space=dict(lrs=[0.03], memories=[2]),
               layer_subspace=dict(lrs=[0.1], memories=[10], options={"energy": [0.99]}),
               distill=dict(lrs=[0.1], memories=[10], options={"distill_weight": [1.0]})))

# --- the batch's share of the scenarios ---------------------------------------------------------
# Scenarios the batch runs as one papermill run per value of one grid parameter (parameter, full
# grid, quick grid): per hidden width (hidden=[width], into runs/<name>-h<width>/), or per
# framework (frameworks=[name], into runs/<name>-<framework>/), which its workers share. The
# parts' CSV files are concatenated afterwards in that order, a line that an earlier part wrote
# already left out (a sweep every part runs alike): the files one run of all of them writes
# (study.results.combine_parts).
SCENARIO_PARTS = {"new_class": ("hidden", NEW_CLASS_GRID, NEW_CLASS_QUICK_GRID),
                  "class_sequence": ("hidden", CLASS_SEQUENCE_GRID, CLASS_SEQUENCE_QUICK_GRID),
                  "rotations": ("frameworks", ROTATIONS_GRID, ROTATIONS_QUICK_GRID)}
