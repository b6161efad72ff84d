"""The quick study the slow study tests share: what it runs, and how a test runs it again."""
import sys
from pathlib import Path

import processes

ROOT = Path(__file__).resolve().parents[2]
# A subset that still covers both datasets, both frameworks, an exact and a projected strategy,
# and every scenario notebook (the default --scenarios).
SUBSET = ["--quick", "--strategies", "split_head", "null_space_corrected"]


def run_study(out, *extra, timeout=600):
    """`python -m selective_update study` on SUBSET into out, in a fresh process."""
    cmd = [sys.executable, "-m", "selective_update", "study", *SUBSET, "--out", str(out), *extra]
    return processes.run(cmd, timeout, cwd=ROOT)
