#!/usr/bin/env bash
# Set up the project's virtual environment at .venv (created if missing; the install step runs again
# only when pyproject.toml changed) and run one of:
#   bash run.sh demo [hydra overrides]   train OadTR on the built-in data, evaluate, print test/mAP
#   bash run.sh test [pytest args]       the test suite (all of it, slow tests included, one worker per core)
#   bash run.sh <tool> [args]            any tools/<tool>.py, e.g. `bash run.sh eval predictions=p.pkl`
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

if [ ! -x .venv/bin/python ]; then
  py=""
  for cand in python3.11 python3 python; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
      py=$cand; break
    fi
  done
  [ -n "$py" ] || { echo "run.sh: needs Python >= 3.10 (3.11 recommended) on PATH" >&2; exit 1; }
  echo "run.sh: creating .venv with $($py --version)" >&2
  "$py" -m venv .venv
fi

stamp=.venv/.oad-install-stamp
want=$(cat pyproject.toml | .venv/bin/python -c 'import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! .venv/bin/python -c 'import oad' 2>/dev/null; then
  echo "run.sh: installing the project into .venv (first run: a few minutes)" >&2
  # torch 2.14.1's Linux wheel is its CUDA build: about 6.5 GB in .venv. Say so up front rather than leave
  # pip to stop half-way with "No space left on device".
  .venv/bin/python -c 'import importlib.util, shutil, sys
free = shutil.disk_usage(".venv").free // 2**30
if importlib.util.find_spec("torch") is None and free < 7:
    print(f"run.sh: warning: only {free} GB free for .venv; installing torch needs about 7 GB", file=sys.stderr)'
  .venv/bin/python -m pip install --disable-pip-version-check -q -e '.[test]'
  echo "$want" > "$stamp"
fi

cmd=${1:-demo}
shift || true
case "$cmd" in
  demo) exec .venv/bin/python tools/train.py "$@" ;;
  test)
    # tests/test_report.py drives headless Chromium: install it when missing (root with apt-get; never fatal,
    # the browser tests skip without it)
    if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "run.sh: installing chromium (apt-get) for the browser tests" >&2
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 \
        || echo "run.sh: could not install chromium; the browser tests will be skipped" >&2
    fi
    # one pytest-xdist worker per core, each test file on one worker (its module fixtures built once), the
    # files with slow tests first (tests/conftest.py); `bash run.sh test -n 0` runs them in this process
    exec .venv/bin/python -m pytest -q -n auto --dist loadfile --no-loadscope-reorder "$@" ;;
  *)
    [ -f "tools/$cmd.py" ] || { echo "run.sh: unknown command '$cmd' (demo, test, or a tools/*.py name)" >&2; exit 2; }
    exec .venv/bin/python "tools/$cmd.py" "$@" ;;
esac
