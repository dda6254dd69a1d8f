#!/usr/bin/env bash
# Run Celery's own integration suite (t/integration of the installed Celery version) with
# GatedTask as every task's base, against a private redis-server (broker and backend).
#
#   scripts/celery_integration.sh [pytest args…]      e.g. t/integration/test_tasks.py
#
# Environment:
#   CASCADE_SUITE_MODE   task_cls (default) | gate_all | off (plain Celery: the baseline)
#   CASCADE_SUITE_LIMIT  store a `global` concurrency limit of N before the worker starts
#   CASCADE_SUITE_TIMEOUT  per-test timeout in seconds (default 120)
#   CASCADE_SUITE_DIR    work directory to reuse (sdist + venv); default: a new temp dir
# Without pytest args it runs the whole t/integration directory.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="${CASCADE_SUITE_DIR:-$(mktemp -d -t cascade-celery-suite.XXXXXX)}"
mkdir -p "$work"
python="${PYTHON:-python3}"

# One venv for the run: this package, the Celery version of the project's venv (if any),
# and the test plugins Celery's integration suite uses.
if [[ ! -x "$work/venv/bin/python" ]]; then
    "$python" -m venv "$work/venv"
fi
pin=""
if [[ -x "$repo/.venv/bin/python" ]]; then
    pin="==$("$repo/.venv/bin/python" -c 'import celery; print(celery.__version__)')"
fi
"$work/venv/bin/pip" install -q -e "$repo" "celery[redis]$pin" pytest pytest-celery \
    pytest-rerunfailures pytest-timeout pytest-subtests pytest-order python-dateutil \
    cryptography pydantic
version="$("$work/venv/bin/python" -c 'import celery; print(celery.__version__)')"

src="$work/celery-$version"
if [[ ! -d "$src/t/integration" ]]; then
    "$work/venv/bin/pip" download -q "celery==$version" --no-binary :all: --no-deps -d "$work"
    tar xzf "$work/celery-$version.tar.gz" -C "$work"
fi

# A private Redis on a free port (never the machine's shared 6379), gone on exit.
port="$("$work/venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
    --pidfile "$work/redis.pid" --logfile "$work/redis.log" --dir "$work"
trap 'kill "$(cat "$work/redis.pid")" 2>/dev/null || true' EXIT
for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done

export TEST_BROKER="redis://127.0.0.1:$port/0" TEST_BACKEND="redis://127.0.0.1:$port/1"
export REDIS_HOST=127.0.0.1 REDIS_PORT="$port"
export PYTHONPATH="$repo/scripts${PYTHONPATH:+:$PYTHONPATH}"
cd "$src"
[[ $# -gt 0 ]] || set -- t/integration
exec_status=0
"$work/venv/bin/python" -m pytest -p celery_gated_plugin -p no:cacheprovider \
    --timeout="${CASCADE_SUITE_TIMEOUT:-120}" --continue-on-collection-errors -rfEs "$@" || exec_status=$?
echo "cascade: work directory $work (CASCADE_SUITE_MODE=${CASCADE_SUITE_MODE:-task_cls})"
exit "$exec_status"
