# Shared by the benchmark scripts (sourced after scripts/setup.sh, with RUNS and OUT set).

[ -x /usr/bin/time ] || as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q time >/dev/null
mkdir -p "$OUT"

# best_of NAME CMD...: best wall time and its peak RSS over RUNS runs (GNU time); the
# command's output goes to $OUT/NAME.log (last run); a failing run stops the benchmark.
# Sets RESULT (seconds) and RESULT_RSS (MB).
best_of() {
  local name=$1 best="" rss=""
  shift
  for _ in $(seq "$RUNS"); do
    local out t m
    /usr/bin/time -o "$OUT/time" -f "%e %M" "$@" >"$OUT/$name.log" 2>&1 \
      || { echo "error: $name failed:" >&2; tail -20 "$OUT/$name.log" >&2; return 1; }
    out=$(tail -1 "$OUT/time")
    t=${out% *}
    m=${out#* }
    if [ -z "$best" ] || awk "BEGIN{exit !($t < $best)}"; then best=$t; rss=$m; fi
  done
  printf '%-44s %8.2f s %8.0f MB\n' "$name" "$best" "$((rss / 1024))"
  RESULT=$best
  RESULT_RSS=$((rss / 1024))
}
