//! End-to-end: real omd daemons, real programs, real migrations.

use om_tests::{bin, wait_child, wait_lines, Cluster};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// Check the counter fixture's output: no skipped or repeated counter, one
/// pid throughout, every checksum equal to the expected one.
fn check_counter(lines: &[String], pid: u32) {
    let mut prev: Option<u64> = None;
    for l in lines {
        let f: Vec<u64> = l.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        assert_eq!(f.len(), 4, "bad line {l:?}");
        if let Some(p) = prev {
            assert_eq!(f[0], p + 1, "counter skipped or repeated at {l:?}");
        }
        prev = Some(f[0]);
        assert_eq!(f[1], pid as u64, "getpid changed: {l:?}");
        assert_eq!(f[2], f[3], "checksum wrong (memory corrupted): {l:?}");
    }
}

#[test]
fn counter_with_64mib_moves_to_2_then_3_then_home() {
    let c = Cluster::start(3);
    let mut p = c.om_exec(1, &bin("counter"), &["64", "70", "100"], "counter.out");
    let pid = p.id();
    wait_lines(&c.path("counter.out"), 5, T);
    c.migrate(1, pid, "2").unwrap_or_else(|e| panic!("migrate to 2: {e}\n{}", c.logs()));
    assert_eq!(c.where_is(1, pid), Some(2));
    let n = wait_lines(&c.path("counter.out"), 1, T).len();
    wait_lines(&c.path("counter.out"), n + 5, T);
    c.migrate(1, pid, "3").unwrap_or_else(|e| panic!("migrate to 3: {e}\n{}", c.logs()));
    assert_eq!(c.where_is(1, pid), Some(3));
    let n = wait_lines(&c.path("counter.out"), 1, T).len();
    wait_lines(&c.path("counter.out"), n + 5, T);
    c.migrate(1, pid, "home").unwrap_or_else(|e| panic!("migrate home: {e}\n{}", c.logs()));
    assert_eq!(c.where_is(1, pid), Some(1));
    let st = wait_child(&mut p, T);
    assert!(st.success(), "counter ended with {st:?}\n{}", c.logs());
    let lines = wait_lines(&c.path("counter.out"), 70, T);
    assert_eq!(lines.len(), 70);
    check_counter(&lines, pid);
    // 2 -> 3 went straight across, not through home.
    assert!(c.log(1).contains("moved between nodes"), "{}", c.log(1));
    assert_eq!(c.log(1).matches("running at home again").count(), 1, "{}", c.log(1));
}

/// A move between two remote nodes to a node that is down fails with a clear
/// error and the process runs on where it was.
#[test]
fn a_failed_move_between_nodes_leaves_the_process_where_it_was() {
    let mut c = Cluster::start(3);
    let mut p = c.om_exec(1, &bin("counter"), &["16", "60", "50"], "m.out");
    let pid = p.id();
    wait_lines(&c.path("m.out"), 3, T);
    c.migrate(1, pid, "2").unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    c.kill_node(3);
    let e = c.migrate(1, pid, "3").expect_err("node 3 is down");
    assert!(e.contains("node 3") && e.contains("unreachable"), "{e}");
    assert_eq!(c.where_is(1, pid), Some(2));
    assert!(wait_child(&mut p, T).success(), "{}", c.logs());
    check_counter(&wait_lines(&c.path("m.out"), 60, T), pid);
}

#[test]
fn file_offset_survives_migrations() {
    let c = Cluster::start(3);
    let f = c.path("appended.txt");
    let fs = f.to_str().expect("path");
    let mut p = c.om_exec(1, &bin("filewriter"), &[fs, "40", "50"], "fw.out");
    std::thread::sleep(Duration::from_millis(300));
    c.migrate(1, p.id(), "2").unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    std::thread::sleep(Duration::from_millis(400));
    c.migrate(1, p.id(), "3").unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    std::thread::sleep(Duration::from_millis(400));
    c.migrate(1, p.id(), "home").unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    assert!(wait_child(&mut p, T).success());
    let want: String = (0..40).map(|i| format!("line {i}\n")).collect();
    assert_eq!(std::fs::read_to_string(&f).expect("file"), want);
}

#[test]
fn stdin_pipe_is_read_completely_while_away() {
    let c = Cluster::start(2);
    let mut p = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "i=1; while [ $i -le 40 ]; do echo $i; i=$((i+1)); sleep 0.03; done | exec {} -- {} > {}",
            bin("om-exec").display(),
            bin("stdinsum").display(),
            c.path("sum.out").display()
        ))
        .env("OM_SOCKET", c.socket(1))
        .spawn()
        .expect("sh");
    // The pipeline's last command is the om process.
    std::thread::sleep(Duration::from_millis(300));
    let pid =
        c.ps(1).as_array().and_then(|a| a.first().cloned()).expect("registered")["pid"].as_u64().expect("pid") as u32;
    c.migrate(1, pid, "2").unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    assert!(wait_child(&mut p, T).success());
    let lines = wait_lines(&c.path("sum.out"), 41, T);
    assert_eq!(lines.last().map(String::as_str), Some("done 40 820"));
}

#[test]
fn closing_a_pipe_remotely_gives_eof_at_home() {
    let c = Cluster::start(2);
    let mut p = Command::new(bin("om-exec"))
        .env("OM_SOCKET", c.socket(1))
        .args(["--", bin("pipecloser").to_str().expect("path"), "6", "4", "100"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("om-exec");
    let pid = p.id();
    let mut out = p.stdout.take().expect("pipe");
    std::thread::sleep(Duration::from_millis(250));
    c.migrate(1, pid, "2").unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let mut text = String::new();
    std::io::Read::read_to_string(&mut out, &mut text).expect("read to EOF");
    // EOF came while the process still runs on node 2.
    assert!(p.try_wait().expect("try_wait").is_none(), "process ended before EOF was seen");
    assert_eq!(c.where_is(1, pid), Some(2));
    assert_eq!(text.lines().count(), 6);
    assert!(wait_child(&mut p, T).success());
}

/// A shell runs `om-exec PROG` and reports `$?`, the same as without om.
fn shell_status(c: Option<&Cluster>, args: &str, migrate_to: Option<&str>) -> String {
    let prog = bin("sigcatch");
    let cmd = match c {
        Some(c) => format!(
            "OM_SOCKET={} {} -- {} {args} >/dev/null; echo status=$?",
            c.socket(1).display(),
            bin("om-exec").display(),
            prog.display()
        ),
        None => format!("{} {args} >/dev/null; echo status=$?", prog.display()),
    };
    let child = Command::new("sh").arg("-c").arg(cmd).stdout(std::process::Stdio::piped()).spawn().expect("sh");
    if let (Some(c), Some(to)) = (c, migrate_to) {
        std::thread::sleep(Duration::from_millis(300));
        let pid = c.ps(1).as_array().and_then(|a| a.first().cloned()).expect("registered")["pid"].as_u64().expect("pid")
            as u32;
        c.migrate(1, pid, to).unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    }
    let o = child.wait_with_output().expect("sh");
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
fn exit_status_and_sigsegv_are_seen_by_the_parent_shell_as_without_om() {
    let c = Cluster::start(2);
    assert_eq!(shell_status(None, "10 exit:7", None), "status=7");
    assert_eq!(shell_status(Some(&c), "10 exit:7", Some("2")), "status=7");
    let native = shell_status(None, "10 segv", None);
    assert_eq!(native, "status=139");
    assert_eq!(shell_status(Some(&c), "10 segv", Some("2")), native);
}

#[test]
fn sigusr1_to_the_home_pid_runs_the_handler_remotely() {
    let c = Cluster::start(2);
    let mut p = c.om_exec(1, &bin("sigcatch"), &["30", "exit:0", "100"], "sig.out");
    std::thread::sleep(Duration::from_millis(300));
    c.migrate(1, p.id(), "2").unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: signalling the test's own child.
    unsafe { libc::kill(p.id() as i32, libc::SIGUSR1) };
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(c.where_is(1, p.id()), Some(2));
    assert!(wait_child(&mut p, T).success());
    let out = std::fs::read_to_string(c.path("sig.out")).expect("out");
    assert!(out.contains("usr1 1"), "handler did not run: {out}");
    assert!(out.contains("tick 29"));
}

#[test]
fn sigkill_to_the_home_pid_kills_the_migrated_process() {
    let c = Cluster::start(2);
    let mut p = c.om_exec(1, &bin("sigcatch"), &["300", "exit:0", "100"], "kill.out");
    std::thread::sleep(Duration::from_millis(300));
    c.migrate(1, p.id(), "2").unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    p.kill().expect("kill");
    let st = wait_child(&mut p, T);
    assert_eq!(st.signal(), Some(libc::SIGKILL));
    // Nothing of it is left on node 2.
    std::thread::sleep(Duration::from_millis(300));
    let left = Command::new("pgrep").args(["-x", "sigcatch"]).output().expect("pgrep");
    assert!(String::from_utf8_lossy(&left.stdout).trim().is_empty(), "guest left behind");
}

#[test]
fn cpython_interpreter_migrates_mid_loop_and_finishes() {
    let c = Cluster::start(3);
    let script = c.path("loop.py");
    std::fs::write(&script, "import time\ntotal = 0\nfor i in range(40):\n    total += i * i\n    print(i, total, flush=True)\n    time.sleep(0.05)\nprint('done', total)\n").expect("script");
    let python = which("python3");
    let mut p = c.om_exec(1, &python, &[script.to_str().expect("path")], "py.out");
    wait_lines(&c.path("py.out"), 5, T);
    c.migrate(1, p.id(), "2").unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    std::thread::sleep(Duration::from_millis(400));
    c.migrate(1, p.id(), "3").unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    assert!(wait_child(&mut p, T).success(), "{}", c.logs());
    let lines = wait_lines(&c.path("py.out"), 41, T);
    for (i, l) in lines[..40].iter().enumerate() {
        let total: u64 = (0..=i as u64).map(|k| k * k).sum();
        assert_eq!(l, &format!("{i} {total}"));
    }
    assert_eq!(lines[40], "done 20540");
}

#[test]
fn a_shell_that_forks_while_away_goes_home_and_finishes() {
    let c = Cluster::start(2);
    let mut p = c.om_exec(
        1,
        Path::new("/bin/sh"),
        &["-c", "i=0; while [ $i -lt 12 ]; do i=$((i+1)); echo n $i; sleep 0.1; done; exit 3"],
        "sh.out",
    );
    std::thread::sleep(Duration::from_millis(350));
    c.migrate(1, p.id(), "2").unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let st = wait_child(&mut p, T);
    assert_eq!(st.code(), Some(3));
    let want: String = (1..=12).map(|i| format!("n {i}\n")).collect();
    assert_eq!(std::fs::read_to_string(c.path("sh.out")).expect("out"), want);
}

#[test]
fn killing_the_destination_mid_migration_leaves_the_process_running_at_home() {
    let mut c = Cluster::start(2);
    let mut p = c.om_exec(1, &bin("counter"), &["256", "40", "100"], "big.out");
    let pid = p.id();
    wait_lines(&c.path("big.out"), 3, T);
    let omd2 = c.node_pid(2).expect("omd 2");
    // Kill node 2's omd as soon as it has created the guest process.
    let killer = std::thread::spawn(move || {
        let t0 = std::time::Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            let kids = std::fs::read_to_string(format!("/proc/{omd2}/task/{omd2}/children")).unwrap_or_default();
            let any = std::fs::read_dir(format!("/proc/{omd2}/task")).map(|d| {
                d.flatten()
                    .any(|t| !std::fs::read_to_string(t.path().join("children")).unwrap_or_default().trim().is_empty())
            });
            if !kids.trim().is_empty() || any.unwrap_or(false) {
                // SAFETY: killing the daemon this test started.
                unsafe { libc::kill(omd2 as i32, libc::SIGKILL) };
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    });
    let r = c.migrate(1, pid, "2");
    assert!(killer.join().expect("killer"), "node 2 never started the guest");
    c.kill_node(2);
    assert!(r.is_err(), "migration claimed success though node 2 died");
    assert_eq!(c.where_is(1, pid), Some(1));
    assert!(wait_child(&mut p, T).success());
    check_counter(&wait_lines(&c.path("big.out"), 40, T), pid);
}

fn which(p: &str) -> std::path::PathBuf {
    let o = Command::new("sh").arg("-c").arg(format!("command -v {p}")).output().expect("sh");
    let s = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert!(!s.is_empty(), "{p} is not installed; the CPython test needs it (apt-get install python3)");
    std::path::PathBuf::from(s)
}

use std::path::Path;

/// A signal that arrives while the migrated process is blocked in a read
/// served at home runs its handler there and then, like natively, restarts the
/// read (SA_RESTART) or makes it fail with EINTR.
#[test]
fn signal_during_a_blocking_forwarded_read_restarts_or_interrupts_it() {
    for (mode, want) in [("restart", "read 6 usr1=2"), ("norestart", "eintr usr1=1")] {
        let c = Cluster::start(2);
        let mut p = Command::new(bin("om-exec"))
            .env("OM_SOCKET", c.socket(1))
            .args(["--", bin("readwait").to_str().expect("path"), mode])
            .stdin(std::process::Stdio::piped())
            .stdout(std::fs::File::create(c.path("rw.out")).expect("out"))
            .spawn()
            .expect("om-exec");
        wait_lines(&c.path("rw.out"), 1, T);
        c.migrate(1, p.id(), "2").unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
        std::thread::sleep(Duration::from_millis(200));
        // SAFETY: signalling the test's own child.
        unsafe { libc::kill(p.id() as i32, libc::SIGUSR1) };
        std::thread::sleep(Duration::from_millis(300));
        if mode == "restart" {
            // SAFETY: as above.
            unsafe { libc::kill(p.id() as i32, libc::SIGUSR1) };
            std::thread::sleep(Duration::from_millis(300));
            assert_eq!(
                c.where_is(1, p.id()),
                Some(2),
                "the read must still wait, away\n{}\n{:?}",
                c.logs(),
                std::fs::read_to_string(c.path("rw.out"))
            );
            std::io::Write::write_all(p.stdin.as_mut().expect("stdin"), b"hello\n").expect("write");
        }
        assert!(wait_child(&mut p, T).success());
        let lines = wait_lines(&c.path("rw.out"), 2, T);
        assert_eq!(lines[1], want, "mode {mode}\n{}", c.logs());
    }
}

/// Children, and daemons that double-forked away from their parent, of a
/// process started with om-exec are under om and can migrate.
#[test]
fn descendants_and_double_forked_daemons_are_under_om_and_migrate() {
    let c = Cluster::start(2);
    let counter = bin("counter");
    let script = format!(
        "( setsid {cn} 4 60 50 > {d} 2>&1 & ) ; {cn} 4 60 50 > {k}; wait",
        cn = counter.display(),
        d = c.path("daemon.out").display(),
        k = c.path("child.out").display()
    );
    let mut sh = c.om_exec(1, Path::new("/bin/sh"), &["-c", &script], "sh.out");
    wait_lines(&c.path("child.out"), 3, T);
    wait_lines(&c.path("daemon.out"), 3, T);
    let ps = c.ps(1);
    let counters: Vec<u32> = ps
        .as_array()
        .expect("array")
        .iter()
        .filter(|p| p["cmd"].as_str().unwrap_or("").starts_with("counter "))
        .map(|p| p["pid"].as_u64().expect("pid") as u32)
        .collect();
    assert_eq!(counters.len(), 2, "both the child and the daemon are under om: {ps}");
    let sh_pid = sh.id() as i32;
    let daemon = *counters
        .iter()
        .find(|&&p| om_runtime_ppid(p) != sh_pid)
        .unwrap_or_else(|| panic!("no reparented daemon among {counters:?}"));
    for &p in &counters {
        c.migrate(1, p, "2").unwrap_or_else(|e| panic!("migrating {p}: {e}\n{}", c.logs()));
        assert_eq!(c.where_is(1, p), Some(2));
    }
    assert!(wait_child(&mut sh, T).success());
    for (f, pid) in
        [("child.out", counters.iter().copied().find(|&p| p != daemon).expect("child")), ("daemon.out", daemon)]
    {
        check_counter(&wait_lines(&c.path(f), 60, T), pid);
    }
}

fn om_runtime_ppid(pid: u32) -> i32 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    s.rsplit(')').next().and_then(|r| r.split_whitespace().nth(1)).and_then(|x| x.parse().ok()).unwrap_or(0)
}

/// Large reads and writes served at home while away are byte-exact (bulk
/// data frames in both directions).
#[test]
fn bulk_reads_and_writes_while_away_are_byte_exact() {
    let c = Cluster::start(2);
    let src = c.path("src.bin");
    let mut data = vec![0u8; 24 << 20];
    let mut x: u64 = 0x1234_5678_9abc_def1;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(&src, &data).expect("src");
    let dst = c.path("dst.bin");
    let script = c.path("copy.py");
    std::fs::write(
        &script,
        format!(
            "import sys, time\nsys.stdout.write('ready\\n'); sys.stdout.flush()\ntime.sleep(3)\n\
             with open('{}', 'rb') as i, open('{}', 'wb') as o:\n    while True:\n        b = i.read(1 << 20)\n        if not b:\n            break\n        o.write(b)\nprint('copied')\n",
            src.display(),
            dst.display()
        ),
    )
    .expect("script");
    let mut p = c.om_exec(1, &which("python3"), &[script.to_str().expect("path")], "copy.out");
    wait_lines(&c.path("copy.out"), 1, T);
    c.migrate(1, p.id(), "2").unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    assert!(wait_child(&mut p, T).success(), "{}", c.logs());
    assert_eq!(wait_lines(&c.path("copy.out"), 2, T)[1], "copied");
    let got = std::fs::read(&dst).expect("dst");
    assert!(got == data, "copy differs ({} bytes of {})", got.len(), data.len());
}

/// Memory that changes quickly while it is pre-copied arrives intact: every
/// page changed after it was sent travels again at the freeze.
#[test]
fn memory_changing_during_precopy_arrives_intact() {
    let c = Cluster::start(2);
    let mut p = c.om_exec(1, &bin("counter"), &["16", "600", "1"], "fast.out");
    let pid = p.id();
    wait_lines(&c.path("fast.out"), 50, T);
    c.migrate(1, pid, "2").unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    std::thread::sleep(Duration::from_millis(300));
    c.migrate(1, pid, "home").unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    std::thread::sleep(Duration::from_millis(100));
    c.migrate(1, pid, "2").unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    assert!(wait_child(&mut p, T).success(), "{}", c.logs());
    check_counter(&wait_lines(&c.path("fast.out"), 600, T), pid);
    assert!(c.log(1).contains("resent_bytes"), "no pre-copy happened");
    // Its writes were tracked both ways (else the freeze falls back to
    // comparing hashes of every page).
    assert!(c.log(1).contains("tracked=true"), "writes not tracked at home\n{}", c.logs());
    assert!(c.log(2).contains("tracked=true"), "writes not tracked on node 2\n{}", c.logs());
}

/// The `at_ns` of every log line with `what` in it.
fn logged_at(log: &str, what: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains(what))
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("at_ns=")).and_then(|v| v.parse().ok()))
        .collect()
}

/// While a process's memory is copied from a node (home, or on to another
/// node), it goes on running and its forwarded writes go on completing:
/// a write starts and returns (the next reading follows it) inside the
/// pre-copy, moving 2 -> 3 and 3 -> home. (Before, the first write waited
/// for the whole copy.)
#[test]
fn forwarded_writes_during_a_precopy_from_a_node_do_not_wait_for_it() {
    let c = Cluster::start(3);
    let mut p = c.om_exec(1, &bin("pausewriter"), &["64", "0", "15", "ticks"], "pw.out");
    let pid = p.id();
    wait_lines(&c.path("pw.out"), 1, T);
    for (from, to) in [(2u32, "2"), (2, "3"), (3, "home")] {
        c.migrate(1, pid, to).unwrap_or_else(|e| panic!("to {to}: {e}\n{}", c.logs()));
        if to == "2" {
            std::thread::sleep(Duration::from_millis(300));
            continue;
        }
        let log = c.log(from);
        let (start, end) =
            match (logged_at(&log, "pre-copy home started").last(), logged_at(&log, "pre-copy home laid out").last()) {
                (Some(&s), Some(&e)) => (s, e),
                _ => panic!("no pre-copy logged on node {from}\n{log}"),
            };
        let ticks: Vec<u64> = std::fs::read_to_string(c.path("pw.out"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix("tick ").and_then(|v| v.parse().ok()))
            .collect();
        let inside = ticks.windows(2).filter(|w| w[0] > start && w[1] < end).count();
        assert!(
            inside >= 1,
            "moving to {to}: no write went out and returned during the pre-copy ({} ms; ticks around it: {:?})\n{}",
            (end - start) / 1_000_000,
            ticks.iter().filter(|&&t| t + 100_000_000 > start && t < end + 100_000_000).collect::<Vec<_>>(),
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(c.where_is(1, pid), Some(1));
    assert!(wait_child(&mut p, T).success(), "{}", c.logs());
    let out = std::fs::read_to_string(c.path("pw.out")).unwrap_or_default();
    assert!(out.lines().last() == Some("done"), "{out}");
}

/// A CPython script exercising files, directories, pipes with
/// select/poll/epoll, a TCP socket to a server at home, uname, getppid and
/// isatty prints the same lines away as it does natively.
#[test]
fn forwarded_syscalls_behave_as_at_home() {
    let c = Cluster::start(2);
    let server = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = server.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for s in server.incoming().flatten() {
            let mut s = s;
            let mut b = [0u8; 5];
            if std::io::Read::read_exact(&mut s, &mut b).is_ok() {
                let _ = std::io::Write::write_all(&mut s, b"pong\n");
            }
        }
    });
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/py/syscalls.py");
    let python = which("python3");
    let run = |om: bool, dir: &Path| -> String {
        std::fs::create_dir_all(dir).expect("dir");
        let mut cmd = if om {
            let mut k = Command::new(bin("om-exec"));
            k.env("OM_SOCKET", c.socket(1)).arg("--").arg(&python);
            k
        } else {
            Command::new(&python)
        };
        let mut p = cmd
            .arg(&script)
            .arg(dir)
            .arg(port.to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python");
        let mut out = std::io::BufReader::new(p.stdout.take().expect("out"));
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).expect("ready");
        if om {
            c.migrate(1, p.id(), "2").unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
        }
        std::io::Write::write_all(p.stdin.as_mut().expect("in"), b"go\n").expect("go");
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut out, &mut rest).expect("output");
        assert!(wait_child(&mut p, T).success());
        if om {
            assert!(c.log(2).contains("guest running"), "it never ran away");
            // Everything in the script is served away: it never had to go home.
            assert!(!c.log(2).contains("going home"), "it went home:\n{}", c.log(2));
        }
        rest
    };
    let native = run(false, &c.path("native"));
    let away = run(true, &c.path("away"));
    assert!(native.ends_with("done\n"), "{native}");
    assert_eq!(away, native, "\n{}", c.logs());
}

/// Job control, as a shell does it on Ctrl-Z and `fg`: SIGTSTP to the home pid
/// of a migrated process stops it (the parent's waitpid sees it stopped by
/// SIGTSTP and it makes no progress), SIGCONT resumes it and it finishes.
#[test]
fn ctrl_z_stops_a_migrated_process_and_fg_resumes_it() {
    let c = Cluster::start(2);
    // Its own process group, as a shell's job: the stop signals TSTP/TTIN/TTOU
    // are dropped for an orphaned group (natively too), and the test
    // runner's own group may be one.
    let mut p = Command::new(bin("om-exec"))
        .env("OM_SOCKET", c.socket(1))
        .arg("--")
        .arg(bin("counter"))
        .args(["4", "60", "50"])
        .stdout(std::fs::File::create(c.path("jc.out")).expect("out"))
        .process_group(0)
        .spawn()
        .expect("om-exec");
    let pid = p.id() as i32;
    wait_lines(&c.path("jc.out"), 3, T);
    c.migrate(1, p.id(), "2").unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    // SAFETY: signalling and waiting for the test's own child.
    unsafe { libc::kill(pid, libc::SIGTSTP) };
    let mut status = 0;
    let t0 = std::time::Instant::now();
    loop {
        // SAFETY: as above.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WUNTRACED | libc::WNOHANG) };
        if r == pid {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "the parent never saw the stop\n{}", c.logs());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(libc::WIFSTOPPED(status) && libc::WSTOPSIG(status) == libc::SIGTSTP, "status {status:#x}");
    std::thread::sleep(Duration::from_millis(200));
    let n = wait_lines(&c.path("jc.out"), 1, T).len();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(wait_lines(&c.path("jc.out"), 1, T).len(), n, "it kept running while stopped");
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert!(wait_child(&mut p, T).success(), "{}", c.logs());
    check_counter(&wait_lines(&c.path("jc.out"), 60, T), pid as u32);
    assert_eq!(c.where_is(1, pid as u32), None, "finished processes leave the table");
}

/// On a real terminal: terminal ioctls answer as at home while away, and
/// Ctrl-C typed on the terminal kills the migrated process by SIGINT, as it
/// would natively (CPython re-raises SIGINT after KeyboardInterrupt).
#[test]
fn a_terminal_works_while_away_and_ctrl_c_reaches_the_process() {
    use std::io::Write;
    use std::os::unix::process::CommandExt;
    let c = Cluster::start(2);
    let script = c.path("tty.py");
    std::fs::write(
        &script,
        "import os, sys, termios, time\nprint('tty', os.isatty(0), os.isatty(1), flush=True)\nsys.stdin.readline()\n\
         print('away', os.isatty(0), bool(termios.tcgetattr(0)[3] & termios.ICANON), os.get_terminal_size(1).columns, flush=True)\n\
         while True:\n    time.sleep(0.1)\n",
    )
    .expect("script");
    let (master, slave) = om_tests::sys::openpty().expect("pty");
    let slave = std::fs::File::from(slave);
    let mut cmd = Command::new(bin("om-exec"));
    cmd.env("OM_SOCKET", c.socket(1))
        .arg("--")
        .arg(which("python3"))
        .arg(&script)
        .stdin(slave.try_clone().expect("tty"))
        .stdout(slave.try_clone().expect("tty"))
        .stderr(slave);
    // SAFETY: the closure only makes async-signal-safe calls.
    unsafe { cmd.pre_exec(om_tests::sys::make_controlling_tty) };
    let mut p = cmd.spawn().expect("om-exec on a tty");
    let mut term = std::fs::File::from(master);
    let mut w = term.try_clone().expect("tty writer");
    let mut seen = String::new();
    let mut read_until = |want: &str, seen: &mut String| om_tests::read_until(&mut term, want, seen, T);
    read_until("tty True True", &mut seen);
    c.migrate(1, p.id(), "2").unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    w.write_all(b"go\n").expect("type");
    read_until("away True True 80", &mut seen);
    assert_eq!(c.where_is(1, p.id()), Some(2), "it went home:\n{}", c.log(2));
    w.write_all(&[3]).expect("Ctrl-C");
    let st = wait_child(&mut p, T);
    assert_eq!(st.signal(), Some(libc::SIGINT), "{st:?}\n{seen}");
}

/// Shared anonymous memory created while away is made there, and moves
/// home with the process when it forks, so the child really shares it
/// (CPython's anonymous mmap is MAP_SHARED).
#[test]
fn shared_anonymous_memory_made_away_is_shared_with_a_later_child() {
    use std::io::{BufRead, Write};
    let c = Cluster::start(2);
    let script = c.path("shm.py");
    std::fs::write(
        &script,
        "import mmap, os, sys\nprint('ready', flush=True)\nsys.stdin.readline()\nm = mmap.mmap(-1, 4096)\n\
         pid = os.fork()\nif pid == 0:\n    m[:5] = b'child'\n    os._exit(0)\nos.waitpid(pid, 0)\nprint(bytes(m[:5]).decode(), flush=True)\n",
    )
    .expect("script");
    let mut p = Command::new(bin("om-exec"))
        .env("OM_SOCKET", c.socket(1))
        .arg("--")
        .arg(which("python3"))
        .arg(&script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("om-exec");
    let mut out = std::io::BufReader::new(p.stdout.take().expect("out"));
    let mut line = String::new();
    out.read_line(&mut line).expect("ready");
    c.migrate(1, p.id(), "2").unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    p.stdin.as_mut().expect("in").write_all(b"go\n").expect("go");
    line.clear();
    out.read_line(&mut line).expect("result");
    assert_eq!(line.trim(), "child");
    assert!(wait_child(&mut p, T).success());
    let log = c.log(2);
    assert!(!log.contains("shared anonymous memory lives at home"), "{log}");
    assert!(log.contains("clone runs at home"), "it did not fork away:\n{log}");
}

/// An interval timer armed at home moves with the process and fires once,
/// away (not also at home).
#[test]
fn an_alarm_armed_at_home_fires_once_away() {
    let c = Cluster::start(2);
    let script = c.path("alarm.py");
    std::fs::write(
        &script,
        "import signal, time\nn = 0\ndef h(s, f):\n    global n\n    n += 1\nsignal.signal(signal.SIGALRM, h)\n\
         signal.setitimer(signal.ITIMER_REAL, 1.5)\nprint('armed', flush=True)\nt0 = time.time()\n\
         while time.time() - t0 < 3.5:\n    time.sleep(0.05)\nprint('alarms', n, flush=True)\n",
    )
    .expect("script");
    let mut p = c.om_exec(1, &which("python3"), &[script.to_str().expect("path")], "alarm.out");
    wait_lines(&c.path("alarm.out"), 1, T);
    c.migrate(1, p.id(), "2").unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    assert!(wait_child(&mut p, T).success());
    assert_eq!(wait_lines(&c.path("alarm.out"), 2, T)[1], "alarms 1");
    assert!(!c.log(2).contains("going home"), "it went home:\n{}", c.log(2));
}

/// In an orphaned process group the kernel drops SIGTSTP for a process that
/// does not handle it; away it is dropped the same way: the process neither
/// stops nor hangs, and finishes.
#[test]
fn ctrl_z_in_an_orphaned_group_is_dropped_as_natively() {
    let c = Cluster::start(2);
    // setsid(1) execs in place: a session and group of its own whose parent
    // (this test) is in another session, so the group is orphaned.
    let mut p = Command::new("setsid")
        .arg(bin("om-exec"))
        .env("OM_SOCKET", c.socket(1))
        .arg("--")
        .arg(bin("counter"))
        .args(["4", "40", "50"])
        .stdout(std::fs::File::create(c.path("orph.out")).expect("out"))
        .spawn()
        .expect("setsid");
    let pid = p.id() as i32;
    wait_lines(&c.path("orph.out"), 3, T);
    assert!(om_runtime::procfs::pgrp_orphaned(pid), "the test could not make an orphaned group");
    c.migrate(1, p.id(), "2").unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    // SAFETY: signalling the test's own child.
    unsafe { libc::kill(pid, libc::SIGTSTP) };
    let st = wait_child(&mut p, T);
    assert!(st.success(), "{st:?}\n{}", c.logs());
    check_counter(&wait_lines(&c.path("orph.out"), 40, T), pid as u32);
}

/// A program that an ordinary user may execute but not read (mode 0111):
/// it moves out and comes home (omd opens the file for the placeholder,
/// which may not), with its output and exit status intact.
#[test]
fn an_execute_only_program_of_an_ordinary_user_moves_out_and_back() {
    use std::os::unix::fs::PermissionsExt;
    let c = Cluster::start(3);
    let open_dir = om_tests::OpenDir::with("xonly", &["om-exec", "counter"]);
    std::fs::set_permissions(open_dir.path("counter"), PermissionsExt::from_mode(0o111)).expect("chmod 0111");
    let out = c.path("xonly.out");
    std::fs::write(&out, "").expect("out");
    std::fs::set_permissions(&out, PermissionsExt::from_mode(0o666)).expect("chmod out");
    let mut p = open_dir
        .om_exec_as(65534, c.socket(1), "counter", &["8", "200", "50"])
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::OpenOptions::new().append(true).open(&out).expect("out"))
        .stderr(std::fs::File::create(c.path("xonly.err")).expect("err"))
        .spawn()
        .expect("setpriv (util-linux) runs om-exec as nobody");
    let pid = p.id();
    wait_lines(&out, 3, T);
    for to in ["2", "3", "home"] {
        c.migrate(1, pid, to).unwrap_or_else(|e| panic!("migrate to {to}: {e}\n{}", c.logs()));
        let n = wait_lines(&out, 1, T).len();
        wait_lines(&out, n + 3, T);
    }
    assert_eq!(c.where_is(1, pid), Some(1), "{}", c.logs());
    let st = wait_child(&mut p, T);
    assert!(st.success(), "counter ended with {st:?}\n{}", c.logs());
    check_counter(&wait_lines(&out, 200, T), pid);
}

/// The pid of the deputy process of `pid` (named `omdep-PID`).
fn deputy_of(pid: u32) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let d: u32 = e.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(format!("/proc/{d}/comm")).ok()?;
        (comm.trim() == format!("omdep-{pid}")).then_some(d)
    })
}

/// Each migrated process has a deputy process of its own, running with the
/// process's credentials: killing one ends only its process (its parent sees
/// SIGKILL, as if the host had died); another process of the same home goes on,
/// and omd keeps running.
#[test]
fn killing_one_deputy_ends_only_its_process() {
    let c = Cluster::start(2);
    let mut a = c.om_exec(1, &bin("counter"), &["8", "80", "50"], "a.out");
    let mut b = c.om_exec(1, &bin("counter"), &["8", "80", "50"], "b.out");
    wait_lines(&c.path("a.out"), 3, T);
    wait_lines(&c.path("b.out"), 3, T);
    for p in [&a, &b] {
        c.migrate(1, p.id(), "2").unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    }
    let (da, db) = (deputy_of(a.id()), deputy_of(b.id()));
    let (Some(da), Some(db)) = (da, db) else { panic!("no deputy processes (omdep-PID) found\n{}", c.logs()) };
    assert_ne!(da, db);
    let omd1 = c.node_pid(1).expect("omd 1");
    let ppid = |p: u32| om_runtime_ppid(p);
    assert_eq!(ppid(da) as u32, omd1, "the deputy is a child of omd");
    // SAFETY: signalling the deputy process under test.
    assert_eq!(unsafe { libc::kill(da as i32, libc::SIGKILL) }, 0);
    let st = wait_child(&mut a, T);
    assert_eq!(st.signal(), Some(libc::SIGKILL), "process A ended with {st:?}\n{}", c.logs());
    assert!(c.log(1).contains("deputy"), "{}", c.log(1));
    let st = wait_child(&mut b, T);
    assert!(st.success(), "process B ended with {st:?}\n{}", c.logs());
    check_counter(&wait_lines(&c.path("b.out"), 80, T), b.id());
    assert!(std::path::Path::new(&format!("/proc/{omd1}")).exists(), "omd of node 1 died\n{}", c.logs());
    assert!(c.ps(1).as_array().is_some());
}

/// The node a process moves to dies while home relays the move: the old
/// node's stream is read to its end before it rolls back, so the process runs
/// on where it was, its calls served as before, with exact output.
#[test]
fn a_destination_dying_mid_relay_leaves_the_process_where_it_was() {
    let mut c = Cluster::start(3);
    let mut p = c.om_exec(1, &bin("counter"), &["64", "200", "60"], "r.out");
    let pid = p.id();
    wait_lines(&c.path("r.out"), 3, T);
    c.migrate(1, pid, "2").unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let sock = c.socket(1).to_path_buf();
    let mover = std::thread::spawn(move || {
        Command::new(bin("omctl")).env("OM_SOCKET", sock).args(["migrate", &pid.to_string(), "3"]).output()
    });
    // Kill node 3 once the relay has started (its log shows the pre-copy arriving).
    let t0 = std::time::Instant::now();
    while !c.log(3).contains("home_pid") {
        assert!(t0.elapsed() < T, "the move to node 3 never started\n{}", c.logs());
        std::thread::sleep(Duration::from_millis(2));
    }
    c.kill_node(3);
    let o = mover.join().expect("omctl").expect("omctl runs");
    assert!(!o.status.success(), "the move cannot succeed: node 3 died\n{}", c.logs());
    assert_eq!(c.where_is(1, pid), Some(2), "{}", c.logs());
    let st = wait_child(&mut p, T);
    assert!(st.success(), "counter ended with {st:?}\n{}", c.logs());
    check_counter(&wait_lines(&c.path("r.out"), 200, T), pid);
    assert!(!c.log(1).contains("unexpected message at the deputy"), "{}", c.log(1));
}

/// Coming home is a transaction: when home cannot rebuild the process (here
/// its program's mode changed while it was away, so the process may no longer
/// map it), the move home fails with the reason, the process runs on where it
/// was, and a later move home, once it can, succeeds with exact output.
#[test]
fn a_failed_return_home_leaves_the_process_running_away() {
    use std::os::unix::fs::PermissionsExt;
    let c = Cluster::start(2);
    let open_dir = om_tests::OpenDir::with("nohome", &["om-exec", "counter"]);
    let prog = open_dir.path("counter");
    std::fs::set_permissions(&prog, PermissionsExt::from_mode(0o111)).expect("chmod 0111");
    let out = c.path("nohome.out");
    std::fs::write(&out, "").expect("out");
    std::fs::set_permissions(&out, PermissionsExt::from_mode(0o666)).expect("chmod out");
    let mut p = open_dir
        .om_exec_as(65534, c.socket(1), "counter", &["8", "80", "50"])
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::OpenOptions::new().append(true).open(&out).expect("out"))
        .stderr(std::fs::File::create(c.path("nohome.err")).expect("err"))
        .spawn()
        .expect("setpriv (util-linux) runs om-exec as nobody");
    let pid = p.id();
    wait_lines(&out, 3, T);
    c.migrate(1, pid, "2").unwrap_or_else(|e| panic!("migrate to 2: {e}\n{}", c.logs()));
    // Now only root may run the program: home cannot map it for the process.
    std::fs::set_permissions(&prog, PermissionsExt::from_mode(0o100)).expect("chmod 0100");
    let e = c.migrate(1, pid, "home").expect_err("home cannot rebuild it");
    assert!(e.contains("keeps running on node 2"), "{e}\n{}", c.logs());
    assert_eq!(c.where_is(1, pid), Some(2), "{}", c.logs());
    let n = wait_lines(&out, 1, T).len();
    wait_lines(&out, n + 5, T);
    std::fs::set_permissions(&prog, PermissionsExt::from_mode(0o111)).expect("chmod 0111");
    c.migrate(1, pid, "home").unwrap_or_else(|e| panic!("migrate home: {e}\n{}", c.logs()));
    assert_eq!(c.where_is(1, pid), Some(1), "{}", c.logs());
    let st = wait_child(&mut p, T);
    assert!(st.success(), "counter ended with {st:?}\n{}", c.logs());
    check_counter(&wait_lines(&out, 80, T), pid);
}

/// kill(-1, sig) signals every process the caller may signal but itself and
/// init: away, the process's own placeholder (and its deputy) are not hit.
/// Run as a uid of its own, so nothing else is signalled; the same natively
/// and away.
#[test]
fn kill_minus_one_spares_the_process_itself_away_as_natively() {
    use std::io::{BufRead, Write};
    let c = Cluster::start(2);
    let open_dir = om_tests::OpenDir::with("killall", &["om-exec", "killall"]);
    let run = |away: bool| -> Vec<String> {
        let mut p = open_dir
            .om_exec_as(4000123, c.socket(1), "killall", &[])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(c.path("killall.err")).expect("err"))
            .spawn()
            .expect("setpriv (util-linux) runs om-exec as uid 4000123");
        let mut out = std::io::BufReader::new(p.stdout.take().expect("out"));
        let mut line = String::new();
        out.read_line(&mut line).expect("ready");
        assert_eq!(line.trim(), "ready", "{}", std::fs::read_to_string(c.path("killall.err")).unwrap_or_default());
        if away {
            c.migrate(1, p.id(), "2").unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
        }
        p.stdin.as_mut().expect("in").write_all(b"go\n").expect("go");
        let lines: Vec<String> = out.lines().map_while(Result::ok).collect();
        assert!(wait_child(&mut p, T).success(), "away={away}: {lines:?}\n{}", c.logs());
        lines
    };
    let native = run(false);
    // Natively: 0 (other users' processes count, though not signalled), and
    // never the caller itself.
    assert_eq!(native, vec!["kill -1: 0 0".to_string(), "usr1 0".to_string()]);
    assert_eq!(run(true), native, "away differs from native\n{}", c.logs());
}

/// A write to a pipe with no reader raises SIGPIPE in the writer, away as
/// natively: with the default action the process dies by SIGPIPE (its parent
/// sees it); ignored, the write fails with EPIPE.
#[test]
fn sigpipe_reaches_a_writer_away_as_natively() {
    use std::io::{BufRead, Write};
    let c = Cluster::start(2);
    let run = |mode: &str, away: bool| -> (Vec<String>, std::process::ExitStatus) {
        let (mut p, out, line) = c.om_exec_piped(1, &bin("sigpipe"), &[mode]);
        assert_eq!(line, "ready");
        if away {
            c.migrate(1, p.id(), "2").unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
        }
        p.stdin.as_mut().expect("in").write_all(b"go\n").expect("go");
        let lines: Vec<String> = out.lines().map_while(Result::ok).collect();
        (lines, wait_child(&mut p, T))
    };
    let (l, st) = run("default", false);
    assert_eq!((l.len(), st.signal()), (0, Some(libc::SIGPIPE)), "natively: {l:?} {st:?}");
    let (l, st) = run("default", true);
    assert_eq!((l.len(), st.signal()), (0, Some(libc::SIGPIPE)), "away: {l:?} {st:?}\n{}", c.logs());
    let (native, st) = run("ignore", false);
    assert!(st.success());
    assert_eq!(native, vec![format!("write: -1 {}", libc::EPIPE)]);
    let (away, st) = run("ignore", true);
    assert!(st.success(), "{st:?}\n{}", c.logs());
    assert_eq!(away, native);
}

/// Small writes to a pipe go behind (answered before home runs them), yet a
/// process that exits right after them loses none: home gets every byte,
/// in order, before the exit status.
#[test]
fn small_writes_just_before_an_exit_all_arrive() {
    use std::io::{Read, Write};
    let c = Cluster::start(2);
    for (kib, chunk) in [(4096usize, 512usize), (1024, 8192)] {
        let (mut p, mut out, line) =
            c.om_exec_piped(1, &bin("sysbench"), &["out", &kib.to_string(), &chunk.to_string(), "7"]);
        assert_eq!(line, "ready");
        c.migrate(1, p.id(), "2").unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
        p.stdin.as_mut().expect("in").write_all(b"go\n").expect("go");
        let mut got = Vec::new();
        out.read_to_end(&mut got).expect("output");
        let st = wait_child(&mut p, T);
        assert_eq!(st.code(), Some(7), "{st:?}\n{}", c.logs());
        assert_eq!(got.len(), kib << 10, "bytes written in {chunk}-byte writes");
        let first_bad = got.iter().enumerate().position(|(i, b)| *b != ((i.wrapping_mul(31) ^ (i >> 10)) as u8));
        assert_eq!(first_bad, None, "the output differs from the pattern");
    }
}

/// An ordinary user's resource limits read the same away and after moves as
/// at home (stack 8 MiB and core 0 read as unlimited away before: omd could
/// not read another user's limits with prlimit).
#[test]
fn resource_limits_of_an_ordinary_user_are_the_same_away_and_back() {
    use std::io::{BufRead, Write};
    let c = Cluster::start(3);
    let open_dir = om_tests::OpenDir::with("limits", &["om-exec", "limits"]);
    let mut p = open_dir
        .om_exec_as(65534, c.socket(1), "limits", &[])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("setpriv (util-linux) runs om-exec as nobody");
    let pid = p.id();
    let mut out = std::io::BufReader::new(p.stdout.take().expect("out"));
    let mut ready = String::new();
    out.read_line(&mut ready).expect("ready");
    assert_eq!(ready.trim(), "ready");
    let mut ask = |what: &str| -> String {
        p.stdin.as_mut().expect("in").write_all(b"?\n").expect("ask");
        let mut l = String::new();
        out.read_line(&mut l).unwrap_or_else(|e| panic!("{what}: {e}"));
        l.trim().to_string()
    };
    let home = ask("at home");
    assert!(home.starts_with("stack 8388608 ") && home.contains("core 0 "), "{home}");
    c.migrate(1, pid, "2").unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    assert_eq!(ask("away on node 2"), home, "away on node 2\n{}", c.logs());
    c.migrate(1, pid, "3").unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    assert_eq!(ask("away on node 3"), home, "away on node 3");
    c.migrate(1, pid, "home").unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    assert_eq!(ask("back home"), home, "back home");
    drop(p.stdin.take());
    assert!(wait_child(&mut p, T).success());
}

/// A process that ends while it is being brought home is reported as it
/// ended, and its parent sees that at once. Before, a guest that ended during
/// a return home was never reported: the parent waited forever. The guest is
/// killed on its node (as if it ended by itself) at several moments of the
/// return, or of a move straight across: during the pre-copy and around the
/// freeze.
#[test]
fn a_process_that_ends_while_coming_home_is_reported_as_it_ended() {
    let c = Cluster::start(3);
    let rounds = [("home", 0u64), ("home", 30), ("home", 120), ("home", 250), ("3", 0), ("3", 60), ("3", 200)];
    for (round, (to, delay_ms)) in rounds.into_iter().enumerate() {
        let mut p = Command::new(bin("om-exec"))
            .env("OM_SOCKET", c.socket(1))
            .args([bin("spin").to_str().expect("path"), "100000", "0", "32"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("om-exec");
        let pid = p.id();
        while c.where_is(1, pid).is_none() {
            std::thread::sleep(Duration::from_millis(5));
        }
        c.migrate(1, pid, "2").unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
        // Node 2 logs the guest just after home hears it runs: wait for the line.
        let find = || -> Option<i32> {
            c.log(2)
                .lines()
                .filter(|l| l.contains(&format!("home_pid={pid} ")) && l.contains("guest running guest="))
                .find_map(|l| l.split("guest=").nth(1)?.split_whitespace().next()?.parse().ok())
        };
        let t0 = std::time::Instant::now();
        let guest = loop {
            if let Some(g) = find() {
                break g;
            }
            assert!(t0.elapsed() < T, "no guest for {pid}\n{}", c.logs());
            std::thread::sleep(Duration::from_millis(5));
        };
        let home = {
            let sock = c.socket(1).to_path_buf();
            std::thread::spawn(move || {
                Command::new(bin("omctl")).env("OM_SOCKET", sock).args(["migrate", &pid.to_string(), to]).output()
            })
        };
        let going = format!("going home guest={guest} ");
        let t0 = std::time::Instant::now();
        while !c.log(2).contains(&going) {
            assert!(t0.elapsed() < T, "round {round}: never went home\n{}", c.logs());
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(delay_ms));
        // SAFETY: a plain kill of the guest process, which this test owns.
        unsafe { libc::kill(guest, libc::SIGTERM) };
        let _ = home.join();
        // Killed once the other end had its image, the process runs on
        // there: end it the same way.
        if p.try_wait().expect("wait").is_none() {
            // SAFETY: as above, for the home process.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        let status = wait_child(&mut p, Duration::from_secs(20));
        assert_eq!(status.signal(), Some(libc::SIGTERM), "round {round}: {status:?}\n{}", c.logs());
    }
}

/// Identity answers stay home's after a move straight from one node to
/// another (the image node 2 sends is captured from its guest, which runs
/// under a uid of its own).
#[test]
fn ids_read_after_a_move_across_are_home_ones() {
    use std::io::{BufRead, Write};
    let c = Cluster::start(3);
    let py = "import os, sys\nprint('ready', flush=True)\nfor line in sys.stdin:\n    print(os.getuid(), os.geteuid(), os.getgid(), os.getgroups(), os.getresuid(), os.getresgid(), os.getpgrp(), os.getsid(0), os.getppid(), flush=True)\n";
    let mut native =
        Command::new("python3").args(["-c", py]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("python3");
    native.stdin.take().expect("stdin").write_all(b"x\n").expect("line");
    let out = native.wait_with_output().expect("python").stdout;
    let want = String::from_utf8_lossy(&out).lines().nth(1).unwrap_or_default().to_string();
    let (child, out, first) = c.om_exec_piped(1, &which("python3"), &["-c", py]);
    assert_eq!(first, "ready");
    let mut p = (child, out);
    let pid = p.0.id();
    for to in ["2", "3"] {
        c.migrate(1, pid, to).unwrap_or_else(|e| panic!("to {to}: {e}\n{}", c.logs()));
        p.0.stdin.as_mut().expect("stdin").write_all(b"x\n").expect("line");
        let mut l = String::new();
        p.1.read_line(&mut l).expect("a line");
        assert_eq!(l.trim(), want, "on node {to}\n{}", c.logs());
    }
    drop(p.0.stdin.take());
    let st = wait_child(&mut p.0, Duration::from_secs(20));
    assert!(st.success(), "{st:?}");
}

/// A process that ends while a signal from home is being handed to it keeps
/// its exit status: the wait that stops it to queue the signal may be the
/// one that sees it end (it was lost once: the parent saw SIGKILL).
#[test]
fn an_exit_during_a_signal_hand_over_keeps_its_status() {
    let c = Cluster::start(2);
    // It ends 0.3 s after a line on stdin, which it is sent once away.
    let py =
        "import signal, time, os, sys\nsignal.signal(signal.SIGUSR1, lambda *a: None)\nprint('ready', flush=True)\n\
              sys.stdin.readline()\nt = time.time()\nwhile time.time() - t < 0.3: pass\nos._exit(7)\n";
    for round in 0..12 {
        let (mut p, _out, first) = c.om_exec_piped(1, &which("python3"), &["-c", py]);
        assert_eq!(first, "ready");
        let pid = p.id() as i32;
        c.migrate(1, p.id(), "2").unwrap_or_else(|e| panic!("to 2: {e}\n{}", c.logs()));
        std::io::Write::write_all(p.stdin.as_mut().expect("stdin"), b"go\n").expect("go");
        // Signals until it has ended, the last ones racing its exit.
        let st = loop {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid, libc::SIGUSR1) };
            std::thread::sleep(Duration::from_micros(300));
            if let Some(st) = p.try_wait().expect("wait") {
                break st;
            }
        };
        assert_eq!((st.code(), st.signal()), (Some(7), None), "round {round}\n{}", c.logs());
    }
}

/// `omctl ps` names a process by its program and arguments, not its path,
/// at home and away.
#[test]
fn ps_shows_the_program_name_and_its_arguments() {
    let c = Cluster::start(2);
    let mut p = c.om_exec(1, &bin("counter"), &["4", "40", "50"], "ps.out");
    wait_lines(&c.path("ps.out"), 2, Duration::from_secs(20));
    let cmd = |c: &Cluster| {
        let ps = c.ps(1);
        ps.as_array().and_then(|a| a.iter().find(|x| x["pid"] == p.id()).map(|x| x["cmd"].clone())).expect("listed")
    };
    assert_eq!(cmd(&c), "counter 4 40 50");
    c.migrate(1, p.id(), "2").unwrap_or_else(|e| panic!("to 2: {e}\n{}", c.logs()));
    assert_eq!(cmd(&c), "counter 4 40 50");
    let out = c.omctl(1, &["ps"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("counter 4 40 50"), "{}", om_tests::output_text(&out));
    let _ = p.kill();
    let _ = p.wait();
}
