"""The study's batch: notebooks run with papermill, rendered offline, results published atomically.

    cli              `python -m selective_update study`: plan, pool, publish
    cluster          `study --cluster`: the same runs as Dask tasks, their files sent back
    grid             what notebooks/strategy.ipynb runs: check_params, run_grid
    notebook_runner  one notebook on a reused kernel: execute, render, mark failures
    results          the study's CSV files: columns, per-run files, reading a study back
    render           offline HTML (templates/offline)
    report, figures  the tables and figures the notebooks show
"""
