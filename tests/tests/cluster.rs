//! A real cluster: SWIM membership with load records, failure detection,
//! authenticated links, and what happens to a process when a node dies.

use om_tests::{bin, wait_child, wait_lines, Cluster};
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);
const DOWN_WITHIN: Duration = Duration::from_secs(5);

fn state_of(v: &[serde_json::Value], id: u64) -> Option<String> {
    v.iter().find(|n| n["id"] == id).and_then(|n| n["state"].as_str()).map(str::to_string)
}

/// Three nodes form a cluster: every node lists all three as alive, with
/// their figures; a guest is counted where it runs.
#[test]
fn three_nodes_form_a_cluster_with_load_records() {
    let c = Cluster::start(3);
    for id in 1..=3 {
        let v = c.nodes(id);
        assert_eq!(v.len(), 3, "node {id}: {v:?}");
        for n in &v {
            assert_eq!(n["state"], "alive", "node {id}: {n}");
            assert!(n["cpus"].as_u64().unwrap_or(0) > 0 && n["mem_free"].as_u64().unwrap_or(0) > 0, "{n}");
            for k in ["id", "addr", "load", "speed", "guests", "age_ms", "accepts"] {
                assert!(!n[k].is_null(), "{k} missing in {n}");
            }
            assert!(n["age_ms"].as_u64().unwrap_or(u64::MAX) < 5000, "stale record: {n}");
        }
    }
    let mut p = c.om_exec(1, &bin("counter"), &["4", "60", "50"], "n.out");
    wait_lines(&c.path("n.out"), 2, T);
    c.migrate(1, p.id(), "2").unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    // The guest count spreads with the load records, to every node.
    for id in 1..=3 {
        c.wait_nodes(id, DOWN_WITHIN, |v| {
            let g = |n: u64| v.iter().find(|x| x["id"] == n).and_then(|x| x["guests"].as_u64());
            (g(1), g(2), g(3)) == (Some(0), Some(1), Some(0))
        })
        .unwrap_or_else(|v| panic!("node {id} never saw the guest on node 2: {v:?}"));
    }
    assert!(wait_child(&mut p, T).success());
}

/// A killed omd is `down` on every other node within 5 s, and rejoins on its
/// own when restarted.
#[test]
fn killed_node_is_down_everywhere_within_5s_and_rejoins() {
    let mut c = Cluster::start(3);
    c.kill_node(3);
    let t0 = Instant::now();
    for id in [1, 2] {
        let left = DOWN_WITHIN.saturating_sub(t0.elapsed());
        c.wait_nodes(id, left, |v| state_of(v, 3).as_deref() == Some("down"))
            .unwrap_or_else(|v| panic!("node {id} does not see node 3 down {:?} after the kill: {v:?}", t0.elapsed()));
    }
    c.start_node(3);
    for id in 1..=3 {
        c.wait_nodes(id, Duration::from_secs(10), |v| v.len() == 3 && v.iter().all(|n| n["state"] == "alive"))
            .unwrap_or_else(|v| panic!("node 3 did not rejoin in node {id}'s view: {v:?}\n{}", c.logs()));
    }
}

/// A node with another cluster's key is refused: the others never list it,
/// it lists nobody, and each refusal is logged with its address.
#[test]
fn node_with_the_wrong_key_is_refused() {
    let c = Cluster::start(2);
    let other = c.path("other.key");
    om_runtime::link::ClusterKey::create(&other).expect("key");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
        l.local_addr().expect("addr").port()
    };
    let sock = c.path("intruder.sock");
    let log = std::fs::File::create(c.path("intruder.log")).expect("log");
    let mut intruder = Command::new(bin("omd"))
        .args(["--node-id=9", &format!("--listen=127.0.0.1:{port}")])
        .arg(format!("--socket={}", sock.display()))
        .arg(format!("--state-dir={}", c.path("s9").display()))
        .arg(format!("--key={}", other.display()))
        .arg(format!("--peer=127.0.0.1:{}", c.nodes[0].port))
        .arg(format!("--peer=127.0.0.1:{}", c.nodes[1].port))
        .stderr(log)
        .spawn()
        .expect("omd");
    std::thread::sleep(Duration::from_secs(4));
    for id in [1, 2] {
        let v = c.nodes(id);
        assert!(v.iter().all(|n| n["id"] != 9), "node {id} lists the intruder: {v:?}");
    }
    let seen = Command::new(bin("omctl")).env("OM_SOCKET", &sock).args(["--json", "nodes"]).output().expect("omctl");
    let v: serde_json::Value = serde_json::from_slice(&seen.stdout).expect("json");
    assert_eq!(v.as_array().map(Vec::len), Some(1), "the intruder sees members: {v}");
    // A migration to the intruder's address is refused by the handshake too.
    let logs = c.logs();
    assert!(logs.contains("without this cluster's key refused"), "no refusal logged:\n{logs}");
    let _ = intruder.kill();
    let _ = intruder.wait();
}

/// A direct link attempt with the wrong key: the node link is refused and
/// logged once with the address, and omd keeps serving.
#[test]
fn link_with_the_wrong_key_gets_nothing() {
    let c = Cluster::start(1);
    let key = om_runtime::link::ClusterKey::generate().expect("key");
    let addr = format!("127.0.0.1:{}", c.nodes[0].port).parse().expect("addr");
    for _ in 0..3 {
        let r = om_runtime::link::Link::connect(addr, &key, 7, Duration::from_secs(2));
        assert!(r.is_err(), "a link with the wrong key was accepted");
    }
    std::thread::sleep(Duration::from_millis(200));
    let log = c.log(1);
    assert_eq!(log.matches("node link refused").count(), 1, "not logged exactly once:\n{log}");
    assert!(log.contains("127.0.0.1"), "the address is not named:\n{log}");
    assert_eq!(c.nodes(1).len(), 1);
}

/// Kill the node hosting a migrated process: its parent at home sees it
/// killed by SIGKILL within 5 s, and the log names the lost node.
#[test]
fn host_node_death_kills_the_process_at_home_within_5s() {
    let mut c = Cluster::start(2);
    let mut p = c.om_exec(1, &bin("counter"), &["4", "1000", "50"], "h.out");
    wait_lines(&c.path("h.out"), 2, T);
    c.migrate(1, p.id(), "2").unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    c.kill_node(2);
    let t0 = Instant::now();
    let st = wait_child(&mut p, Duration::from_secs(20));
    let took = t0.elapsed();
    assert_eq!(st.signal(), Some(libc::SIGKILL), "{st:?}\n{}", c.logs());
    assert!(took < DOWN_WITHIN, "the parent saw the end only after {took:?}");
    let log = c.log(1);
    assert!(log.contains("node 2"), "the log does not name the lost node:\n{log}");
    assert_eq!(c.ps(1).as_array().map(Vec::len), Some(0), "the process is still listed");
}

/// Kill the home node of a migrated process: the host kills the guest and
/// frees it within 5 s.
#[test]
fn home_node_death_kills_the_guest_within_5s() {
    let mut c = Cluster::start(2);
    let mut p = c.om_exec(1, &bin("counter"), &["4", "1000", "50"], "g.out");
    wait_lines(&c.path("g.out"), 2, T);
    c.migrate(1, p.id(), "2").unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let guests = |c: &Cluster| c.nodes(2).iter().find(|n| n["id"] == 2).and_then(|n| n["guests"].as_u64());
    assert_eq!(guests(&c), Some(1));
    let omd2 = c.node_pid(2).expect("omd 2");
    // Children of any of omd's threads (a guest's parent is the thread that made it).
    let kids = || -> String {
        let tasks =
            std::fs::read_dir(format!("/proc/{omd2}/task")).map(|d| d.flatten().collect()).unwrap_or(Vec::new());
        tasks
            .iter()
            .map(|t| std::fs::read_to_string(t.path().join("children")).unwrap_or_default())
            .collect::<String>()
            .trim()
            .to_string()
    };
    assert!(!kids().is_empty(), "no guest process under omd 2");
    c.kill_node(1);
    let _ = p.kill();
    let _ = p.wait();
    let t0 = Instant::now();
    while guests(&c) != Some(0) || !kids().is_empty() {
        assert!(
            t0.elapsed() < DOWN_WITHIN,
            "guest still there {:?} after home died (children: {})\n{}",
            t0.elapsed(),
            kids(),
            c.log(2)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A process's demand is measured over all its threads: four busy threads
/// read as about four cores in `omctl ps` (run plus run-queue wait, so the
/// figure holds on a machine with fewer cores).
#[test]
fn a_process_with_four_busy_threads_counts_as_four_cores_of_demand() {
    let c = Cluster::start(1);
    let mut p = c.om_exec(1, &bin("threads"), &["10", "4"], "busy.out");
    wait_lines(&c.path("busy.out"), 1, T);
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut seen = Vec::new();
    loop {
        let d = c
            .ps(1)
            .as_array()
            .and_then(|a| a.iter().find(|x| x["pid"] == p.id()).cloned())
            .map(|x| x["demand"].clone());
        let d = d.and_then(|v| v.as_f64()).unwrap_or(0.0);
        seen.push(d);
        if d >= 3.2 || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = p.kill();
    let _ = p.wait();
    assert!(seen.last().is_some_and(|&d| (3.2..=4.8).contains(&d)), "demand readings over 8 s: {seen:?}");
}

/// A guest that makes no calls (pure CPU) dies with the daemon that hosts
/// it: without its supervisor it could never reach home again.
#[test]
fn a_guest_dies_with_the_daemon_that_hosts_it() {
    let mut c = Cluster::start(2);
    let mut p = c.om_exec(1, &bin("spin"), &["100000"], "s.out");
    std::thread::sleep(Duration::from_millis(300));
    c.migrate(1, p.id(), "2").unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    // The guest: a child of one of omd 2's threads.
    let omd2 = c.node_pid(2).expect("omd 2");
    let guest: i32 = std::fs::read_dir(format!("/proc/{omd2}/task"))
        .map(|d| d.flatten().collect::<Vec<_>>())
        .unwrap_or_default()
        .iter()
        .find_map(|t| std::fs::read_to_string(t.path().join("children")).ok()?.split_whitespace().next()?.parse().ok())
        .expect("a guest under omd 2");
    c.kill_node(2);
    let t0 = Instant::now();
    while !om_runtime::ptrace::has_ended(guest) {
        if t0.elapsed() > DOWN_WITHIN {
            let _ = om_runtime::sys::kill(guest, libc::SIGKILL);
            panic!("guest {guest} outlived its host daemon by {DOWN_WITHIN:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = p.kill();
    let _ = p.wait();
}
