#!/usr/bin/env bash
# Build benchmarks/.venv-pyncette11: Pyncette 1.1.0 from PyPI, used only by `--compare`.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-pyncette11"
python="${PYTHON:-python3.11}"
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --upgrade pip
# Pyncette 1.1.0's extras: redis, postgres, mysql, dynamodb, prometheus ("all" pulls them in).
"$venv/bin/pip" install --quiet "pyncette[all]==1.1.0"
"$venv/bin/python" -c "import importlib.metadata as m; print('pyncette', m.version('pyncette'))"
