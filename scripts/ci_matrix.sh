#!/usr/bin/env bash
# The tested matrix's ends, each in a fresh virtual environment (docs/compatibility.md).
#
#   bash scripts/ci_matrix.sh [--core] [END ...] [-- PYTEST_ARGUMENTS ...]     END: oldest, newest (default: both)
#
# Without --core: the whole suite on each end (opt-in: before a release, or on a schedule). With --core: the suite's
# fast core (`pytest -m core`: patching, each family, each variant against its reference, bad input, compat), as
# .ci/run does on every push. Each end prints how long its install and its tests took, wall and CPU time.
# Every end runs, whatever an earlier one gave. Exit status: 0; else pytest's own status from the first end where a test
# failed; else 90 when an install failed.
#
# The venvs go to $HF_FLEXATTN_VENVS (default: ${TMPDIR:-/tmp}/hf_flexattn-venvs), made afresh and removed after
# (HF_FLEXATTN_KEEP_VENVS=1 keeps them). torch comes from the registry pip is configured with: from PyPI, a CUDA
# build (with about 3 GB of NVIDIA libraries on its first download; pip's cache keeps them for the next run).
set -euo pipefail
cd "$(dirname "$0")/.."

# The ends: the oldest declared (pyproject.toml's lower bounds, hf_flexattn/compat.py's MINIMUM_VERSIONS) and the
# newest releases tested. Keep them in step with the README's matrix.
OLDEST=(torch==2.11.0 transformers==5.21.0 sentence-transformers==6.0.0)
NEWEST=(torch==2.15.0 transformers==5.25.0 sentence-transformers==6.3.0)

selection=()
ends=()
while [ $# -gt 0 ]; do
    case "$1" in
        --core) selection+=(-m core) ;;
        oldest | newest) ends+=("$1") ;;
        --) shift; selection+=("$@"); break ;;
        *) echo "ci_matrix.sh: unknown argument '$1' (expected --core, oldest, newest, -- pytest arguments)" >&2; exit 2 ;;
    esac
    shift
done
[ ${#ends[@]} -gt 0 ] || ends=(oldest newest)

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
venvs="${HF_FLEXATTN_VENVS:-${TMPDIR:-/tmp}/hf_flexattn-venvs}"
mkdir -p "$venvs"
summary=()
failed=0  # pytest's status at the first end with a failing test
install_failed=0

# The CPU seconds (user + system) that this script's finished commands have used so far. On a busy machine the wall
# time says little; the CPU time does not grow with the load, and a quiet 2-core machine needs between half of it
# (both cores busy) and all of it (one), plus the download. Sets $cpu (``times`` must run in this shell, not a subshell).
read_cpu_seconds() {
    times >"$venvs/.times"
    cpu=$(awk 'NR == 2 { split($1, u, /[ms]/); split($2, s, /[ms]/); printf "%d", u[1] * 60 + u[2] + s[1] * 60 + s[2] }' \
        "$venvs/.times")
}

for end in "${ends[@]}"; do
    if [ "$end" = oldest ]; then pins=("${OLDEST[@]}"); else pins=("${NEWEST[@]}"); fi
    venv="$venvs/$end"
    log="$venvs/$end-install.log"
    rm -rf "$venv"
    echo "== $end: ${pins[*]} (${selection[*]:-whole suite})"
    started=$SECONDS
    read_cpu_seconds
    cpu_started=$cpu
    python3 -m venv "$venv"
    # A machine whose pip configuration caps torch (this project's CI machines cap it below the newest release) would
    # refuse the newest end: the cap is lifted for this install alone (PIP_CONSTRAINT names the constraint files)
    if ! PIP_CONSTRAINT=/dev/null "$venv/bin/python" -m pip install "${pins[@]}" -e ".[dev]" >"$log" 2>&1; then
        tail -n 30 "$log"
        summary+=("$end: the install failed (log: $log)")
        echo "== ${summary[-1]}"
        install_failed=1  # exit 90 below, the install's own code: .ci/run tells it from a failing test
        continue
    fi
    installed=$((SECONDS - started))
    read_cpu_seconds
    installed_cpu=$((cpu - cpu_started))
    "$venv/bin/python" -c "import torch, transformers, sentence_transformers as st; print(f'torch {torch.__version__}, transformers {transformers.__version__}, sentence-transformers {st.__version__}')"
    started=$SECONDS
    read_cpu_seconds
    cpu_started=$cpu
    status=0
    "$venv/bin/python" -m pytest -q -p no:cacheprovider "${selection[@]}" || status=$?
    tested=$((SECONDS - started))
    read_cpu_seconds
    tested_cpu=$((cpu - cpu_started))
    load=$(cut -d" " -f1-3 /proc/loadavg)
    summary+=("$end: install ${installed}s (CPU ${installed_cpu}s), tests ${tested}s (CPU ${tested_cpu}s), pytest exit $status, load $load")
    echo "== ${summary[-1]}"
    [ "${HF_FLEXATTN_KEEP_VENVS:-0}" = 1 ] || rm -rf "$venv"
    [ "$status" = 0 ] || [ "$failed" != 0 ] || failed=$status
done
printf '== %s\n' "${summary[@]}"
[ "$failed" = 0 ] || exit "$failed"
[ "$install_failed" = 0 ] || exit 90
