#!/usr/bin/env bash
# Make benchmarks/peers/.venv-peers with the peer simulators (never the project's venv):
#   bash benchmarks/peers/setup_peers.sh [python3]
# Pins: the versions measured in README.md. numpy < 2.4 because Brian2 2.9.0 fails to import
# with NumPy 2.4 (np.ndarray.ptp is gone). Brian2's cpp_standalone and cython targets need a
# C++ compiler (g++).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${1:-python3}"
"$python" -m venv "$here/.venv-peers"
"$here/.venv-peers/bin/pip" install -q --upgrade pip
"$here/.venv-peers/bin/pip" install -q "brian2==2.9.0" "brainpy==2.8.2" "jax==0.10.2" \
    "jaxlib==0.10.2" "numpy>=2.0,<2.4" "cython>=3"
"$here/.venv-peers/bin/python" -c "import brian2, brainpy, jax; print('peers venv ready:', \
'brian2', brian2.__version__, 'brainpy', brainpy.__version__, 'jax', jax.__version__)"
