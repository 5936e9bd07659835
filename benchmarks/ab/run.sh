#!/usr/bin/env bash
# A/B of two builds of the library in one process, for kernel changes on
# shared, noisy hosts where separate runs of the same code differ by 10-30 %.
#
#   benchmarks/ab/run.sh <A> <B> <case> [fwd|bwd|eval] [rounds] [calls]
#
# A, B: a git revision (its include/ is taken with git archive) or "." (the
# working tree's include/). Cases: run with no case to list them. Prints the
# median time of each build, its fraction of a memcpy of the same bytes timed
# in between, B's speed-up over A, and whether their outputs (y, or dx for
# bwd) and the statistics a forward saves or updates (the parameter
# gradients, for bwd) are bitwise equal; an A/A run (". .") reads 1.00-1.02
# (1.07-1.11 on an Intel host, favouring B: run both orders there).
# The program runs AB_RUNS times (default 3; ~2-10 s each, after ~30 s of
# compiling): read the spread, not one line. AB_FLAGS: more compiler flags
# for both builds, e.g. AB_FLAGS=-DDISTANCE=2048 to sweep a constant that
# the working tree reads from a macro while trying values.
# Builds whose outputs stream differently bias the alternation: after one
# streams y out of the cache, the other's plain stores to y read it from
# memory first (seen 2-3x on an Intel host); time such pairs in separate runs.
set -euo pipefail

if [ $# -lt 2 ]; then
  sed -n '4,20p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
root=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The include directory of revision $1, extracted under $2 (or the working tree's).
include_of() {
  if [ "$1" = "." ]; then
    echo "$root/include"
  else
    mkdir -p "$2"
    git -C "$root" archive "$1" include | tar -x -C "$2"
    echo "$2/include"
  fi
}
inc_a=$(include_of "$1" "$work/a")
inc_b=$(include_of "$2" "$work/b")
shift 2

eigen=$(pkg-config --cflags eigen3 2>/dev/null || echo -I/usr/include/eigen3)
flags=(-O3 -march=native -std=c++17 -DNDEBUG ${AB_FLAGS:-})
# The library's namespace renamed per build, so both link into one program.
g++ "${flags[@]}" -Dnormlayers=nl_a -DAB_RUN=ab_run_a -I"$inc_a" $eigen \
  -c "$root/benchmarks/ab/variant.cpp" -o "$work/a.o" &
pid_a=$!
g++ "${flags[@]}" -Dnormlayers=nl_b -DAB_RUN=ab_run_b -I"$inc_b" $eigen \
  -c "$root/benchmarks/ab/variant.cpp" -o "$work/b.o" &
pid_b=$!
wait "$pid_a"
wait "$pid_b"
g++ "${flags[@]}" "$root/benchmarks/ab/main.cpp" "$work/a.o" "$work/b.o" -o "$work/ab" -lpthread
for _ in $(seq "${AB_RUNS:-3}"); do "$work/ab" "$@"; done
