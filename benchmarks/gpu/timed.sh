# Sourced by the issue-21 device scripts: timed NAME COMMAND... runs COMMAND with its output in $OUT/NAME.log, prints
# the log's tail if it fails, and appends "NAME: <seconds> s" to $OUT/times.txt.
timed() {
  local name=$1; shift
  local t0=$(date +%s)
  "$@" > "$OUT/$name.log" 2>&1 || { echo "$name failed"; tail -n 30 "$OUT/$name.log"; }
  echo "$name: $(( $(date +%s) - t0 )) s" | tee -a "$OUT/times.txt"
}
