//! Bad input gets a clear error, and nothing is lost: the daemons keep
//! serving and the process keeps running at home.

use om_tests::{bin, wait_child, wait_lines, Cluster};
use std::io::Write;
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn err_text(r: Result<(), String>) -> String {
    r.expect_err("expected an error")
}

#[test]
fn bad_pid_unmanaged_process_unknown_node_and_dead_node_are_clear_errors() {
    let mut c = Cluster::start(3);
    let mut p = c.om_exec(1, &bin("counter"), &["4", "60", "50"], "c.out");
    wait_lines(&c.path("c.out"), 2, T);

    let e = err_text(c.migrate(1, 999_999, "2"));
    assert!(e.contains("no process 999999"), "{e}");

    let own = std::process::id();
    let e = err_text(c.migrate(1, own, "2"));
    assert!(e.contains("not under om") && e.contains("om-exec"), "{e}");

    let e = err_text(c.migrate(1, p.id(), "9"));
    assert!(e.contains("unknown node 9"), "{e}");

    let o = c.omctl(1, &["migrate", &p.id().to_string(), "nowhere"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a node id"));

    c.kill_node(3);
    let e = err_text(c.migrate(1, p.id(), "3"));
    assert!(e.contains("node 3") && e.contains("unreachable") && e.contains("stays at home"), "{e}");

    // The process never noticed.
    assert_eq!(c.where_is(1, p.id()), Some(1));
    assert!(wait_child(&mut p, T).success());
    assert_eq!(wait_lines(&c.path("c.out"), 60, T).len(), 60);
}

#[test]
fn a_process_with_threads_is_refused_with_its_reason_and_keeps_running() {
    let c = Cluster::start(2);
    let mut p = c.om_exec(1, &bin("threads"), &["2"], "t.out");
    wait_lines(&c.path("t.out"), 1, T);
    let ps = c.ps(1);
    let me = ps.as_array().expect("array").iter().find(|x| x["pid"] == p.id()).expect("listed").clone();
    assert!(me["cant_move"].as_str().unwrap_or("").contains("threads"), "{me}");
    let e = err_text(c.migrate(1, p.id(), "2"));
    assert!(e.contains("cannot migrate") && e.contains("2 threads"), "{e}");
    assert!(wait_child(&mut p, T).success());
    assert_eq!(std::fs::read_to_string(c.path("t.out")).expect("out"), "started\ndone\n");
}

#[test]
fn malformed_frames_close_only_that_connection() {
    let c = Cluster::start(2);
    let port = c.nodes[1].port;
    // Garbage, an oversized frame and a bad checksum to the node link port.
    for junk in [b"GET / HTTP/1.1\r\n\r\n".to_vec(), {
        let mut h = 0x314d_4f21u32.to_le_bytes().to_vec();
        h.extend_from_slice(&[1, 0, 0, 0]);
        h.extend_from_slice(&u32::MAX.to_le_bytes());
        h.extend_from_slice(&[0; 4]);
        h
    }] {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.write_all(&junk).expect("write");
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    // Garbage on the control socket.
    let mut u = std::os::unix::net::UnixStream::connect(c.socket(2)).expect("control");
    u.write_all(&[0xde; 64]).expect("write");
    drop(u);
    std::thread::sleep(Duration::from_millis(200));
    assert!(c.log(2).contains("malformed"), "no log line for the bad frames:\n{}", c.log(2));
    // Both daemons still serve: a real migration to node 2 works.
    let mut p = c.om_exec(1, &bin("counter"), &["4", "30", "50"], "c.out");
    wait_lines(&c.path("c.out"), 2, T);
    c.migrate(1, p.id(), "2").unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    assert!(wait_child(&mut p, T).success());
    assert!(c.ps(2).is_array());
}

#[test]
fn om_exec_without_a_daemon_names_the_socket() {
    let o = Command::new(bin("om-exec"))
        .env("OM_SOCKET", "/nonexistent/om.sock")
        .args(["--", "true"])
        .output()
        .expect("om-exec");
    assert_eq!(o.status.code(), Some(125));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("/nonexistent/om.sock") && e.lines().count() == 1, "{e}");
}

#[test]
fn om_exec_keeps_pid_and_exit_status() {
    let c = Cluster::start(1);
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("{} -- sh -c 'echo $$; exit 42' & echo $!; wait $!; echo $?", bin("om-exec").display()))
        .env("OM_SOCKET", c.socket(1))
        .output()
        .expect("sh");
    let text = String::from_utf8_lossy(&out.stdout);
    let l: Vec<&str> = text.lines().collect();
    assert_eq!(l.len(), 3, "{text}");
    assert_eq!(l[0], l[1], "pid changed: {text}");
    assert_eq!(l[2], "42");
}

#[test]
fn shared_memory_sysv_and_own_seccomp_are_refused_and_the_process_stays() {
    let c = Cluster::start(2);
    for (mode, why) in [
        ("shared", "shared anonymous memory"),
        ("sharedfile", "shared writable mapping"),
        ("sysv", "SysV shared memory"),
        ("seccomp", "seccomp filter"),
    ] {
        let out = format!("{mode}.out");
        let mut p = c.om_exec(1, &bin("cantmove"), &[mode, "15"], &out);
        wait_lines(&c.path(&out), 2, T);
        let e = err_text(c.migrate(1, p.id(), "2"));
        assert!(e.contains("cannot migrate") && e.contains(why), "{mode}: {e}");
        assert_eq!(c.where_is(1, p.id()), Some(1));
        assert!(wait_child(&mut p, T).success(), "{mode} did not finish");
        assert_eq!(wait_lines(&c.path(&out), 16, T).last().map(String::as_str), Some("tick 14"));
    }
}

#[test]
fn a_node_that_refuses_guests_says_so_and_the_process_stays() {
    let c = Cluster::start_with(2, |id| if id == 2 { vec!["--no-guests".into()] } else { Vec::new() });
    let mut p = c.om_exec(1, &bin("counter"), &["4", "30", "50"], "c.out");
    wait_lines(&c.path("c.out"), 2, T);
    let e = err_text(c.migrate(1, p.id(), "2"));
    assert!(e.contains("refused") && e.contains("does not accept guests"), "{e}");
    assert_eq!(c.where_is(1, p.id()), Some(1));
    assert!(wait_child(&mut p, T).success());
}

/// While away, the deputy opens files with the process's own credentials:
/// a process of user nobody cannot read a root-only file, away as at home.
#[test]
fn the_deputy_acts_with_the_process_credentials_not_the_daemons() {
    let c = Cluster::start(2);
    let secret = c.path("secret");
    std::fs::write(&secret, "root only\n").expect("secret");
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    for remote in [false, true] {
        let mut p = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(bin("om-exec"))
            .arg("--")
            .arg(bin("opener"))
            .arg(&secret)
            .env("OM_SOCKET", c.socket(1))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("setpriv (util-linux) runs om-exec as nobody");
        let mut out = std::io::BufReader::new(p.stdout.take().expect("out"));
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).expect("ready");
        assert_eq!(line.trim(), "ready");
        if remote {
            c.migrate(1, p.id(), "2").unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
            assert_eq!(c.where_is(1, p.id()), Some(2));
        }
        p.stdin.as_mut().expect("in").write_all(b"go\n").expect("go");
        line.clear();
        std::io::BufRead::read_line(&mut out, &mut line).expect("result");
        assert_eq!(line.trim(), format!("denied {}", libc::EACCES), "remote={remote}");
        assert!(wait_child(&mut p, T).success());
    }
}

#[test]
fn a_stopped_process_is_refused_and_left_stopped() {
    let c = Cluster::start(2);
    let mut p = c.om_exec(1, &bin("counter"), &["4", "40", "50"], "s.out");
    wait_lines(&c.path("s.out"), 2, T);
    // SAFETY: signalling the test's own child.
    unsafe { libc::kill(p.id() as i32, libc::SIGSTOP) };
    std::thread::sleep(Duration::from_millis(200));
    let e = err_text(c.migrate(1, p.id(), "2"));
    assert!(e.contains("stopped") && e.contains("SIGCONT"), "{e}");
    let n = wait_lines(&c.path("s.out"), 1, T).len();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(wait_lines(&c.path("s.out"), 1, T).len(), n, "the refusal resumed it");
    // SAFETY: as above.
    unsafe { libc::kill(p.id() as i32, libc::SIGCONT) };
    c.migrate(1, p.id(), "2").unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    assert!(wait_child(&mut p, T).success());
    assert_eq!(wait_lines(&c.path("s.out"), 40, T).len(), 40);
}
