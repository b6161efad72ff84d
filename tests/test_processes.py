"""The tests' own guard against a hung command (tests/processes.py): a command past its timeout
fails the test in about that time, even when a process it started still holds its output."""
import sys
import time

import pytest

import processes


def test_a_command_and_its_children_are_killed_at_the_timeout():
    # The child's child inherits stdout and outlives it: a pipe would never close.
    cmd = ["sh", "-c", "echo started; sleep 60 & sleep 60"]
    started = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match=r"ran past 2 s and was killed(.|\n)*started"):
        processes.run(cmd, 2)
    assert time.monotonic() - started < 20


def test_a_command_that_ends_gives_its_code_and_output():
    done = processes.run([sys.executable, "-c", "import sys; print('out'); "
                          "print('err', file=sys.stderr); sys.exit(3)"], 60)
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")
