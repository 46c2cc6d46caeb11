//! The library batch tools embed (issue 12): `om::Command` starts a program
//! under om on a chosen node, its `Child` moves it and tells where it runs,
//! `wait` gives its own exit status, and the event stream tells the moves
//! and the exit. Also the example batch tool, examples/parallel.rs.

use om_tests::{bin, Cluster};
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

fn wait_node(child: &om::Child, want: u32) {
    let t0 = std::time::Instant::now();
    while child.node().ok() != Some(want) {
        assert!(t0.elapsed() < Duration::from_secs(20), "never on node {want}: {:?}", child.node());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_job_started_on_a_node_moves_by_its_child_and_ends_with_its_status() {
    let c = Cluster::start(3);
    let sock = c.socket(1).to_path_buf();
    let events = om::events(Some(&sock)).expect("events");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for e in events.map_while(Result::ok) {
            let _ = tx.send(e);
        }
    });
    let mut child =
        om::Command::new(bin("counter")).args(["4", "60", "50"]).node(2).socket(&sock).spawn().expect("spawn");
    wait_node(&child, 2);
    child.migrate(3).unwrap_or_else(|e| panic!("to 3: {e}\n{}", c.logs()));
    assert_eq!(child.node().expect("node"), 3);
    let e = child.migrate(9).expect_err("no node 9");
    assert!(e.to_string().contains("unknown node 9"), "{e}");
    child.home().unwrap_or_else(|e| panic!("home: {e}\n{}", c.logs()));
    assert_eq!(child.node().expect("node"), 1);
    let st = child.wait().expect("wait");
    assert!(st.success(), "{st:?}\n{}", c.logs());

    let pid = child.id() as i32;
    let mut seen = Vec::new();
    let t0 = std::time::Instant::now();
    while !seen.iter().any(|s: &String| s.starts_with("exited")) && t0.elapsed() < Duration::from_secs(20) {
        if let Ok(e) = rx.recv_timeout(Duration::from_millis(100)) {
            if e.pid == pid {
                seen.push(format!("{} {} {} {}", e.kind, e.from, e.to, e.code));
            }
        }
    }
    assert_eq!(seen, ["moved 1 2 0", "moved 2 3 0", "refused 0 9 0", "home 3 1 0", "exited 0 0 0"], "{}", c.logs());

    // A death by signal is the program's own, as with std::process.
    let st = om::Command::new("sh").args(["-c", "kill -TERM $$"]).socket(&sock).status().expect("status");
    assert_eq!(st.signal(), Some(libc::SIGTERM));
    // The library lists what omctl lists.
    assert_eq!(om::nodes(Some(&sock)).expect("nodes").len(), 3);
    assert!(om::ps(Some(&sock)).is_ok());
}

#[test]
fn with_no_omd_spawn_fails_with_om_message_and_nothing_runs() {
    let dir = std::env::temp_dir().join(format!("om-embed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let marker = dir.join("ran");
    let r = om::Command::new("touch").arg(&marker).socket(dir.join("none.sock")).spawn();
    let e = r.err().expect("no omd: spawn fails");
    assert!(e.to_string().contains("no omd answers"), "{e}");
    assert!(!marker.exists(), "the program ran although it could not be put under om");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The example batch tool: each line of a file on the cluster, two at a
/// time, with the nodes it ran on and its exit status.
#[test]
fn the_parallel_example_runs_every_line_and_reports_its_status() {
    let c = Cluster::start(2);
    let jobs = c.path("jobs.txt");
    std::fs::write(&jobs, "exit 0\nexit 3\necho hi >/dev/null\n").expect("jobs");
    let example = om_tests::bin_dir().join("examples/parallel");
    assert!(example.exists(), "{} is missing: cargo build --workspace --examples", example.display());
    let out = std::process::Command::new(&example)
        .args(["-j", "2", "--socket"])
        .arg(c.socket(1))
        .arg(&jobs)
        .output()
        .expect("parallel");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "one job failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            "echo hi >/dev/null\tnodes 1\texit status: 0",
            "exit 0\tnodes 1\texit status: 0",
            "exit 3\tnodes 1\texit status: 3"
        ]
    );
}
