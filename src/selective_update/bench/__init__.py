"""`python -m selective_update bench`: step times against a plain step, written to reports/.

    cli           options, the parts, an all-or-nothing write of bench.csv, figures and bench.html
    timing        synthetic nets, interleaved timing, the table and the width/batch sweeps
    beyond_batch  protected inputs, layer_subspace, grow, compensated_gradient on the digits net
    helpers       the helpers for your own model on a ~55k-parameter CNN (torch/bench_cases.py)
    study_floor   the study's grid in one plain process: the floor `make study` is compared with
    report        the bench page's tables; figures: its figures
"""
