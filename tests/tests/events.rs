//! The event stream of a node's processes (issue 12): `omctl events`
//! tells, as they happen, a move out, a move across, a return home, a move
//! om refused with its reason, and an exit with its status.

use om_tests::{bin, wait_child, wait_lines, Cluster};
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

#[test]
fn omctl_events_tells_moves_refusals_and_exits() {
    let c = Cluster::start(3);
    let mut ev = Command::new(bin("omctl"))
        .env("OM_SOCKET", c.socket(1))
        .args(["--json", "events"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("omctl events");
    let out = std::io::BufReader::new(ev.stdout.take().expect("stdout"));
    let (tx, rx) = std::sync::mpsc::channel::<serde_json::Value>();
    std::thread::spawn(move || {
        for l in out.lines().map_while(Result::ok) {
            let _ = tx.send(serde_json::from_str(&l).expect("a JSON line"));
        }
    });
    // Subscribed once omd counts it: give it a moment.
    std::thread::sleep(Duration::from_millis(300));
    let mut p = c.om_exec(1, &bin("counter"), &["4", "60", "50"], "ev.out");
    wait_lines(&c.path("ev.out"), 2, T);
    let pid = p.id();
    for to in ["2", "3", "home"] {
        c.migrate(1, pid, to).unwrap_or_else(|e| panic!("to {to}: {e}\n{}", c.logs()));
    }
    let refused = c.migrate(1, pid, "9").expect_err("there is no node 9");
    let st = wait_child(&mut p, T);
    assert!(st.success(), "{st:?}");
    // A process om cannot move: refused with the reason.
    let mut q = c.om_exec(1, &bin("cantmove"), &["seccomp", "200"], "cant.out");
    wait_lines(&c.path("cant.out"), 1, T);
    let why = c.migrate(1, q.id(), "2").expect_err("its own seccomp filter is refused");
    let _ = q.kill();
    let _ = q.wait();

    let mut got: Vec<serde_json::Value> = Vec::new();
    let want = |got: &[serde_json::Value]| got.iter().filter(|e| e["pid"] == q.id() && e["event"] == "exited").count();
    let t0 = std::time::Instant::now();
    while want(&got) == 0 && t0.elapsed() < T {
        if let Ok(e) = rx.recv_timeout(Duration::from_millis(200)) {
            got.push(e);
        }
    }
    let _ = ev.kill();
    let _ = ev.wait();
    let mine: Vec<String> = got
        .iter()
        .filter(|e| e["pid"] == pid)
        .map(|e| format!("{} {} {}", e["event"].as_str().unwrap_or(""), e["from"], e["to"]))
        .collect();
    assert_eq!(mine, ["moved 1 2", "moved 2 3", "home 3 1", "refused 0 9", "exited 0 0"], "{got:?}");
    let r = got.iter().find(|e| e["pid"] == pid && e["event"] == "refused").expect("refused");
    assert!(refused.contains(r["reason"].as_str().unwrap_or("?")), "{r} vs {refused}");
    let cant = got.iter().find(|e| e["pid"] == q.id() && e["event"] == "refused").expect("the refusal of cantmove");
    assert!(why.contains(cant["reason"].as_str().unwrap_or("?")), "{cant} vs {why}");
    let killed = got.iter().find(|e| e["pid"] == q.id() && e["event"] == "exited").expect("cantmove's end");
    assert_eq!(killed["signal"], libc::SIGKILL, "{killed}");
}
