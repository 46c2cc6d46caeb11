"""om's Python package against a real cluster. Run by tests/tests/python.rs,
which starts two omd daemons and sets OM_SOCKET to node 1's socket."""

import os
import subprocess
import sys
import time

import pytest

import om

SPIN = "import time\nt = time.time()\nwhile time.time() - t < {secs}: pass\nraise SystemExit({code})\n"


def wait_node(p, want, timeout=20):
    t0 = time.time()
    while p.node() != want:
        assert time.time() - t0 < timeout, f"never on node {want}: {p.node()}"
        time.sleep(0.05)


def test_popen_migrate_node_and_own_exit_status():
    p = om.Popen([sys.executable, "-c", SPIN.format(secs=2, code=7)])
    assert p.node() == 1
    p.migrate(2)
    assert p.node() == 2
    assert p.poll() is None
    assert p.wait() == 7
    assert p.returncode == 7


def test_started_on_a_node_with_pipes_and_brought_home():
    p = om.Popen([sys.executable, "-c", "import sys\nprint(sys.stdin.readline().upper(), end='')\n"],
                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, node=2)
    wait_node(p, 2)
    p.migrate("home")
    assert p.node() == 1
    out, _ = p.communicate(b"hello om\n", timeout=20)
    assert out == b"HELLO OM\n"
    assert p.returncode == 0


def test_signals_and_kill_end_it_as_natively():
    p = om.Popen([sys.executable, "-c", SPIN.format(secs=30, code=0)])
    p.migrate(2)
    p.send_signal(15)
    assert p.wait(timeout=20) == -15
    q = om.Popen(["sleep", "30"])
    q.kill()
    assert q.wait(timeout=20) == -9


def test_nodes_and_ps_have_the_json_keys():
    ns = om.nodes()
    assert sorted(n["id"] for n in ns) == [1, 2]
    assert {"id", "addr", "state", "load", "cpus", "speed", "mem_total", "mem_free", "guests"} <= set(ns[0])
    p = om.Popen(["sleep", "5"])
    try:
        mine = [x for x in om.ps() if x["pid"] == p.pid]
        assert len(mine) == 1
        assert mine[0]["cmd"] == "sleep 5"
        assert {"pid", "home", "where", "state", "cmd", "cant_move", "why", "demand", "rss", "locked", "gang"} == set(mine[0])
    finally:
        p.kill()
        p.wait()


def test_errors_carry_om_message():
    p = om.Popen(["sleep", "5"])
    try:
        with pytest.raises(om.Error, match="unknown node 9"):
            p.migrate(9)
        with pytest.raises(om.Error, match="not a node id"):
            p.migrate("nine")
    finally:
        p.kill()
        p.wait()
    with pytest.raises(om.Error, match="no omd answers"):
        om.Popen(["true"], socket="/nonexistent/omd.sock")


def test_events_tell_the_move_and_the_exit():
    ev = om.events()
    p = om.Popen([sys.executable, "-c", SPIN.format(secs=1.5, code=3)])
    p.migrate(2)
    assert p.wait() == 3
    seen = []
    for e in ev:
        if e["pid"] == p.pid:
            seen.append((e["event"], e["from"], e["to"], e["code"]))
            if e["event"] == "exited":
                break
    assert seen == [("moved", 1, 2, 0), ("exited", 0, 0, 3)]


def test_the_parallel_example(tmp_path):
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("exit 0\nexit 3\necho hi >/dev/null\n")
    here = os.path.dirname(os.path.abspath(__file__))
    example = os.path.join(here, "..", "..", "examples", "parallel.py")
    r = subprocess.run([sys.executable, example, "-j", "2", str(jobs)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    assert sorted(r.stdout.splitlines()) == [
        "echo hi >/dev/null\tnodes 1\texit status: 0",
        "exit 0\tnodes 1\texit status: 0",
        "exit 3\tnodes 1\texit status: 3",
    ]
