"""notebooks/your_model.ipynb, run quick: the helpers on a practitioner's models."""
import json
import os
import sys
from pathlib import Path

import pytest

from selective_update.settings import ROOT

import processes


@pytest.mark.slow
def test_your_model_notebook_runs_quick(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    out = tmp_path / "your_model.ipynb"
    cmd = [sys.executable, "-m", "papermill", str(ROOT / "notebooks/your_model.ipynb"), str(out),
           "-k", "python3", "-p", "quick", "True", "-p", "reports_dir", str(tmp_path)]
    done = processes.run(cmd, 600, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    import pandas as pd

    rows = pd.read_csv(tmp_path / "your_model.csv").set_index(["model", "method"])
    assert rows.loc[("torch CNN", "split_head"), "held_out_drift"] == 0
    assert rows.loc[("Keras CNN", "split_head"), "held_out_drift"] == 0
    assert rows.loc[("torch CNN", "projector corrected"), "inputs_drift"] <= 1e-8
    assert rows.loc[("torch CNN", "naive"), "held_out_drift"] > 1e-3
    assert rows.loc[("torch CNN", "layer subspace 1.0"), "inputs_drift"] <= 1e-9
    assert rows.loc[("torch CNN", "layer subspace 0.97"), "inputs_drift"] > 1e-9
    bn = "torch CNN + BatchNorm"
    assert rows.loc[(bn, "split_head, BatchNorm in train mode"), "held_out_drift"] > 1e-3
    assert rows.loc[(bn, "split_head, bn.eval()"), "held_out_drift"] == 0
    assert rows.loc[("Keras CNN, softmax head", "split_head"), "held_out_drift"] > 1e-3
    text = Path(out).read_text()
    assert text.count("PromiseWarning: split_head") == 2  # BatchNorm, softmax: shown, once each
    assert "ratio to the plain step" in text
    assert "DT_DOUBLE" not in text and json.loads(text)["cells"]
