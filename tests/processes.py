"""Run a command whose process may start others (pool workers, kernels, Dask nannies) without
letting it hang the test run.

subprocess.run(capture_output=True, timeout=...) kills only the child on timeout and then waits
for its pipes to close: a grandchild that inherited them (a kernel, a worker) keeps the test
waiting forever. Here the output goes to files, the command runs in its own session, and on
timeout the whole session is killed and the test fails naming the command and its last output.
"""
import os
import signal
import subprocess
import tempfile

import pytest


def _kill_session(pid):
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run(cmd, timeout, cwd=None, env=None) -> subprocess.CompletedProcess:
    """Run cmd to completion within timeout seconds; return its exit code, stdout and stderr."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=err, text=True, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_session(proc.pid)
            proc.wait()
            out.seek(0), err.seek(0)
            pytest.fail(f"{' '.join(map(str, cmd[:6]))} ... ran past {timeout} s and was killed "
                        f"with its process group; its last output:\n{out.read()[-2000:]}\n"
                        f"{err.read()[-3000:]}")
        finally:
            if proc.poll() is None:  # interrupted (the test's own timeout): leave nothing behind
                _kill_session(proc.pid)
                proc.wait()
        _kill_session(proc.pid)  # what it left running in its session (none, normally)
        out.seek(0), err.seek(0)
        return subprocess.CompletedProcess(cmd, proc.returncode, out.read(), err.read())
