#!/bin/sh
# The Makefile's interpreter check, run before anything is built. Prints nothing when the Python
# that builds .venv ($1, the Makefile's PYTHON), or the one that built an existing .venv, is one
# that requires-python in pyproject.toml admits; otherwise prints one line saying what was found
# and what is supported. requires-python (">=3.A,<3.B") is the only place the range is written.
python=${1:-python3}
range=$(sed -n 's/^requires-python *= *">= *3\.\([0-9][0-9]*\) *, *< *3\.\([0-9][0-9]*\) *".*/\1 \2/p' pyproject.toml)
set -- $range
if [ $# -ne 2 ]; then
    echo "cannot read requires-python = \">=3.A,<3.B\" from pyproject.toml"
    exit 1
fi
lo=$1 hi=$2 supported= i=$1
while [ "$i" -lt "$hi" ]; do
    supported="${supported:+$supported, }3.$i"
    i=$((i + 1))
done
if [ -e .venv/bin/python ]; then
    where="in .venv" fix="remove .venv, then run again with PYTHON=python3.X"
    version=$(.venv/bin/python --version 2>&1)
else
    where="at $python" fix="run again with PYTHON=python3.X"
    version=$($python --version 2>&1)
fi
version=$(printf '%s\n' "$version" | sed -n 's/^Python \(3\.[0-9][0-9]*[0-9a-z.+]*\).*/\1/p' | head -n 1)
minor=$(printf '%s\n' "$version" | sed 's/^3\.\([0-9]*\).*/\1/')
if [ -z "$version" ]; then
    echo "found no Python 3 $where; supported: $supported ($fix)"
    exit 1
fi
if [ "$minor" -lt "$lo" ] || [ "$minor" -ge "$hi" ]; then
    echo "found Python $version $where; supported: $supported ($fix)"
    exit 1
fi
