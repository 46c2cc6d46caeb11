#!/usr/bin/env bash
# om's main job on an embedded default: a local cluster of three omd daemons on
# this machine, and a real program (64 MiB of live data and a counter) that
# migrates 1 -> 2 -> 3 -> home while it runs, keeping its pid and output.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
cargo build --release --workspace --bins -q
B=$PWD/target/release
D=$(mktemp -d /tmp/om-demo.XXXXXX)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$D"; }
trap cleanup EXIT
base=$((17000 + RANDOM % 15000))   # below the ephemeral port range
for i in 1 2 3; do
  peers=()
  for j in 1 2 3; do [ "$i" = "$j" ] || peers+=(--peer "$j=127.0.0.1:$((base + j))"); done
  "$B/omd" --node-id "$i" --listen "127.0.0.1:$((base + i))" --socket "$D/n$i.sock" --state-dir "$D/s$i" "${peers[@]}" 2>"$D/n$i.log" &
  pids+=($!)
done
for i in 1 2 3; do for _ in $(seq 100); do [ -S "$D/n$i.sock" ] && break; sleep 0.05; done; done
export OM_SOCKET=$D/n1.sock
echo "== three omd daemons on this host: nodes 1, 2, 3 (om-exec and omctl talk to node 1)"
"$B/omctl" nodes
echo "== om-exec counter: 64 MiB of data, prints 'counter pid checksum expected' every 100 ms"
"$B/om-exec" -- "$B/counter" 64 90 100 > "$D/out" &
P=$!; pids+=("$P")
show() { sleep 1; echo "-- last lines of its output:"; tail -n 2 "$D/out" | sed 's/^/   /'; "$B/omctl" ps; }
sleep 1; show
for to in 2 3 home; do
  echo "== omctl migrate $P $to"
  "$B/omctl" migrate "$P" "$to"
  show
done
wait "$P"; echo "== it exited with status $? after $(wc -l < "$D/out") lines"
awk -v pid="$P" '$3!=$4{bad++} $2!=pid{bad++} NR>1 && $1!=prev+1{bad++} {prev=$1} END{ if (bad) {print "== CHECK FAILED: " bad " bad lines"; exit 1} else print "== every line in order, same pid, every checksum correct" }' "$D/out"
grep -h "migrated\|moved between nodes\|running at home again" "$D"/n*.log | sed 's/^[^ ]* *//' | sed 's/^/   /'
