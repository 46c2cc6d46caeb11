//! Multi-threaded processes (issue 11): every thread is frozen together and
//! captured, with a thread started or ended meanwhile found.

use om_runtime::{image, ptrace};
use om_tests::{bin, require_root, wait_child};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Start the threads fixture with `args`; the child and its stdout, after `started`.
fn start(args: &[&str]) -> (std::process::Child, BufReader<std::process::ChildStdout>) {
    let mut c = Command::new(bin("threads")).args(args).stdout(Stdio::piped()).spawn().expect("threads fixture");
    let mut out = BufReader::new(c.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("started");
    assert_eq!(line.trim(), "started");
    (c, out)
}

fn rest(out: BufReader<std::process::ChildStdout>) -> Vec<String> {
    out.lines().map_while(Result::ok).collect()
}

/// Freeze every thread, capture, roll back and let go: what a move out that
/// fails at its end does. Returns the captured image.
fn freeze_capture_release(pid: i32) -> image::Image {
    let mut threads = ptrace::seize_all(pid, false).expect("freeze every thread");
    let mut listed = ptrace::thread_ids(pid);
    let mut held: Vec<i32> = threads.iter().map(|t| t.pid).collect();
    assert_eq!(held[0], pid, "the leader comes first");
    listed.sort();
    held.sort();
    assert_eq!(held, listed, "every thread of the process is held, and only those");
    let cap = image::capture(&mut threads, &|_| false).expect("capture");
    image::rollback(&mut threads[0], cap.scratch, &cap.image.timers).expect("rollback");
    for t in threads {
        t.detach().expect("let the thread go");
    }
    cap.image
}

#[test]
fn every_thread_is_frozen_and_captured_with_its_own_state_and_the_process_runs_on() {
    require_root();
    let (mut c, out) = start(&["2", "3"]);
    let pid = c.id() as i32;
    let img = freeze_capture_release(pid);
    assert_eq!(img.threads.len(), 4, "the leader and three busy threads");
    assert_eq!(img.threads[0].tid, pid);
    let mut names: Vec<&str> = img.threads[1..].iter().map(|t| t.comm.as_str()).collect();
    names.sort();
    assert_eq!(names, ["busy-0", "busy-1", "busy-2"]);
    for t in &img.threads {
        // glibc registers each thread's rseq, robust list and tid address.
        assert_ne!(t.rseq.0, 0, "thread {} has its rseq area", t.tid);
        assert_ne!(t.robust.0, 0, "thread {} has its robust list", t.tid);
        assert_ne!(t.clear_tid, 0, "thread {} has its clear_child_tid address", t.tid);
        assert!(!t.xstate.is_empty());
    }
    let stacks: std::collections::HashSet<u64> = img.threads.iter().map(|t| t.regs().rsp >> 16).collect();
    assert_eq!(stacks.len(), 4, "each thread has its own stack");
    let st = wait_child(&mut c, Duration::from_secs(20));
    assert!(st.success(), "{st:?}");
    assert_eq!(rest(out), ["done"]);
}

#[test]
fn threads_started_and_ended_during_a_freeze_are_all_found_and_none_is_lost() {
    require_root();
    let (mut c, out) = start(&["churn", "2"]);
    let pid = c.id() as i32;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(20));
        let img = freeze_capture_release(pid);
        assert!(img.threads.len() >= 3, "the leader, two spawners and maybe a churned thread");
    }
    let st = wait_child(&mut c, Duration::from_secs(60));
    assert!(st.success(), "{st:?}");
    assert_eq!(rest(out), ["churned: every thread ran once", "done"]);
}

/// A process of three busy threads moves 2 -> 3 -> home while they run,
/// and finishes as natively.
#[test]
fn busy_threads_move_out_across_and_home_and_finish() {
    let c = om_tests::Cluster::start(3);
    // Long enough that the threads still run when it is home again.
    let mut p = c.om_exec(1, &bin("threads"), &["8", "3"], "t.out");
    om_tests::wait_lines(&c.path("t.out"), 1, Duration::from_secs(10));
    let pid = p.id();
    let tids = ptrace::thread_ids(pid as i32);
    assert_eq!(tids.len(), 4);
    for to in ["2", "3", "home"] {
        c.migrate(1, pid, to).unwrap_or_else(|e| panic!("to {to}: {e}\n{}", c.logs()));
        let want = if to == "home" { 1 } else { to.parse().unwrap_or(0) };
        assert_eq!(c.where_is(1, pid), Some(want), "{}", c.logs());
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(ptrace::thread_ids(pid as i32), tids, "the same threads, with the same ids, at home");
    let st = wait_child(&mut p, Duration::from_secs(30));
    assert!(st.success(), "{st:?}\n{}", c.logs());
    assert_eq!(om_tests::wait_lines(&c.path("t.out"), 2, Duration::from_secs(5)), ["started", "done"], "{}", c.logs());
}

/// Eight threads each wait in a read of their own pipe (run at home), and
/// the main thread in a read of stdin, while the process moves 2 -> 3 ->
/// home -> 2: no thread's wait holds up another's, every thread keeps its
/// id, and each reads its own byte once it is written.
#[test]
fn eight_threads_waiting_at_home_each_move_and_read_their_own_pipe() {
    use std::io::{BufRead, Write};
    let c = om_tests::Cluster::start(3);
    let (mut p, mut out, first) = c.om_exec_piped(1, &bin("threads"), &["pipes", "8"]);
    let pid = p.id();
    let mut before = vec![first];
    while before.len() < 9 {
        let mut l = String::new();
        out.read_line(&mut l).expect("a line");
        before.push(l.trim().to_string());
    }
    assert_eq!(before.last().map(String::as_str), Some("ready"), "{before:?}");
    let tids = ptrace::thread_ids(pid as i32);
    assert_eq!(tids.len(), 9);
    let go = |p: &mut std::process::Child| p.stdin.as_mut().expect("stdin").write_all(b"go\n").expect("go");
    for to in ["2", "3", "home", "2"] {
        c.migrate(1, pid, to).unwrap_or_else(|e| panic!("to {to}: {e}\n{}", c.logs()));
        let want = if to == "home" { 1 } else { to.parse().unwrap_or(0) };
        assert_eq!(c.where_is(1, pid), Some(want), "{}", c.logs());
        if to == "home" {
            assert_eq!(ptrace::thread_ids(pid as i32), tids, "the same threads, with the same ids, at home");
        }
    }
    // Away on node 2 again, every thread waits at home; the writes wake them all.
    go(&mut p);
    let mut after = Vec::new();
    while after.last().map(String::as_str) != Some("done") {
        let mut l = String::new();
        if out.read_line(&mut l).expect("a line") == 0 {
            break;
        }
        after.push(l.trim().to_string());
    }
    let t0 = std::time::Instant::now();
    let st = loop {
        if let Some(st) = p.try_wait().expect("try_wait") {
            break st;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            let _ = p.kill();
            panic!("the process did not end; it printed {after:?}\n{}", c.logs());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(st.success(), "{st:?}\n{}", c.logs());
    for k in 0..8 {
        let tid = before
            .iter()
            .find_map(|l| l.strip_prefix(&format!("thread {k} tid ")))
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("thread {k} printed no tid: {before:?}"));
        assert!(tids.iter().any(|t| t.to_string() == tid), "thread {k}'s tid {tid} is one of {tids:?}");
        let want = format!("thread {k} read 1 byte {} tid {tid}", k + 1);
        assert!(after.contains(&want), "{want:?} missing from {after:?}\n{}", c.logs());
    }
    assert_eq!(after.last().map(String::as_str), Some("done"));
}

/// Away, a signal sent to the process from outside goes to the one thread
/// that does not block it, pthread_kill reaches the thread it names, and a
/// thread's raise() runs its handler with the process as the sender; the
/// process then comes home and ends as natively.
#[test]
fn signals_away_reach_the_thread_the_kernel_would_pick() {
    use std::io::{BufRead, Write};
    let c = om_tests::Cluster::start(2);
    let (mut p, mut out, first) = c.om_exec_piped(1, &bin("threads"), &["signals"]);
    let pid = p.id();
    let mut lines = vec![first];
    while lines.last().map(String::as_str) != Some("ready") {
        let mut l = String::new();
        assert!(out.read_line(&mut l).expect("a line") > 0, "{lines:?}");
        lines.push(l.trim().to_string());
    }
    let tid = |k: usize| {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(&format!("thread {k} tid ")))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no tid of thread {k}: {lines:?}"))
    };
    c.migrate(1, pid, "2").unwrap_or_else(|e| panic!("to 2: {e}\n{}", c.logs()));
    assert_eq!(c.where_is(1, pid), Some(2), "{}", c.logs());
    om_runtime::sys::kill(pid as i32, libc::SIGUSR1).expect("kill");
    std::thread::sleep(Duration::from_millis(300));
    p.stdin.as_mut().expect("stdin").write_all(b"go\n").expect("go");
    let mut after = Vec::new();
    for _ in 0..3 {
        let mut l = String::new();
        out.read_line(&mut l).expect("a line");
        after.push(l.trim().to_string());
    }
    assert_eq!(
        after,
        [
            format!("SIGUSR1 ran on tid {}", tid(2)),
            format!("SIGUSR2 ran on tid {} from this process: true", tid(1)),
            format!("SIGWINCH ran on tid {} from this process: true", tid(0)),
        ],
        "{}",
        c.logs()
    );
    c.migrate(1, pid, "home").unwrap_or_else(|e| panic!("home: {e}\n{}", c.logs()));
    p.stdin.as_mut().expect("stdin").write_all(b"end\n").expect("end");
    let st = wait_child(&mut p, Duration::from_secs(20));
    assert!(st.success(), "{st:?}\n{}", c.logs());
}

/// A process that starts and ends threads all the time moves: the freeze
/// finds the threads started during the pre-copy, and leaves out those that
/// ended. Away, starting or ending a thread brings it home, where it runs
/// on; every thread runs exactly once.
#[test]
fn threads_started_and_ended_during_a_migration() {
    let c = om_tests::Cluster::start(2);
    let mut p = c.om_exec(1, &bin("threads"), &["churn", "3"], "churn.out");
    om_tests::wait_lines(&c.path("churn.out"), 1, Duration::from_secs(10));
    let pid = p.id();
    let mut moved = 0;
    for _ in 0..5 {
        if c.migrate(1, pid, "2").is_ok() {
            moved += 1;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let st = wait_child(&mut p, Duration::from_secs(60));
    assert!(st.success(), "{st:?}\n{}", c.logs());
    assert_eq!(
        om_tests::wait_lines(&c.path("churn.out"), 3, Duration::from_secs(5)),
        ["started", "churned: every thread ran once", "done"],
        "{}",
        c.logs()
    );
    assert!(moved >= 1, "it never moved:\n{}", c.logs());
}

/// The C fixture of the issue (fixtures/c/threads8.c, built here with gcc):
/// eight threads compute, print with their tid, wait on a futex, then block
/// in a read of their own pipe; the process moves 2 -> 3 -> home while they
/// do. Every thread keeps its tid and gets its result right, and the exit
/// status says so (16).
#[test]
fn eight_c_threads_move_out_across_and_home_and_exit_as_natively() {
    use std::io::{BufRead, Write};
    let c = om_tests::Cluster::start(3);
    let prog = build_c(&c, "threads8");
    let (mut p, mut out, first) = c.om_exec_piped(1, &prog, &[]);
    let pid = p.id();
    let mut lines = vec![first];
    while lines.last().map(String::as_str) != Some("ready") {
        let mut l = String::new();
        assert!(out.read_line(&mut l).expect("a line") > 0, "{lines:?}");
        lines.push(l.trim().to_string());
    }
    let tids = ptrace::thread_ids(pid as i32);
    assert_eq!(tids.len(), 9);
    let go = |p: &mut std::process::Child| p.stdin.as_mut().expect("stdin").write_all(b"go\n").expect("go");
    // On node 2 the threads wait on their futex (here), are woken, and block
    // in their reads (at home); they move on to 3 and home doing so.
    c.migrate(1, pid, "2").unwrap_or_else(|e| panic!("to 2: {e}\n{}", c.logs()));
    go(&mut p);
    std::thread::sleep(Duration::from_millis(300));
    for to in ["3", "home"] {
        c.migrate(1, pid, to).unwrap_or_else(|e| panic!("to {to}: {e}\n{}", c.logs()));
    }
    assert_eq!(c.where_is(1, pid), Some(1));
    assert_eq!(ptrace::thread_ids(pid as i32), tids, "the same threads, with the same ids, at home");
    go(&mut p);
    let mut after = Vec::new();
    while after.last().map(String::as_str) != Some("done") {
        let mut l = String::new();
        if out.read_line(&mut l).expect("a line") == 0 {
            break;
        }
        after.push(l.trim().to_string());
    }
    let st = wait_child(&mut p, Duration::from_secs(30));
    assert_eq!(st.code(), Some(16), "every thread's result right: {after:?}\n{}", c.logs());
    for k in 0..8 {
        let tid = lines
            .iter()
            .find_map(|l| l.strip_prefix(&format!("thread {k} tid ")))
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("thread {k} printed no tid: {lines:?}"));
        let want = format!("thread {k} read 1 byte {} tid {tid}", k + 1);
        assert!(after.contains(&want), "{want:?} missing from {after:?}");
    }
}

/// The `threads interrupt` fixture (with `args`) moved to node 2 with its
/// reader waiting in a read at home; `signal` then sends the signal (given
/// the process and the home handle of its stdin, and the reader's tid).
/// The handler must run on the reader and its read fail with EINTR.
fn read_interrupted_away(args: &[&str], signal: &dyn Fn(u32, &mut std::process::ChildStdin, i32)) {
    use std::io::BufRead;
    let c = om_tests::Cluster::start(2);
    let (mut p, mut out, first) = c.om_exec_piped(1, &bin("threads"), args);
    let pid = p.id();
    let tid = first.strip_prefix("reader tid ").map(str::to_string).unwrap_or_else(|| panic!("{first:?}"));
    let mut l = String::new();
    out.read_line(&mut l).expect("ready");
    assert_eq!(l.trim(), "ready");
    c.migrate(1, pid, "2").unwrap_or_else(|e| panic!("to 2: {e}\n{}", c.logs()));
    signal(pid, p.stdin.as_mut().expect("stdin"), tid.parse().expect("tid"));
    l.clear();
    out.read_line(&mut l).expect("a line");
    assert_eq!(
        l.trim(),
        format!("read returned -1 (Interrupted system call (os error 4)), handler ran on tid {tid}"),
        "{}",
        c.logs()
    );
    let st = wait_child(&mut p, Duration::from_secs(20));
    assert!(st.success(), "{st:?}\n{}", c.logs());
}

/// Away, pthread_kill of a thread that waits in a read at home wakes it:
/// its handler runs on it and, without SA_RESTART, the read fails with
/// EINTR, as natively.
#[test]
fn pthread_kill_interrupts_a_read_waiting_at_home() {
    // The fixture's main thread sends it once it reads a line.
    read_interrupted_away(&["interrupt"], &|_, stdin, _| {
        std::io::Write::write_all(stdin, b"go\n").expect("go");
    });
}

/// Away, a signal another process sends one thread (tgkill to its home tid)
/// reaches that thread, and wakes the read it waits in at home: the handler
/// runs on it and the read fails with EINTR, as natively.
#[test]
fn a_signal_from_outside_to_one_thread_reaches_it_and_interrupts_its_read() {
    read_interrupted_away(&["interrupt", "outside"], &|pid, _, tid| {
        om_runtime::sys::tgkill(pid as i32, tid, libc::SIGUSR2).expect("tgkill");
    });
}

/// Real programs with threads: CPython with four threads, and xz -T2,
/// moved out and back while they work, give the native result.
#[test]
fn python_threads_and_xz_move_and_finish_as_natively() {
    let c = om_tests::Cluster::start(2);
    let py = "import threading\n\
              def w(k, out):\n  s = 0\n  for i in range(2000000 * (k + 1)): s += i % 7\n  out[k] = s\n\
              out = [0] * 4\nts = [threading.Thread(target=w, args=(k, out)) for k in range(4)]\n\
              [t.start() for t in ts]\nprint('started', flush=True)\n[t.join() for t in ts]\nprint(out)\n";
    let native = Command::new("python3").args(["-c", py]).output().expect("python3");
    let mut p = c.om_exec(1, std::path::Path::new("/usr/bin/env"), &["python3", "-c", py], "py.out");
    om_tests::wait_lines(&c.path("py.out"), 1, Duration::from_secs(20));
    c.migrate(1, p.id(), "2").unwrap_or_else(|e| panic!("python to 2: {e}\n{}", c.logs()));
    std::thread::sleep(Duration::from_millis(200));
    // A thread that ends away brings the process home by itself.
    come_home(&c, p.id());
    let st = wait_child(&mut p, Duration::from_secs(120));
    assert!(st.success(), "{st:?}\n{}", c.logs());
    assert_eq!(
        std::fs::read_to_string(c.path("py.out")).expect("output"),
        String::from_utf8_lossy(&native.stdout),
        "{}",
        c.logs()
    );

    // xz with two threads compresses a file while it moves; the result
    // decompresses to the input.
    let input = c.path("xz.in");
    // Six bits of noise a byte: slow enough to compress that it moves midway.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let data: Vec<u8> = (0..24u32 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x & 0x3f) as u8
        })
        .collect();
    std::fs::write(&input, &data).expect("input");
    let xz = which("xz");
    let mut p = c.om_exec(1, &xz, &["-T2", "-k", "-f", "-6", &input.to_string_lossy()], "xz.log");
    std::thread::sleep(Duration::from_millis(300));
    let moved = c.migrate(1, p.id(), "2");
    assert!(moved.is_ok(), "xz did not move: {moved:?}\n{}", c.logs());
    std::thread::sleep(Duration::from_millis(300));
    come_home(&c, p.id());
    let st = wait_child(&mut p, Duration::from_secs(300));
    assert!(st.success(), "xz: {st:?} (moved: {moved:?})\n{}", c.logs());
    let back = Command::new(&xz).args(["-d", "-c"]).arg(c.path("xz.in.xz")).output().expect("xz -d");
    assert!(back.stdout == data, "xz's output does not decompress to its input\n{}", c.logs());
}

/// Have process `pid` home (it may be on its way by itself, or ended).
fn come_home(c: &om_tests::Cluster, pid: u32) {
    let t0 = std::time::Instant::now();
    while t0.elapsed() < Duration::from_secs(20) {
        match c.where_is(1, pid) {
            Some(1) | None => return,
            _ => match c.migrate(1, pid, "home") {
                Ok(()) => return,
                Err(e) if e.contains("returning") || e.contains("moving") => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(e) if e.contains("exited") || e.contains("ended") || e.contains("no process") => return,
                Err(e) => panic!("home: {e}\n{}", c.logs()),
            },
        }
    }
    panic!("process {pid} did not come home\n{}", c.logs());
}

fn which(prog: &str) -> std::path::PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join(prog)).find(|f| f.exists()))
        .unwrap_or_else(|| panic!("{prog} is needed for this test (apt-get install xz-utils)"))
}

/// Node computing, and Java computing: each moved out and home while it
/// works gives the native output.
#[test]
fn node_and_java_move_and_finish_as_natively() {
    let c = om_tests::Cluster::start(2);
    let js = "let s = 0; console.log('started');\n\
              for (let i = 0; i < 3e8; i++) { s = (s + i % 7) % 1000003; }\nconsole.log(s);\n";
    let native = Command::new("node").args(["-e", js]).output().expect("node");
    move_out_and_home_as_natively(&c, &which("node"), &["-e", js], "node.out", &native.stdout);

    // The JVM: some twenty threads (compiler, GC, signal dispatcher), and
    // two of ours computing.
    let src = c.path("Spin.java");
    std::fs::write(
        &src,
        "public class Spin {\n\
         static long run(long n) { long s = 0; for (long i = 0; i < n; i++) s = (s + i % 7) % 1000003; return s; }\n\
         public static void main(String[] a) throws Exception {\n\
           long[] r = new long[2];\n\
           Thread t = new Thread(() -> r[1] = run(700_000_000L)); t.start();\n\
           System.out.println(\"started\");\n\
           r[0] = run(900_000_000L); t.join();\n\
           System.out.println(r[0] + \" \" + r[1]);\n\
         }\n}\n",
    )
    .expect("java source");
    let java = which("java");
    // Without the flag the JVM maps its perf counters shared from /tmp,
    // which om refuses to move, naming the flag.
    let native = Command::new(&java).arg(&src).output().expect("java");
    let mut p = c.om_exec(1, &java, &[&src.to_string_lossy()], "java.shared");
    om_tests::wait_lines(&c.path("java.shared"), 1, Duration::from_secs(60));
    let refused = c.migrate(1, p.id(), "2").expect_err("a JVM with shared perf counters is refused");
    assert!(refused.contains("-XX:+PerfDisableSharedMem"), "{refused}");
    p.kill().expect("kill");
    let _ = p.wait();
    let args = ["-XX:+PerfDisableSharedMem", &src.to_string_lossy()];
    move_out_and_home_as_natively(&c, &java, &args, "java.out", &native.stdout);
}

/// Start `prog args` under om once it has printed its first line, move it
/// to node 2, bring it home after half a second, and check that it ends
/// well with output `native`, and that it moved.
fn move_out_and_home_as_natively(
    c: &om_tests::Cluster,
    prog: &std::path::Path,
    args: &[&str],
    out: &str,
    native: &[u8],
) {
    let mut p = c.om_exec(1, prog, args, out);
    om_tests::wait_lines(&c.path(out), 1, Duration::from_secs(60));
    let moved = c.migrate(1, p.id(), "2");
    std::thread::sleep(Duration::from_millis(500));
    come_home(c, p.id());
    let st = wait_child(&mut p, Duration::from_secs(120));
    assert!(st.success(), "{st:?}\n{}", c.logs());
    assert_eq!(std::fs::read_to_string(c.path(out)).expect("output"), String::from_utf8_lossy(native), "{}", c.logs());
    assert!(moved.is_ok(), "{} did not move: {moved:?}\n{}", prog.display(), c.logs());
}

/// Build the C fixture `name` (fixtures/c/NAME.c) into the cluster's folder.
fn build_c(c: &om_tests::Cluster, name: &str) -> std::path::PathBuf {
    let prog = c.path(name);
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../fixtures/c/{name}.c"));
    let cc = Command::new("gcc").args(["-O1", "-pthread", "-o"]).arg(&prog).arg(&src).output();
    let cc = cc.expect("gcc is needed to build the C fixture (apt-get install gcc)");
    assert!(cc.status.success(), "gcc: {}", String::from_utf8_lossy(&cc.stderr));
    prog
}

/// Four threads contending on a mutex, a robust mutex and a condition
/// variable move 2 -> 3 -> home while contended, and every count is exact;
/// a thread that dies holding the robust mutex leaves it EOWNERDEAD. With a
/// PI mutex too, the counts are as exact (a PI lock names its owner by tid
/// in memory, which the kernel away cannot resolve: the process comes home
/// for it).
#[test]
fn threads_contending_on_mutexes_and_condvars_move_while_contended() {
    let c = om_tests::Cluster::start(3);
    let prog = build_c(&c, "contend");
    let iters = "1500000";
    for mode in ["plain", "pi"] {
        let want = format!(
            "started\nmutex 6000000 robust 6000000 pi {} turns 93748 ownerdead 1\n",
            if mode == "pi" { 6000000 } else { 0 }
        );
        let out = format!("contend.{mode}");
        let mut p = c.om_exec(1, &prog, &[iters, mode], &out);
        om_tests::wait_lines(&c.path(&out), 1, Duration::from_secs(20));
        let pid = p.id();
        c.migrate(1, pid, "2").unwrap_or_else(|e| panic!("{mode} to 2: {e}\n{}", c.logs()));
        std::thread::sleep(Duration::from_millis(300));
        if mode == "plain" {
            assert_eq!(c.where_is(1, pid), Some(2), "contended locks keep it away\n{}", c.logs());
            c.migrate(1, pid, "3").unwrap_or_else(|e| panic!("{mode} to 3: {e}\n{}", c.logs()));
            std::thread::sleep(Duration::from_millis(300));
        }
        come_home(&c, pid);
        let st = wait_child(&mut p, Duration::from_secs(120));
        assert!(st.success(), "{mode}: {st:?}\n{}", c.logs());
        let got = std::fs::read_to_string(c.path(&out)).expect("output");
        assert_eq!(got, want, "{mode}\n{}", c.logs());
    }
}

/// POSIX timers in a threaded process move: one that signals the worker
/// thread by tid signals it away, and a glibc SIGEV_THREAD timer (whose
/// helper thread is signalled by tid) runs its callback; the output is
/// the native one.
#[test]
fn timers_that_signal_a_thread_move_with_the_process() {
    let c = om_tests::Cluster::start(2);
    let prog = build_c(&c, "timers");
    let native = Command::new(&prog).output().expect("timers fixture");
    let mut p = c.om_exec(1, &prog, &[], "timers.out");
    om_tests::wait_lines(&c.path("timers.out"), 1, Duration::from_secs(20));
    c.migrate(1, p.id(), "2").unwrap_or_else(|e| panic!("to 2: {e}\n{}", c.logs()));
    let st = wait_child(&mut p, Duration::from_secs(30));
    assert!(st.success(), "{st:?}\n{}", c.logs());
    let got = std::fs::read_to_string(c.path("timers.out")).expect("output");
    assert_eq!(got, String::from_utf8_lossy(&native.stdout), "{}", c.logs());
    // The worker took its signal away, and its end brought the process home.
    assert!(c.log(2).contains("a thread ends at home"), "{}", c.logs());
}

/// The balancer counts every thread: a process of four busy threads is four
/// cores of demand (run plus wait time over wall time, so it counts four
/// even on a node with fewer cores), at home and away.
#[test]
fn four_busy_threads_are_four_cores_of_demand_at_home_and_away() {
    let c = om_tests::Cluster::start(2);
    let mut p = c.om_exec(1, &bin("threads"), &["12", "4"], "busy.out");
    om_tests::wait_lines(&c.path("busy.out"), 1, Duration::from_secs(20));
    let demand = |c: &om_tests::Cluster, pid: u32| {
        let ps = c.ps(1);
        let me = ps.as_array().and_then(|a| a.iter().find(|x| x["pid"] == pid).cloned());
        me.and_then(|m| m["demand"].as_f64()).unwrap_or(0.0)
    };
    let settled = |c: &om_tests::Cluster, pid: u32| {
        // Smoothed over two rounds: wait until it has risen past three.
        let t0 = std::time::Instant::now();
        let mut d = demand(c, pid);
        while d < 3.3 && t0.elapsed() < Duration::from_secs(8) {
            std::thread::sleep(Duration::from_millis(250));
            d = demand(c, pid);
        }
        d
    };
    let home = settled(&c, p.id());
    assert!((3.3..4.7).contains(&home), "demand at home {home}\n{}", c.logs());
    c.migrate(1, p.id(), "2").unwrap_or_else(|e| panic!("to 2: {e}\n{}", c.logs()));
    // Readings away replace those from home (smoothed over two rounds).
    std::thread::sleep(Duration::from_secs(3));
    let away = settled(&c, p.id());
    assert!((3.3..4.7).contains(&away), "demand away {away}\n{}", c.logs());
    assert_eq!(c.where_is(1, p.id()), Some(2));
    let _ = p.kill();
    let _ = p.wait();
}

/// Signal-driven I/O aimed at one thread by its tid (F_SETOWN_EX with
/// F_OWNER_TID, F_SETSIG): the pipe lives at home, so the kernel signals the
/// thread's parked placeholder there; away, the signal reaches the same
/// thread with its siginfo (si_fd, si_code), and F_GETOWN_EX still names the
/// thread by its home tid.
#[test]
fn sigio_owned_by_one_thread_reaches_it_away() {
    use std::io::{BufRead, Write};
    let c = om_tests::Cluster::start(2);
    let prog = build_c(&c, "sigio");
    let mut native = Command::new(&prog).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("sigio");
    native.stdin.as_mut().expect("stdin").write_all(b"go\n").expect("go");
    let native = native.wait_with_output().expect("native run");
    let (mut p, mut out, first) = c.om_exec_piped(1, &prog, &[]);
    assert_eq!(first, "ready");
    c.migrate(1, p.id(), "2").unwrap_or_else(|e| panic!("to 2: {e}\n{}", c.logs()));
    p.stdin.as_mut().expect("stdin").write_all(b"go\n").expect("go");
    let mut l = String::new();
    out.read_line(&mut l).expect("a line");
    let st = wait_child(&mut p, Duration::from_secs(20));
    assert!(st.success(), "{st:?}\n{}", c.logs());
    assert_eq!(format!("ready\n{l}"), String::from_utf8_lossy(&native.stdout), "{}", c.logs());
    // The handler ran away: only F_GETOWN_EX, after it, took the process home.
    assert!(c.log(2).contains("fcntl command 16 runs at home"), "{}", c.logs());
}

/// Credentials are per thread: a thread that gave root away for itself
/// moves with the process, and away (on 2, then 3) and back home its calls
/// run with its own ids, the main thread's with root's: it may not open a
/// file only root may read, the main thread may.
#[test]
fn a_thread_with_its_own_credentials_keeps_them_away() {
    use std::io::{BufRead, Write};
    use std::os::unix::fs::PermissionsExt;
    let c = om_tests::Cluster::start(3);
    let secret = c.path("secret");
    std::fs::write(&secret, "root only\n").expect("secret");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let file = secret.to_string_lossy().to_string();
    let run = |moves: &[&str]| -> Vec<String> {
        let (mut p, mut out, first) = c.om_exec_piped(1, &bin("threads"), &["creds-io", &file]);
        assert_eq!(first, "ready");
        for to in moves {
            c.migrate(1, p.id(), to).unwrap_or_else(|e| panic!("to {to}: {e}\n{}", c.logs()));
        }
        p.stdin.as_mut().expect("stdin").write_all(b"go\n").expect("go");
        let lines: Vec<String> = (0..2)
            .map(|_| {
                let mut l = String::new();
                out.read_line(&mut l).expect("a line");
                l.trim().to_string()
            })
            .collect();
        let st = wait_child(&mut p, Duration::from_secs(20));
        assert!(st.success(), "{st:?}\n{}", c.logs());
        lines
    };
    let native = run(&[]);
    assert_eq!(native[0], format!("thread: uid 65534 gid 65534, {file}: refused (13)"));
    assert_eq!(native[1], format!("main: uid 0 gid 0, {file}: opened"));
    for moves in [&["2"][..], &["2", "3"], &["2", "3", "home"]] {
        assert_eq!(run(moves), native, "after {moves:?}\n{}", c.logs());
    }
}

/// Every thread of a guest runs unprivileged on its host: the guest's own
/// uid, no capabilities, no_new_privs (the leader drops them before its
/// other threads are made, and they inherit them).
#[test]
fn every_thread_of_a_guest_runs_unprivileged() {
    let c = om_tests::Cluster::start(2);
    let mut p = c.om_exec(1, &bin("threads"), &["20", "3"], "priv.out");
    om_tests::wait_lines(&c.path("priv.out"), 1, Duration::from_secs(20));
    c.migrate(1, p.id(), "2").unwrap_or_else(|e| panic!("to 2: {e}\n{}", c.logs()));
    let omd2 = c.node_pid(2).expect("omd 2");
    let kids: Vec<String> = std::fs::read_dir(format!("/proc/{omd2}/task"))
        .map(|d| d.flatten().filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok()).collect())
        .unwrap_or_default();
    let guest = kids.join(" ").split_whitespace().next().map(str::to_string).expect("a guest under omd 2");
    let tasks: Vec<String> = std::fs::read_dir(format!("/proc/{guest}/task"))
        .expect("guest tasks")
        .flatten()
        .map(|t| t.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(tasks.len(), 4, "the leader and three busy threads: {tasks:?}");
    for t in &tasks {
        let st = std::fs::read_to_string(format!("/proc/{guest}/task/{t}/status")).expect("status");
        let field = |k: &str| {
            st.lines().find(|l| l.starts_with(k)).map(|l| l[k.len()..].trim().to_string()).unwrap_or_default()
        };
        let uid: u64 = field("Uid:").split_whitespace().next().and_then(|u| u.parse().ok()).unwrap_or(0);
        assert!(uid >= u64::from(om_remote::GUEST_UID_BASE), "thread {t} runs as uid {uid}:\n{st}");
        assert_eq!(field("CapEff:"), "0000000000000000", "thread {t} has capabilities:\n{st}");
        assert_eq!(field("NoNewPrivs:"), "1", "thread {t}");
        assert_eq!(field("Groups:"), "", "thread {t} keeps groups");
    }
    let _ = p.kill();
    let _ = p.wait();
}
