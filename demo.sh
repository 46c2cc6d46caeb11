#!/usr/bin/env bash
# om's main job on an embedded default: a simulated 3-node cluster on this
# machine (`omctl sim up 3`: node 1 is this host, nodes 2 and 3 have their own
# network and mount namespaces, every node a CPU quota), and a real program
# (64 MiB of live data and a counter) that migrates 1 -> 2 -> 3 -> home while
# it runs, keeping its pid and output. Then eight CPU-bound jobs started on
# node 1 spread over the nodes by themselves (the load balancer). Everything
# is removed at the end.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
cargo build --release --workspace --bins -q
B=$PWD/target/release
D=$(mktemp -d /tmp/om-demo.XXXXXX)
unset OM_SOCKET
P=
J=()
cleanup() {
  [ -n "$P" ] && kill "$P" 2>/dev/null
  [ ${#J[@]} -gt 0 ] && kill "${J[@]}" 2>/dev/null
  "$B/omctl" sim down >/dev/null 2>&1 || true
  rm -rf "$D"
}
trap cleanup EXIT
"$B/omctl" sim down >/dev/null 2>&1 || true
echo "== omctl sim up 3"
"$B/omctl" sim up 3
echo "== omctl nodes (as node 1 sees the cluster)"
"$B/omctl" nodes
echo "== om-exec counter: 64 MiB of data, prints 'counter pid checksum expected' every 100 ms"
"$B/om-exec" -- "$B/counter" 64 90 100 > "$D/out" &
P=$!
show() { sleep 1; echo "-- last lines of its output:"; tail -n 2 "$D/out" | sed 's/^/   /'; "$B/omctl" ps; }
sleep 1; show
for to in 2 3 home; do
  echo "== omctl migrate $P $to"
  "$B/omctl" migrate "$P" "$to"
  show
done
Q=$P; wait "$P"; st=$?; P=
echo "== it exited with status $st after $(wc -l < "$D/out") lines"
awk -v pid="$Q" '$3!=$4{bad++} $2!=pid{bad++} NR>1 && $1!=prev+1{bad++} {prev=$1} END{ if (bad) {print "== CHECK FAILED: " bad " bad lines"; exit 1} else print "== every line in order, same pid, every checksum correct" }' "$D/out"
grep -h "migrated\|moved between nodes\|running at home again" /run/om-sim/node-*/omd.log | sed 's/^[^ ]* *//' | sed 's/^/   /'
echo "== automatic balancing: 8 CPU-bound jobs started on node 1 with om-exec; nobody calls migrate"
for i in $(seq 8); do "$B/om-exec" -- "$B/spin" 1000000 > /dev/null & J+=($!); done
sleep 8
"$B/omctl" ps
spread=$("$B/omctl" --json ps | python3 -c 'import json,sys,collections; c=collections.Counter(p["where"] for p in json.load(sys.stdin)); print(" ".join(f"node {k}: {c[k]}" for k in sorted(c)))')
echo "== jobs per node: $spread   (watch it live with: omctl mon)"
kill "${J[@]}" 2>/dev/null; wait "${J[@]}" 2>/dev/null || true; J=()
case "$spread" in *"node 2"*"node 3"*) ;; *) echo "== CHECK FAILED: the jobs did not spread"; exit 1;; esac
echo "== omctl sim down"
"$B/omctl" sim down
