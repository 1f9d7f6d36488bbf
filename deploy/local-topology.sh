#!/usr/bin/env bash
# Three `eventforge worker` processes on loopback and a demander that
# round-robins calls over them with retry. One worker is killed (SIGKILL)
# halfway through; the run fails (non-zero exit) if any call is lost.
#
#   deploy/local-topology.sh [CALLS]
#
# Unattended and bounded: every wait has a deadline, every process started
# here is stopped on exit.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
calls="${1:-300}"
target="${CARGO_TARGET_DIR:-$root/target}"
work="$(mktemp -d)"
pids=()

cleanup() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

echo "building the eventforge binary and the demander..."
(cd "$root" && cargo build --quiet -p eventforge-worker --bin eventforge \
    && cargo build --quiet --example 09_distributed_workers)

urls=()
for n in 1 2 3; do
    # Port 0: the system picks a free port; the worker prints the real one
    # on its first stdout line, which is read here (at most 30 s).
    exec {out}< <(exec "$target/debug/eventforge" worker tcp://127.0.0.1:0 --id "worker-$n" \
        --builtin whoami --builtin add --builtin echo 2>"$work/worker-$n.err")
    pids+=("$!")
    line=""
    read -r -t 30 -u "$out" line || true
    url="$(sed -n 's/.*listening on \([^ ]*\).*/\1/p' <<<"$line")"
    [ -n "$url" ] || { echo "worker-$n did not start:" >&2; cat "$work/worker-$n.err" >&2; exit 1; }
    echo "worker-$n listening on $url (pid ${pids[-1]})"
    urls+=("$url")
done

victim="${pids[1]}"
echo "demander: $calls calls; worker-2 is killed halfway"
# The demander's output drives the kill; pipefail keeps its exit status.
timeout 120 "$target/debug/examples/09_distributed_workers" --calls "$calls" "${urls[@]}" |
    while IFS= read -r line; do
        echo "$line"
        if [[ "$line" == halfway* ]]; then
            kill -9 "$victim"
            echo "killed worker-2 (pid $victim)"
        fi
    done
echo "no call lost"
