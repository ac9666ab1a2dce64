#!/usr/bin/env bash
# The whole GPU run in one call, <= 540 s of wall time on an H100/H200 (hard-capped), 8 files in $OUT:
#   a. the timed suite (gpu_suite.py) alone on the GPU: ${SUITE_BUDGET_S:-230} s of tasks in
#      priority order (the rest skipped and listed), a hard stop 50 s later; with --official when
#      .official/GreenMIM (a checkout of github.com/LayneH/GreenMIM) or $OFFICIAL exists;
#   b. then, side by side (correctness checks, not timings): the real programs in every mode
#      (gpu_programs.py, ${PROGRAMS_BUDGET_S:-230} s, a hard stop 40 s later) and the Mask R-CNN
#      check (gpu_detection_check.sh, detectron2 built from the carried .whl where it is absent);
#   c. packing, also after a timeout or a crash (trap EXIT): gpu_results.{md,json}, gpu_profiles.md,
#      gpu_programs.{md,json}, gpu_detection.md, summary.md (each phase's status, wall time and the
#      first lines of each report) and logs.tar.gz (every log, environment.txt, nvidia-smi.txt,
#      gpu_detection.jsonl, the runs' own logs). A phase that did not run leaves its files out.
# Every phase gets min(its budget, time left before the deadline - the packing reserve).
#
# Decision: the detection check's set-up (wheel install + detectron2 build: CPU only, one C++ file
# of GreenMIM's minimal _C) starts at once, in the background during phase a, under nice -n 19 with
# MAX_JOBS=4, and phase b runs only the check (SETUP_ONLY=1 / SKIP_SETUP=1). Reason: in phase b the
# set-up would compete with the six pretraining runs' torch.compile workers and loader workers for
# the 16 cores, which could stretch it from ~40 s to minutes and push the Mask R-CNN run past the
# phase; during phase a it takes one low-priority core of 16 for well under a minute, while the
# timed steps are GPU-bound (CUDA graphs) or host-launch-bound on one core, and dense and green
# steps are alternated, so each speed-up sees the same machine. At ~40 s (2-core figure) it should
# end before the loader and end-to-end rows (the host-bound ones, task 4) start; summary.md gives
# its start and end, to compare with the suite's task times in gpu_suite.log. The set-up is CPU-only
# (install_detectron2.sh builds with CUDA_VISIBLE_DEVICES empty), so the GPU stays the suite's.
# The hard stops use timeout(1); on an interrupt the EXIT trap also stops the programs' runs and
# train_net by pid (they sit in sessions of their own).
#
#   OUT=/tmp/gpu bash tools/benchmarks/gpu_run.sh                                # the GPU run
#   DEVICE=cpu PYTHON=.venv/bin/python OUT=/tmp/gr bash tools/benchmarks/gpu_run.sh --tiny   # CPU dry run
#   ... gpu_run.sh --suite --batch-size 64 --programs --jobs 4 --detection --iters 50   # extra arguments
# Variables: PYTHON (python3), OUT (gpu_run_out), DEVICE (cuda), OFFICIAL, SUITE_BUDGET_S (230),
# PROGRAMS_BUDGET_S (230; 300 with DEVICE=cpu), TOTAL_S (540), RESERVE_S (20: kept for packing),
# SETUP_BUDGET_S (300); scratch in ${TMPDIR:-/tmp}/greenmim_gpu_run (emptied first).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
T0=$(date +%s)
OUT="${OUT:-gpu_run_out}"
DEVICE="${DEVICE:-cuda}"
TOTAL_S="${TOTAL_S:-540}"
RESERVE_S="${RESERVE_S:-20}"
SUITE_BUDGET_S="${SUITE_BUDGET_S:-230}"
# on a CPU (the dry run) the eight tiny runs take ~210 s of 2 cores beside the detection check
PROGRAMS_BUDGET_S="${PROGRAMS_BUDGET_S:-$([ "$DEVICE" = cpu ] && echo 300 || echo 230)}"
SETUP_BUDGET_S="${SETUP_BUDGET_S:-300}"
DEADLINE=$((T0 + TOTAL_S))
RUN="${TMPDIR:-/tmp}/greenmim_gpu_run"
STAGE="$RUN/stage"
DET_WORK="$RUN/detection"
export PYTHONPATH="$PWD/pretrain${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export GPU_SUITE_WORK="$RUN/suite" GPU_PROGRAMS_WORK="$RUN/programs"

TINY=0
SUITE_ARGS=() PROGRAMS_ARGS=() DETECTION_ARGS=()
target=""
for a in "$@"; do
  case "$target:$a" in
    *:--suite) target=suite ;;
    *:--programs) target=programs ;;
    *:--detection) target=detection ;;
    :--tiny) TINY=1 ;;
    suite:*) SUITE_ARGS+=("$a") ;;
    programs:*) PROGRAMS_ARGS+=("$a") ;;
    detection:*) DETECTION_ARGS+=("$a") ;;
    *) echo "usage: gpu_run.sh [--tiny] [--suite ARGS...] [--programs ARGS...] [--detection ARGS...]" >&2; exit 2 ;;
  esac
done
if [ -z "${OFFICIAL:-}" ] && [ -d .official/GreenMIM ]; then OFFICIAL="$ROOT/.official/GreenMIM"; fi

log() { echo "[gpu_run $(date +%H:%M:%S) +$(( $(date +%s) - T0 )) s] $*"; }
left() { echo $((DEADLINE - RESERVE_S - $(date +%s))); }
min() { if [ "$1" -lt "$2" ]; then echo "$1"; else echo "$2"; fi; }
# status of a finished phase from its exit code (timeout(1): 124 after TERM, 137 after KILL)
status_of() { case "$1" in 0) echo pass ;; 124|137) echo "TIMED OUT (exit $1)" ;; *) echo "FAIL (exit $1)" ;; esac; }

declare -A STATUS=() WALL=()
for p in suite setup programs detection; do STATUS[$p]="not run"; WALL[$p]=""; done
SETUP_PID="" PROGRAMS_PID="" SETUP_T0="" SETUP_END="" FAILED=0

# A process and all its descendants by pid (the programs' runs and train_net sit in sessions of
# their own, which timeout(1) does not reach).
descendants() { local c; for c in $(pgrep -P "$1" 2>/dev/null); do echo "$c"; descendants "$c"; done; }
stop_tree() { local pids; pids="$1 $(descendants "$1" | tr '\n' ' ')"; log "stopping $pids"; kill -TERM $pids 2>/dev/null; }

pack() {
  local rc=$?
  trap - EXIT INT TERM
  for pid in $SETUP_PID $PROGRAMS_PID; do  # still running only after a crash or a signal
    kill -0 "$pid" 2>/dev/null && stop_tree "$pid"
  done
  [ "$rc" = 0 ] || FAILED=1
  mkdir -p "$OUT" "$STAGE/runs"
  # the runs' own small logs (no checkpoints, no images)
  for d in "$GPU_PROGRAMS_WORK"/*/ "$GPU_SUITE_WORK/end_to_end/" "$DET_WORK/run/train/"; do
    [ -d "$d" ] || continue
    name="$(basename "$(dirname "$d")")_$(basename "$d")"
    find "$d" -maxdepth 1 -type f \( -name '*.jsonl' -o -name '*.json' -o -name '*.txt' -o -name '*.log' -o -name '*.yaml' \) \
      -size -2M -exec sh -c 'mkdir -p "$0" && cp "$@" "$0"/' "$STAGE/runs/$name" {} + 2>/dev/null
  done
  [ -f "$DET_WORK/setup.log" ] && tail -n 400 "$DET_WORK/setup.log" > "$STAGE/gpu_detection_setup_full.log"
  [ -f "$GPU_SUITE_WORK/official.json" ] && cp "$GPU_SUITE_WORK/official.json" "$STAGE/"
  keep=(gpu_results.md gpu_results.json gpu_profiles.md gpu_programs.md gpu_programs.json gpu_detection.md)
  for f in "${keep[@]}"; do
    rm -f "$OUT/$f"
    [ -f "$STAGE/$f" ] && cp "$STAGE/$f" "$OUT/$f"
  done
  {
    echo "# GPU run summary ($DEVICE$([ "$TINY" = 1 ] && echo ', tiny'))"
    echo
    echo "$(date -u +%Y-%m-%dT%H:%M:%SZ); wall $(( $(date +%s) - T0 )) s of $TOTAL_S; $(head -n1 "$STAGE/environment.txt" 2>/dev/null)"
    echo
    echo "| phase | status | wall s |"
    echo "| --- | --- | --- |"
    echo "| a. suite (budget ${SUITE_BUDGET_S} s$([ -n "${OFFICIAL:-}" ] && echo ', --official')) | ${STATUS[suite]} | ${WALL[suite]} |"
    echo "| detection set-up (background, from +${SETUP_T0:-?} s to +${SETUP_END:-?} s) | ${STATUS[setup]} | ${WALL[setup]} |"
    echo "| b. programs (budget ${PROGRAMS_BUDGET_S} s) | ${STATUS[programs]} | ${WALL[programs]} |"
    echo "| b. detection | ${STATUS[detection]} | ${WALL[detection]} |"
    for f in gpu_results.md:14 gpu_programs.md:22 gpu_detection.md:7; do
      n="${f#*:}" f="${f%:*}"
      echo
      if [ -f "$OUT/$f" ]; then
        echo "## $f (first lines)"; echo; head -n "$n" "$OUT/$f" | cut -c1-400
        tail -n +"$((n + 1))" "$OUT/$f" | grep -E '^(Skipped|Errors)' | cut -c1-600
      else
        echo "## $f: missing (its phase did not run or did not finish)"
      fi
    done
    echo
    echo "Everything else (logs, environment.txt, nvidia-smi.txt, gpu_detection.jsonl, runs/*): logs.tar.gz."
  } > "$STAGE/summary.md"
  cp "$STAGE/summary.md" "$OUT/summary.md"
  excl=(); for f in "${keep[@]}" summary.md; do excl+=(--exclude "./$f"); done
  tar -czf "$OUT/logs.tar.gz" -C "$STAGE" "${excl[@]}" . 2>/dev/null || log "tar failed"
  log "packed: $(ls "$OUT" | tr '\n' ' ')"
  cat "$OUT/summary.md"
  exit "$FAILED"
}
trap pack EXIT
trap 'log "interrupted"; FAILED=1; exit 130' INT
trap 'log "terminated"; FAILED=1; exit 143' TERM

rm -rf "$RUN"
mkdir -p "$STAGE" "$DET_WORK" "$OUT"
PY="$(command -v "${PYTHON:-python3}")" || { log "error: no ${PYTHON:-python3}"; FAILED=1; exit 2; }
{ "$PY" -c "import torch, timm, numpy, yaml, PIL; print('torch', torch.__version__, 'timm', timm.__version__, 'cuda', torch.cuda.is_available())" \
    || echo "error: $PY lacks torch, timm, numpy, pyyaml or pillow"
  echo "python $("$PY" -c 'import sys; print(sys.version.split()[0])' 2>/dev/null); $(nproc) cores; $(free -g 2>/dev/null | awk '/^Mem/ {print $2 " GiB memory"}')"
  echo "checkout $(git rev-parse --short HEAD 2>/dev/null || echo '(no git)'); device $DEVICE; tiny $TINY; official ${OFFICIAL:-none}"
} > "$STAGE/environment.txt" 2>&1
command -v nvidia-smi >/dev/null && nvidia-smi > "$STAGE/nvidia-smi.txt" 2>&1
log "$(head -n1 "$STAGE/environment.txt")"
grep -q '^error:' "$STAGE/environment.txt" && { log "$(grep '^error:' "$STAGE/environment.txt")"; FAILED=1; exit 2; }

dev_args=(--device "$DEVICE"); [ "$TINY" = 1 ] && dev_args+=(--tiny)
prog_args=("${dev_args[@]}"); [ "$DEVICE" = cpu ] && prog_args+=(--modes eager)

# Detection set-up in the background (see the header's decision).
T_SETUP=$(min "$SETUP_BUDGET_S" "$(left)")
SETUP_T0=$(( $(date +%s) - T0 ))
log "detection set-up starts in the background (nice 19, MAX_JOBS=4, <= ${T_SETUP} s)"
OUT="$STAGE" DEVICE="$DEVICE" PYTHON="$PY" WORK="$DET_WORK" SETUP_ONLY=1 MAX_JOBS=4 \
  nice -n 19 timeout -k 5 "$T_SETUP" bash tools/benchmarks/gpu_detection_check.sh > "$STAGE/gpu_detection_setup.log" 2>&1 &
SETUP_PID=$!

# a. The timed suite, alone on the GPU.
T_A=$(min $((SUITE_BUDGET_S + 50)) "$(left)")
suite_args=("${dev_args[@]}" --budget-s $(( T_A > 50 ? T_A - 50 : 0 )))
[ -n "${OFFICIAL:-}" ] && suite_args+=(--official "$OFFICIAL")
log "phase a: gpu_suite.py ${suite_args[*]} ${SUITE_ARGS[*]} (hard stop ${T_A} s)"
t=$(date +%s)
if [ "$T_A" -ge 30 ]; then
  timeout -k 5 "$T_A" "$PY" tools/benchmarks/gpu_suite.py --out "$STAGE" "${suite_args[@]}" \
    "${SUITE_ARGS[@]+"${SUITE_ARGS[@]}"}" 2>&1 | grep --line-buffered -v '^USDT' | tee "$STAGE/gpu_suite.log"
  rc=${PIPESTATUS[0]}
  STATUS[suite]="$(status_of "$rc")"; WALL[suite]=$(( $(date +%s) - t ))
  [ "$rc" = 0 ] || FAILED=1
else
  STATUS[suite]="skipped: no time left"; FAILED=1
fi
log "phase a: ${STATUS[suite]}${WALL[suite]:+ in ${WALL[suite]} s}"

# b. The programs and the detection check, side by side.
T_B=$(min $((PROGRAMS_BUDGET_S + 40)) "$(left)")
tb=$(date +%s)
if [ "$T_B" -ge 50 ]; then
  log "phase b: gpu_programs.py ${prog_args[*]} --budget-s $((T_B - 40)) ${PROGRAMS_ARGS[*]} (hard stop ${T_B} s)"
  timeout -k 5 "$T_B" "$PY" tools/benchmarks/gpu_programs.py --out "$STAGE" "${prog_args[@]}" --budget-s $((T_B - 40)) \
    "${PROGRAMS_ARGS[@]+"${PROGRAMS_ARGS[@]}"}" > "$STAGE/gpu_programs.log" 2>&1 &
  PROGRAMS_PID=$!
else
  STATUS[programs]="skipped: no time left"; FAILED=1
fi

if kill -0 "$SETUP_PID" 2>/dev/null; then log "waiting for the detection set-up"; fi
wait "$SETUP_PID"; rc=$?
SETUP_PID=""
# when it ended: its log's last write (it may have ended long before this wait)
SETUP_END=$(( $( { [ "$rc" = 0 ] && stat -c %Y "$DET_WORK/setup.log" 2>/dev/null; } || date +%s) - T0 ))
WALL[setup]=$((SETUP_END - SETUP_T0))
STATUS[setup]="$(status_of "$rc")"
log "detection set-up: ${STATUS[setup]} ($(tail -n1 "$STAGE/gpu_detection_setup.log" 2>/dev/null | cut -c1-200))"
T_D=$(min $((T_B - ($(date +%s) - tb))) "$(left)")
if [ "$rc" != 0 ]; then
  STATUS[detection]="not run: the set-up failed"; FAILED=1
  [ -f "$STAGE/gpu_detection.md" ] || "$PY" tools/benchmarks/gpu_detection_check.py --out "$STAGE" --device "$DEVICE" \
    --setup-error "the detectron2 set-up stopped ($(status_of "$rc")); see gpu_detection_setup*.log" >/dev/null 2>&1
elif [ "$T_D" -gt 30 ]; then
  log "phase b: gpu_detection_check.sh (SKIP_SETUP=1, train_net <= $(min 240 $((T_D - 25))) s, hard stop ${T_D} s)"
  t=$(date +%s)
  OUT="$STAGE" DEVICE="$DEVICE" PYTHON="$PY" WORK="$DET_WORK" SKIP_SETUP=1 timeout -k 5 "$T_D" \
    bash tools/benchmarks/gpu_detection_check.sh --timeout-s "$(min 240 $((T_D - 25)))" \
    "${DETECTION_ARGS[@]+"${DETECTION_ARGS[@]}"}" > "$STAGE/gpu_detection_run.log" 2>&1
  rc=$?
  STATUS[detection]="$(status_of "$rc")"; WALL[detection]=$(( $(date +%s) - t ))
  [ "$rc" = 0 ] || FAILED=1
  log "phase b: detection ${STATUS[detection]} in ${WALL[detection]} s"
else
  STATUS[detection]="skipped: no time left"; FAILED=1
fi

if [ -n "$PROGRAMS_PID" ]; then
  wait "$PROGRAMS_PID"; rc=$?
  PROGRAMS_PID=""
  STATUS[programs]="$(status_of "$rc")"; WALL[programs]=$(( $(date +%s) - tb ))
  [ "$rc" = 0 ] || FAILED=1
  log "phase b: programs ${STATUS[programs]} in ${WALL[programs]} s; $(tail -n1 "$STAGE/gpu_programs.log" | cut -c1-300)"
fi
exit "$FAILED"
