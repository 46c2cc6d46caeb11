//! End-to-end: processes under om that share memory move together (a
//! gang): one `omctl migrate` moves them all, in one freeze, and brings
//! them all home; their shared counts stay exact.

use om_tests::{bin, wait_child, wait_lines, Cluster};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// Wait until `pid` is where `want` says, as node 1 sees it.
fn wait_where(c: &Cluster, pid: u32, want: u64) -> bool {
    let t0 = std::time::Instant::now();
    while t0.elapsed() < Duration::from_secs(20) {
        if c.where_is(1, pid) == Some(want) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// A parent and its child counting in one shared page (of each kind:
/// shared anonymous memory, SysV, memfd, a deleted /dev/shm file): `omctl
/// migrate PARENT 2` puts both on node 2 (`omctl ps` shows them as a gang),
/// `omctl migrate PARENT 3` moves both on to node 3, and `omctl migrate
/// PARENT home` brings both home; the final count is exact. Moved out
/// again, the parent's wait for its child (which runs at home) brings the
/// whole gang home by itself, and the count is exact again.
#[test]
fn a_parent_and_child_sharing_a_counter_move_out_across_and_home_together() {
    let c = Cluster::start(3);
    let n = 16_000_000u64;
    for how in ["anon", "sysv", "memfd", "shm"] {
        let out = format!("gang.{how}");
        let mut p = c.om_exec(1, &bin("gangcount"), &[&n.to_string(), how], &out);
        let first = wait_lines(&c.path(&out), 1, T);
        let child: u32 = first[0].trim_start_matches("ready ").parse().expect("child pid");
        let parent = p.id();
        // The child is under om (adopted at its fork) and in the parent's gang.
        let ps = c.ps(1);
        let gang_of = |pid: u32| {
            ps.as_array()
                .and_then(|a| a.iter().find(|x| x["pid"] == pid).cloned())
                .map(|x| x["gang"].clone())
                .unwrap_or_default()
        };
        assert_eq!(gang_of(parent), serde_json::json!([child]), "{how}: {ps}");
        assert_eq!(gang_of(child), serde_json::json!([parent]), "{how}: {ps}");

        c.migrate(1, parent, "2").unwrap_or_else(|e| panic!("{how} to 2: {e}\n{}", c.logs()));
        assert_eq!(c.where_is(1, parent), Some(2), "{how}\n{}", c.logs());
        assert_eq!(c.where_is(1, child), Some(2), "{how}: the child did not move with its parent\n{}", c.logs());
        std::thread::sleep(Duration::from_millis(300));
        c.migrate(1, parent, "3").unwrap_or_else(|e| panic!("{how} to 3: {e}\n{}", c.logs()));
        assert_eq!(c.where_is(1, parent), Some(3), "{how}\n{}", c.logs());
        assert_eq!(c.where_is(1, child), Some(3), "{how}: the child did not move on with its parent\n{}", c.logs());
        std::thread::sleep(Duration::from_millis(300));
        c.migrate(1, parent, "home").unwrap_or_else(|e| panic!("{how} home: {e}\n{}", c.logs()));
        assert!(wait_where(&c, parent, 1) && wait_where(&c, child, 1), "{how}: not both home\n{}", c.logs());
        std::thread::sleep(Duration::from_millis(200));
        // Out again; this time the parent's wait brings the gang home.
        c.migrate(1, child, "2").unwrap_or_else(|e| panic!("{how} to 2 again: {e}\n{}", c.logs()));
        let st = wait_child(&mut p, T);
        assert!(st.success(), "{how}: {st:?}\n{}", c.logs());
        let lines = wait_lines(&c.path(&out), 3, T);
        assert_eq!(lines[1..], ["child 0".to_string(), format!("count {}", 2 * n)], "{how}\n{}", c.logs());
    }
    if std::env::var_os("OM_GANG_LOGS").is_some() {
        eprintln!("{}", c.logs());
    }
}

/// Python multiprocessing: a parent and two workers (forked) add into a
/// shared `Array` under a `Lock` (an arena file in /dev/shm, mapped and
/// held open by every process, and a POSIX semaphore). Moved as one gang
/// to node 2 and on to 3 while they work, they finish with the exact sums
/// a native run prints (the parent's join brings the gang home).
#[test]
fn python_multiprocessing_with_a_shared_array_and_lock_moves_as_a_gang() {
    let c = Cluster::start(3);
    let script = c.path("mpsum.py");
    std::fs::write(
        &script,
        "import multiprocessing as mp, sys\n\
         def work(arr, lock, n, k):\n    for i in range(n):\n        with lock:\n            arr[(i + k) % len(arr)] += 1\n\
         if __name__ == '__main__':\n    mp.set_start_method('fork')\n    n = int(sys.argv[1])\n\
         \x20   arr = mp.Array('q', 4, lock=False)\n    lock = mp.Lock()\n\
         \x20   ps = [mp.Process(target=work, args=(arr, lock, n, k)) for k in range(2)]\n\
         \x20   for p in ps:\n        p.start()\n    print('started', flush=True)\n    work(arr, lock, n, 2)\n\
         \x20   for p in ps:\n        p.join()\n    print('exit codes', [p.exitcode for p in ps])\n\
         \x20   print('sum', sum(arr), list(arr), flush=True)\n",
    )
    .expect("script");
    let python = std::process::Command::new("sh").args(["-c", "command -v python3"]).output().expect("sh");
    let python = String::from_utf8_lossy(&python.stdout).trim().to_string();
    assert!(!python.is_empty(), "python3 is needed (apt-get install python3)");
    // Long enough (about 15 s alone here) that no worker ends before the
    // second move, even on a loaded machine.
    let n = 3_000_000u64;
    let native = format!("started\nexit codes [0, 0]\nsum {} [{q}, {q}, {q}, {q}]\n", 3 * n, q = 3 * n / 4);
    let n = &n.to_string();
    let mut p = c.om_exec(1, std::path::Path::new(&python), &[script.to_str().expect("path"), n], "mp.out");
    wait_lines(&c.path("mp.out"), 1, T);
    let parent = p.id();
    let gang: Vec<u32> = c
        .ps(1)
        .as_array()
        .and_then(|a| a.iter().find(|x| x["pid"] == parent).cloned())
        .and_then(|x| x["gang"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|g| g.as_u64().map(|g| g as u32))
        .collect();
    assert_eq!(gang.len(), 2, "the two workers are the parent's gang\n{}", c.logs());
    c.migrate(1, parent, "2").unwrap_or_else(|e| panic!("to 2: {e}\n{}", c.logs()));
    for &w in &gang {
        assert_eq!(c.where_is(1, w), Some(2), "worker {w} did not move with the parent\n{}", c.logs());
    }
    std::thread::sleep(Duration::from_millis(500));
    c.migrate(1, parent, "3").unwrap_or_else(|e| panic!("to 3: {e}\n{}", c.logs()));
    let st = wait_child(&mut p, T);
    assert!(st.success(), "{st:?}\n{}", c.logs());
    let got = std::fs::read_to_string(c.path("mp.out")).expect("output");
    assert_eq!(got, native, "{}", c.logs());
}
