"""GEM's ACC, BWT and FWT from R, as their metrics/metrics.py codes them and as the formulas."""
import numpy as np
import pytest

from selective_update.scenarios import continual_metrics as cm
from selective_update.scenarios import stats

# Row i = after task i; column j = task j's test set.
R = [[0.9, 0.2, 0.1],
     [0.7, 0.8, 0.3],
     [0.6, 0.5, 0.9]]
INITIAL = [0.1, 0.1, 0.2]


def test_a_hand_computed_matrix():
    m = cm.metrics(R, INITIAL)
    assert m["acc"] == pytest.approx((0.6 + 0.5 + 0.9) / 3)
    # R[2, j] - R[j, j]: -0.3, -0.3 and the last task's 0; the code divides by T = 3
    assert m["bwt"] == pytest.approx(-0.6 / 3)
    assert m["bwt_formula"] == pytest.approx(-0.6 / 2)
    # R[j-1, j] - initial[j] for j = 1, 2: 0.2 - 0.1 and 0.3 - 0.2
    assert m["fwt"] == pytest.approx(0.2 / 3)
    assert m["fwt_formula"] == pytest.approx(0.2 / 2)


def test_the_coded_bwt_is_the_mean_over_every_task_including_the_last():
    rng = np.random.default_rng(0)
    R20 = rng.random((20, 20))
    gem = np.mean(R20[-1] - np.diag(R20))  # metrics.py: (result[nt - 1] - acc).mean()
    assert cm.bwt(R20) == pytest.approx(gem)
    assert cm.bwt(R20) == pytest.approx(0.95 * cm.bwt(R20, "formula"))
    initial = rng.random(20)
    fwt = np.zeros(20)
    fwt[1:] = np.diag(R20, 1) - initial[1:]
    assert cm.fwt(R20, initial) == pytest.approx(fwt.mean())


def test_over_seeds_gives_student_t_intervals():
    runs = [(np.asarray(R) + d, INITIAL) for d in (0.0, 0.05, -0.02)]
    out = cm.over_seeds(runs)
    accs = [cm.acc(r) for r, _ in runs]
    assert out["acc"] == pytest.approx(stats.interval(accs))
    assert set(out) == set(cm.METRICS)
    one = cm.over_seeds(runs[:1])
    assert one["bwt"][0] == pytest.approx(-0.2) and np.isnan(one["bwt"][1])


@pytest.mark.parametrize("call, name", [
    (lambda: cm.acc([[0.5, 0.5]]), "R"),
    (lambda: cm.acc([[1.0]]), "R"),
    (lambda: cm.acc([[0.5, 1.2], [0.3, 0.4]]), "R"),
    (lambda: cm.bwt([[0.5, np.nan], [0.3, 0.4]]), "R"),
    (lambda: cm.bwt(R, form="paper"), "form"),
    (lambda: cm.fwt(R, [0.1, 0.2]), "initial"),
    (lambda: cm.fwt(R, [0.1, 0.2, -0.1]), "initial"),
    (lambda: cm.over_seeds([]), "runs"),
])
def test_bad_input_is_refused_in_one_line_naming_it(call, name):
    with pytest.raises(ValueError) as e:
        call()
    assert str(e.value).startswith(f"{name}: got ") and "\n" not in str(e.value)
