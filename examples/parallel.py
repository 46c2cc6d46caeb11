#!/usr/bin/env python3
"""A tiny GNU parallel on the cluster: runs each line of FILE with sh -c
under om, N at a time, and prints for each the nodes it ran on and its exit
status (as `examples/parallel.rs` does).

Usage: parallel.py [-j N] [--socket PATH] FILE
"""

import argparse
import sys
import threading
import time

import om


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-j", type=int, default=2, help="jobs at a time")
    ap.add_argument("--socket", help="omd's control socket")
    ap.add_argument("file")
    a = ap.parse_args()
    with open(a.file) as f:
        lines = [l.rstrip("\n") for l in f if l.strip()]

    home = (om.nodes(a.socket) or [{"id": 1}])[0]["id"]
    ran_on = {}
    lock = threading.Lock()

    def watch(stream):
        for e in stream:
            if e["event"] in ("moved", "home"):
                with lock:
                    ran_on.setdefault(e["pid"], []).append(e["to"])

    threading.Thread(target=watch, args=(om.events(a.socket),), daemon=True).start()

    running, failed, todo = [], 0, list(lines)
    while todo or running:
        while todo and len(running) < a.j:
            line = todo.pop(0)
            running.append((line, om.Popen(["sh", "-c", line], socket=a.socket)))
        for line, p in list(running):
            if p.poll() is not None:
                running.remove((line, p))
                with lock:
                    nodes = [home] + ran_on.pop(p.pid, [])
                nodes = [n for i, n in enumerate(nodes) if i == 0 or n != nodes[i - 1]]
                failed += p.returncode != 0
                print(f"{line}\tnodes {','.join(map(str, nodes))}\texit status: {p.returncode}", flush=True)
        time.sleep(0.02)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
