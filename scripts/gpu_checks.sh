#!/usr/bin/env bash
# The GPU checks in one run (run from the repository root on a CUDA machine):
#   - the CUDA variants of the tests (every test parametrised by device, plus the host-synchronisation counter);
#   - scripts/benchmark.py on ViT-B/16 and ViT-L/14 shapes in bfloat16 and float16 autocast (float32 weights), then
#     in float32, float16 and bfloat16 (weights cast);
#   - with a clone of the authors' code (github.com/SuleBai/SC-CLIP) as second argument,
#     scripts/compare_with_authors.py in float32 and float16.
# Each step's log, JSON and markdown go to OUT_DIR; the markdown tables are printed at the end. A failed step is
# reported and the others still run; the exit status is 1 if any failed.
#
#   bash scripts/gpu_checks.sh OUT_DIR [AUTHORS_REPO]
set -uo pipefail
out=${1:?usage: bash scripts/gpu_checks.sh OUT_DIR [AUTHORS_REPO]}
authors=${2:-}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'" || exit 1
failed=0

step() {
    local name=$1
    shift
    echo "== $name: $*"
    if ! "$@" >"$out/$name.log" 2>&1; then
        failed=1
        echo "FAILED: $name (see $out/$name.log)"
        tail -n 30 "$out/$name.log"
    fi
}

step tests python3 -m pytest -q -k cuda tests/test_modeling.py tests/test_pipeline.py tests/test_benchmark_script.py
# Half precision twice: float32 weights under autocast, and weights cast to it. The autocast runs go first, so that a
# run cut short by a time limit still has the half precision that stays closest to float32.
for setting in "bfloat16 --autocast" "float16 --autocast" float32 float16 bfloat16; do
    read -r dtype autocast <<<"$setting"
    name="benchmark-$dtype${autocast:+-autocast}"
    step "$name" python3 scripts/benchmark.py --device cuda --dtype "$dtype" $autocast --models vit-b16 vit-l14 \
        --sizes 336x448 336x500 560x1120 --warmup 3 --repeats 10 --output "$out/$name.json" --markdown "$out/$name.md"
done
if [ -n "$authors" ]; then
    # float32 without TF32 convolutions: the fidelity check; float16: what the authors' code runs on CUDA.
    for setting in "float32 --no-tf32" "float16"; do
        read -r dtype tf32 <<<"$setting"
        step "authors-$dtype" python3 scripts/compare_with_authors.py --authors-repo "$authors" --device cuda \
            --dtype "$dtype" $tf32 --models vit-b16 vit-l14 --sizes 336x448 336x500 --warmup 2 --repeats 10 \
            --output "$out/authors-$dtype.json"
    done
fi

tail -n 2 "$out/tests.log"
for report in "$out"/benchmark-*.md; do [ -f "$report" ] && cat "$report"; done
for log in "$out"/authors-*.log; do [ -f "$log" ] && tail -n 6 "$log"; done
exit "$failed"
