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
fn a_process_whose_threads_differ_in_credentials_is_refused_and_keeps_running() {
    let c = Cluster::start(2);
    // The main thread gave its root away, another kept it: the deputy,
    // which takes the main thread's credentials, could not serve that one.
    let mut p = c.om_exec(1, &bin("threads"), &["creds", "2", "leader"], "t.out");
    wait_lines(&c.path("t.out"), 1, T);
    let ps = c.ps(1);
    let me = ps.as_array().expect("array").iter().find(|x| x["pid"] == p.id()).expect("listed").clone();
    assert!(me["cant_move"].as_str().unwrap_or("").contains("other credentials"), "{me}");
    let e = err_text(c.migrate(1, p.id(), "2"));
    assert!(e.contains("cannot migrate") && e.contains("runs with other credentials than the main thread"), "{e}");
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
        ("sharedfile", "shared writable mapping"),
        ("aio", "aio context (io_setup)"),
        ("uring", "it uses io_uring"),
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

/// A process under om that shares memory with one that is not (its child,
/// started before the parent was put under om) is refused, and the reason
/// names the child; the parent runs on at home.
#[test]
fn memory_shared_with_a_process_not_under_om_is_refused_naming_it() {
    let c = Cluster::start(2);
    for (mode, what) in [("shared", "shared anonymous memory"), ("sysv", "SysV shared memory")] {
        let out = c.path(&format!("{mode}.out"));
        let mut p = Command::new(bin("cantmove"))
            .args([mode, "20"])
            .stdout(std::fs::File::create(&out).expect("out"))
            .spawn()
            .expect("cantmove");
        wait_lines(&out, 2, T);
        let child = std::fs::read_to_string(format!("/proc/{}/task/{}/children", p.id(), p.id()))
            .expect("children")
            .trim()
            .to_string();
        let mut client = om_runtime::client::Client::connect(c.socket(1)).expect("omd");
        client.register(p.id() as i32, &format!("cantmove {mode}")).expect("register");
        let e = err_text(c.migrate(1, p.id(), "2"));
        assert!(
            e.contains("cannot migrate")
                && e.contains(what)
                && e.contains(&format!("process {child} (cantmove)"))
                && e.contains("not under om"),
            "{mode}: {e}"
        );
        assert_eq!(c.where_is(1, p.id()), Some(1));
        assert!(wait_child(&mut p, T).success());
        assert_eq!(wait_lines(&out, 21, T).last().map(String::as_str), Some("tick 19"));
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
    use std::os::unix::fs::PermissionsExt;
    let c = Cluster::start(2);
    // User nobody must reach the programs and the file's directory (the
    // checkout may sit under a private directory): copies in an open one.
    let open_dir = std::env::temp_dir().join(format!("om-nobody-{}", std::process::id()));
    std::fs::create_dir_all(&open_dir).expect("dir");
    std::fs::set_permissions(&open_dir, PermissionsExt::from_mode(0o755)).expect("chmod dir");
    for b in ["om-exec", "opener"] {
        std::fs::copy(bin(b), open_dir.join(b)).expect("copy a binary");
    }
    let secret = open_dir.join("secret");
    std::fs::write(&secret, "root only\n").expect("secret");
    std::fs::set_permissions(&secret, PermissionsExt::from_mode(0o600)).expect("chmod");
    for remote in [false, true] {
        let mut p = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(open_dir.join("om-exec"))
            .arg("--")
            .arg(open_dir.join("opener"))
            .arg(&secret)
            .env("OM_SOCKET", c.socket(1))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(c.path("nobody.err")).expect("err"))
            .spawn()
            .expect("setpriv (util-linux) runs om-exec as nobody");
        let mut out = std::io::BufReader::new(p.stdout.take().expect("out"));
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).expect("ready");
        assert_eq!(
            line.trim(),
            "ready",
            "as nobody: {}",
            std::fs::read_to_string(c.path("nobody.err")).unwrap_or_default()
        );
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
    let _ = std::fs::remove_dir_all(&open_dir);
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

/// A 16-byte frame header: magic, kind, length, checksum.
fn header(kind: u8, len: u32, sum: u32) -> Vec<u8> {
    let mut h = om_runtime::wire::MAGIC.to_le_bytes().to_vec();
    h.extend_from_slice(&[kind, 0, 0, 0]);
    h.extend_from_slice(&len.to_le_bytes());
    h.extend_from_slice(&sum.to_le_bytes());
    h
}

/// Malformed, oversized and replayed frames from a peer that holds the
/// cluster key are rejected; only that link closes and omd keeps serving.
#[test]
fn bad_frames_from_an_authenticated_peer_are_rejected() {
    use om_runtime::link::{ClusterKey, Link};
    use om_runtime::wire::{self, Msg};
    use std::io::Read;
    let c = Cluster::start(2);
    let key = ClusterKey::load(&c.key_file()).expect("key");
    let omd: std::net::SocketAddr = format!("127.0.0.1:{}", c.nodes[1].port).parse().expect("addr");
    let junk = [0xa5u8; 32];
    let mut bad_msg = header(1, junk.len() as u32, wire::checksum(&junk));
    bad_msg.extend_from_slice(&junk);
    let mut bad_sum = header(1, 8, 12345);
    bad_sum.extend_from_slice(&[0; 8]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
        ("oversized", header(1, u32::MAX, 0)),
        ("64 MiB + 1", header(2, (64 << 20) + 1, 0)),
        ("bad checksum", bad_sum),
        ("invalid archive", bad_msg),
        ("unknown kind", header(9, 0, 0)),
    ];
    for (what, bytes) in &cases {
        let mut l = Link::connect(omd, &key, 1, Duration::from_secs(3)).expect("authenticated link");
        l.write_all(bytes).expect("write");
        let mut rest = Vec::new();
        let r = l.read_to_end(&mut rest);
        assert!(r.is_err() || rest.is_empty(), "{what}: omd answered {} bytes", rest.len());
    }
    // Replay: record a whole authenticated session through a proxy, then
    // play its bytes to omd again. The new session's keys differ, so nothing
    // past the handshake decrypts and no request is served.
    let proxy = std::net::TcpListener::bind("127.0.0.1:0").expect("proxy");
    let paddr = proxy.local_addr().expect("addr");
    let recorded = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let rec = recorded.clone();
    let pump = std::thread::spawn(move || {
        let (mut a, _) = proxy.accept().expect("accept");
        let mut b = std::net::TcpStream::connect(omd).expect("omd");
        let (mut a2, mut b2) = (a.try_clone().expect("clone"), b.try_clone().expect("clone"));
        let back = std::thread::spawn(move || {
            let _ = std::io::copy(&mut b2, &mut a2);
        });
        let mut buf = [0u8; 65536];
        while let Ok(n) = a.read(&mut buf) {
            if n == 0 || b.write_all(&buf[..n]).is_err() {
                break;
            }
            rec.lock().expect("rec").extend_from_slice(&buf[..n]);
        }
        let _ = b.shutdown(std::net::Shutdown::Both);
        let _ = back.join();
    });
    {
        let mut l = Link::connect(paddr, &key, 1, Duration::from_secs(3)).expect("link via proxy");
        wire::send(&mut l, &Msg::Hello { node: 1 }).expect("hello");
        wire::send(&mut l, &Msg::Nodes).expect("nodes");
        assert!(matches!(wire::recv_msg(&mut l), Ok(Msg::NodesReply(_))), "the recorded session was not served");
        let _ = l.shutdown(std::net::Shutdown::Both);
    }
    pump.join().expect("proxy");
    let bytes = recorded.lock().expect("rec").clone();
    let mut s = std::net::TcpStream::connect(omd).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    s.write_all(&bytes).expect("replay");
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    // Only the handshake reply (2 + 32 + 12 + 16 bytes) comes back.
    assert!(answer.len() <= 64, "the replayed session got {} bytes back", answer.len());
    std::thread::sleep(Duration::from_millis(200));
    let log = c.log(2);
    assert!(log.matches("malformed frame on a node link").count() >= cases.len() - 1, "rejections not logged:\n{log}");
    assert!(log.contains("failed authentication"), "the replay was not logged:\n{log}");
    // Still serving: a real migration to node 2 works.
    let mut p = c.om_exec(1, &bin("counter"), &["4", "30", "50"], "c.out");
    wait_lines(&c.path("c.out"), 2, T);
    c.migrate(1, p.id(), "2").unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    assert!(wait_child(&mut p, T).success());
}

/// omd refuses a key file others can read, a missing key, and a bad config
/// file, each with a message that names the file and the fix.
#[test]
fn omd_refuses_an_exposed_key_and_a_bad_config() {
    om_tests::require_root();
    let dir = std::env::temp_dir().join(format!("om-badcfg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let key = dir.join("cluster.key");
    let o = Command::new(bin("omctl")).args(["keygen", key.to_str().expect("utf8")]).output().expect("keygen");
    assert!(o.status.success(), "{o:?}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key).expect("key").permissions().mode() & 0o777, 0o600);
    let again = Command::new(bin("omctl")).args(["keygen", key.to_str().expect("utf8")]).output().expect("keygen");
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("already exists"));
    let omd = |args: &[&str]| {
        let o = Command::new(bin("omd"))
            .args(["--node-id=5", "--listen=127.0.0.1:1", "--socket"])
            .arg(dir.join("x.sock"))
            .args(args)
            .output()
            .expect("omd");
        (o.status.success(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let (ok, e) = omd(&["--key", key.to_str().expect("utf8")]);
    assert!(!ok && e.contains("can be read by others") && e.contains("chmod 600"), "{e}");
    let (ok, e) = omd(&["--key", "/nonexistent/om.key"]);
    assert!(!ok && e.contains("/nonexistent/om.key") && e.contains("omctl keygen"), "{e}");
    let conf = dir.join("om.toml");
    std::fs::write(&conf, "node_id = 5\nlisten = \"127.0.0.1:1\"\nmax_guests = \"many\"\n").expect("conf");
    let (ok, e) = omd(&["--config", conf.to_str().expect("utf8")]);
    assert!(!ok && e.contains(&format!("{}:3:", conf.display())), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
