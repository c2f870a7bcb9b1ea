#!/usr/bin/env bash
# Held-out check (opt-in, not collected by pytest): transformers' own common model tests (ModelTesterMixin) on BERT,
# RoBERTa and ViT, once on the stock models and once with every constructed model patched "full", then the tests
# whose outcome differs. transformers' test suite is not in its wheel: this takes it from the sdist (PyPI, no hub).
#   usage: tests/held_out/run_transformers_common.sh [pytest -k expression, e.g. Bert]   (about 15 min per model run)
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
work=${HFX_HELD_OUT_DIR:-/tmp/hfx_transformers_common}
version=$(python -c "import transformers; print(transformers.__version__)")
mkdir -p "$work" && cd "$work"
if [ ! -d "transformers-$version/tests" ]; then
  pip download "transformers==$version" --no-binary :all: --no-deps -d . -q
  tar xzf "transformers-$version.tar.gz" "transformers-$version/tests"
fi
pip install -q --target "$work/pylib" parameterized
cd "transformers-$version"
# the sdist's test_modeling_common imports two mixins whose files are not shipped; their tests are not run here
# (export has its own tests: tests/test_export.py)
mkdir -p tests/exporters tests/generation tests/hfx
touch tests/__init__.py tests/exporters/__init__.py tests/generation/__init__.py tests/hfx/__init__.py
echo "class ExportTesterMixin: pass" > tests/exporters/test_export.py
echo "class GenerationTesterMixin: pass" > tests/generation/test_utils.py
cp "$repo/tests/held_out/patched_common_models.py" tests/hfx/test_patched_common.py
for patch in 0 1; do
  HF_HUB_OFFLINE=1 HFX_PATCH=$patch PYTHONPATH="$work/pylib:.:$repo" python -m pytest -q -p no:cacheprovider \
    tests/hfx/test_patched_common.py -k "${1:-Test}" -rA > "$work/result_$patch.txt" 2>&1 || true
  grep -E "^(PASSED|FAILED|ERROR|SKIPPED)" "$work/result_$patch.txt" | sed 's/ - .*//' | sort > "$work/outcomes_$patch.txt"
done
echo "outcomes that differ (< stock, > patched):"
diff "$work/outcomes_0.txt" "$work/outcomes_1.txt" || true
