#!/usr/bin/env bash
# One GPU session in one command: the prepared gpu-bench (SD 1.5 architecture: .gpu-bench/run_all.sh, a copy of
# ../shared/gpu-bench) and then bench/gpu_families.py (SDXL- and Flux.1-size pipelines), everything within
# TOTAL_BUDGET seconds and every result under $OUT.
#
# Prepare (once, in the checkout; .gpu-bench/ is ignored through .git/info/exclude):
#     mkdir -p .gpu-bench && cp -r ../shared/gpu-bench/. .gpu-bench/ && echo /.gpu-bench/ >> .git/info/exclude
# On the GPU machine (no network), from the checkout's root, with .gpu-bench carried along:
#     bash bench/gpu_session.sh                   # OUT defaults to $OUT of the device tool
# CPU dry run here (tiny sizes; this checkout's venv already has diffusers & co, so no wheel is installed):
#     SMALL=1 NO_WHEELS=1 PY=.venv/bin/python OUT=/tmp/gs-out SCRATCH=/tmp/gs-scratch TOTAL_BUDGET=900 \
#         GB_BUDGET=400 bash bench/gpu_session.sh
#
# $OUT receives six files:
#   sd15/summary.txt  sd15/results.json  sd15/log.txt         run_all.sh's table, step records, full log
#   families/summary.md  families/results.json  families/log.txt   gpu_families.py's tables, records, full log
# Everything else (wheels installed into $SITE, models, images, tracker homes, run_all's other files) stays in
# $SCRATCH (/tmp/gpu-session); the SD 1.5 model, images and homes are deleted before the families start (disk).
# Knobs: TOTAL_BUDGET (560), GB_BUDGET (330, run_all's BUDGET; its torch.compile step is skipped), GF_BUDGET
# (default: what is left of TOTAL_BUDGET after run_all, minus 12 s), SMALL=1, NO_WHEELS=1 (PY already has
# diffusers, SQLAlchemy, Alembic ...: run_all, which always installs, gets only the pure-Python wheels, and the
# families run without $SITE), PY (python3), SITE ($SCRATCH/site), SKIP_SD15=1, FAMILIES (sdxl,flux),
# FLUX_LAYERS (auto), GF_ARGS (more gpu_families.py arguments), GB_DIR (.gpu-bench).
set -u -o pipefail

T0=$(date +%s)
OUT=${OUT:?set OUT to the output folder}
SMALL=${SMALL:-0}
NO_WHEELS=${NO_WHEELS:-0}
PY=${PY:-python3}
TOTAL_BUDGET=${TOTAL_BUDGET:-560}
GB_BUDGET=${GB_BUDGET:-330}
SCRATCH=${SCRATCH:-/tmp/gpu-session}
SITE=${SITE:-$SCRATCH/site}
GB_DIR=${GB_DIR:-.gpu-bench}
FAMILIES=${FAMILIES:-sdxl,flux}
FLUX_LAYERS=${FLUX_LAYERS:-auto}
GF_ARGS=${GF_ARGS:-}
CHECKOUT=$(pwd)

mkdir -p "$OUT/sd15" "$OUT/families" "$SCRATCH" || exit 1
OUT=$(cd "$OUT" && pwd)
SCRATCH=$(cd "$SCRATCH" && pwd)
GB_DIR=$(cd "$GB_DIR" 2>/dev/null && pwd) || GB_DIR=""
elapsed() { echo $(( $(date +%s) - T0 )); }
say() { echo "[gpu_session +$(elapsed)s] $*"; }

say "checkout $CHECKOUT ($(git -C "$CHECKOUT" log -1 --format='%h %s' 2>/dev/null | cut -c1-100)), OUT $OUT," \
    "SMALL=$SMALL NO_WHEELS=$NO_WHEELS PY=$PY total ${TOTAL_BUDGET}s, gpu-bench ${GB_BUDGET}s"

# the wheels beside run_all.sh into $SITE (as run_all's install step does), when nothing installed them yet
install_wheels() {
  [ -d "$SITE/diffusers" ] && return 0
  [ -n "$GB_DIR" ] || { say "no $GB_DIR folder: no wheels to install"; return 1; }
  say "installing the wheels of $GB_DIR/wheels into $SITE"
  mkdir -p "$SITE"
  timeout 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$GB_DIR"/wheels/*.whl 2>&1 | grep -v -e "is ignored: it is neither" -e "Running pip as the 'root' user" | tail -n 5
  # idna, certifi, typing_extensions only where the machine lacks them (run_all.sh does the same)
  for w in "$GB_DIR"/wheels/fallback/*.whl; do
    m=$(basename "$w" | cut -d- -f1)
    PYTHONPATH="$SITE" "$PY" -c "import $m" 2>/dev/null || "$PY" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$w" "$SITE"
  done
  [ -d "$SITE/diffusers" ]
}

# ---------------------------------------------------------------------------------------------- 1. gpu-bench
if [ "${SKIP_SD15:-0}" = 1 ]; then
  say "sd15: skipped (SKIP_SD15=1)"
  echo "skipped (SKIP_SD15=1)" > "$OUT/sd15/summary.txt"
elif [ -z "$GB_DIR" ] || [ ! -f "$GB_DIR/run_all.sh" ]; then
  say "sd15: no .gpu-bench/run_all.sh here (copy ../shared/gpu-bench into .gpu-bench)"
  echo "not run: no .gpu-bench/run_all.sh" > "$OUT/sd15/summary.txt"
else
  whl_dir=$GB_DIR/wheels
  if [ "$NO_WHEELS" = 1 ]; then  # run_all always installs: give it the pure-Python wheels only (any Python takes them)
    whl_dir=$SCRATCH/wheels-pure
    rm -rf "$whl_dir" && mkdir -p "$whl_dir" && cp "$GB_DIR"/wheels/*-py3-none-any.whl "$whl_dir"/
  fi
  sd_out=$SCRATCH/sd15-out
  rm -rf "$sd_out" "$SCRATCH/sd15-model" "$SCRATCH/sd15-th" "$SCRATCH/sd15-work"
  say "sd15: .gpu-bench/run_all.sh, BUDGET=$GB_BUDGET, torch.compile skipped"
  SMALL=$SMALL BUDGET=$GB_BUDGET COMPILE_MIN_LEFT=9999 OUT=$sd_out PY=$PY WHL_DIR=$whl_dir SITE=$SITE \
    CHECKOUT=$CHECKOUT MODEL=$SCRATCH/sd15-model TH=$SCRATCH/sd15-th WORK=$SCRATCH/sd15-work \
    timeout -k 10 $(( GB_BUDGET + 60 )) bash "$GB_DIR/run_all.sh" 2>&1 | grep --line-buffered -E '^=== |^FAILED'
  for f in summary.txt results.json log.txt; do
    [ -f "$sd_out/$f" ] && cp "$sd_out/$f" "$OUT/sd15/$f"
  done
  [ -f "$OUT/sd15/summary.txt" ] || echo "run_all.sh left no summary (see log.txt)" > "$OUT/sd15/summary.txt"
  # room on /tmp for the Flux-size model: the SD 1.5 model, its images and the tracker's workspace go
  rm -rf "$SCRATCH/sd15-model" "$SCRATCH/sd15-th" "$SCRATCH/sd15-work"
fi

# ---------------------------------------------------------------------------------------------- 2. families
left=$(( TOTAL_BUDGET - $(elapsed) - 12 ))
gf_budget=${GF_BUDGET:-$left}
[ "$gf_budget" -gt "$left" ] && gf_budget=$left
pp=$CHECKOUT
if [ "$NO_WHEELS" != 1 ]; then
  install_wheels || say "families: the wheels are not installed; trying anyway"
  pp=$CHECKOUT:$SITE
fi
if [ "$gf_budget" -lt 20 ]; then
  say "families: skipped, only ${gf_budget}s left"
  echo "skipped: only ${gf_budget}s of TOTAL_BUDGET left" > "$OUT/families/summary.md"
else
  small_flag=""
  [ "$SMALL" = 1 ] && small_flag="--small"
  rm -rf "$SCRATCH/families"
  say "families: bench/gpu_families.py --budget $gf_budget $small_flag --families $FAMILIES --flux-layers $FLUX_LAYERS $GF_ARGS"
  # shellcheck disable=SC2086
  PYTHONPATH=$pp${PYTHONPATH:+:$PYTHONPATH} timeout -k 10 $(( gf_budget + 30 )) "$PY" bench/gpu_families.py \
    --budget "$gf_budget" --out "$OUT/families" --work "$SCRATCH/families" --python "$PY" --checkout "$CHECKOUT" \
    --families "$FAMILIES" --flux-layers "$FLUX_LAYERS" $small_flag $GF_ARGS 2>&1 \
    | tee "$OUT/families/log.txt" | grep --line-buffered -E '^\[\+ *[0-9.]+s\]|^error:'
  say "families: exit ${PIPESTATUS[0]}"
fi

# ---------------------------------------------------------------------------------------------- summary
echo
echo "==================== sd15 (gpu-bench) ===================="
cat "$OUT/sd15/summary.txt" 2>/dev/null
echo
echo "==================== families ===================="
cat "$OUT/families/summary.md" 2>/dev/null
echo
say "done; files in $OUT:"
(cd "$OUT" && find . -type f | sort | while read -r f; do printf '  %s %s bytes\n' "$f" "$(stat -c %s "$f")"; done)
