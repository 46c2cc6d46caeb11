//! om-shell, the login-shell wrapper (issue 12): a session started through
//! it is under om; `-c` works as ssh uses it, bytes pass unchanged, exit
//! codes are the command's, and with no omd the shell still starts.

use om_tests::{bin, wait_child, Cluster};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

fn shell(socket: &std::path::Path, home: &std::path::Path) -> Command {
    let mut c = Command::new(bin("om-shell"));
    c.env("OM_SOCKET", socket).env("OM_SHELL", "/bin/bash").env("HOME", home);
    c
}

/// As a login shell on a terminal (argv[0] "-om-shell", as login and sshd
/// start it): the real shell runs as a login shell, and a job started in
/// it is under om (`omctl ps` lists it).
#[test]
fn a_login_session_on_a_terminal_is_under_om() {
    let c = Cluster::start(2);
    let (master, slave) = om_tests::sys::openpty().expect("a pseudo-terminal");
    let slave = std::fs::File::from(slave);
    let mut cmd = shell(c.socket(1), &c.path(""));
    cmd.arg0("-om-shell").stdin(slave.try_clone().expect("tty")).stdout(slave.try_clone().expect("tty")).stderr(slave);
    // SAFETY: the closure only makes async-signal-safe calls.
    unsafe { cmd.pre_exec(om_tests::sys::make_controlling_tty) };
    let mut p = cmd.spawn().expect("om-shell on a terminal");
    let mut term = std::fs::File::from(master);
    let mut w = term.try_clone().expect("tty writer");
    let mut seen = String::new();
    let mut read_until = |want: &str, seen: &mut String| om_tests::read_until(&mut term, want, seen, T);
    w.write_all(b"echo \"zero=$0 shell=$$\"; sleep 300 & echo \"job=$!=\"\n").expect("type");
    read_until("zero=-bash shell=", &mut seen);
    read_until("[1] ", &mut seen);
    read_until("=\r\n", &mut seen);
    // The terminal echoes the typed line too: the pid is the "job=N=" with digits.
    let job: u32 = seen
        .split("job=")
        .filter_map(|r| r.split('=').next().and_then(|n| n.parse().ok()))
        .next()
        .unwrap_or_else(|| panic!("no job pid in {seen:?}"));
    assert!(seen.contains(&format!("shell={}", p.id())), "the shell is om-shell's process: {seen:?}");
    let t0 = std::time::Instant::now();
    let listed = loop {
        let ps = c.ps(1);
        let pids: Vec<u64> = ps.as_array().expect("ps").iter().filter_map(|x| x["pid"].as_u64()).collect();
        if pids.contains(&u64::from(job)) && pids.contains(&u64::from(p.id())) {
            break true;
        }
        if t0.elapsed() > Duration::from_secs(10) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(listed, "the shell {} and its job {job} are not both in omctl ps: {}", p.id(), c.ps(1));
    w.write_all(b"kill %1; exit 0\n").expect("type");
    let st = wait_child(&mut p, T);
    assert_eq!(st.code(), Some(0), "{seen}");
}

/// `om-shell -c CMD`, as ssh runs a command: its exit status is the
/// command's, and binary data through `cat` arrives unchanged (scp, rsync
/// and sftp depend on it).
#[test]
fn dash_c_keeps_exit_codes_and_bytes() {
    let c = Cluster::start(1);
    let st = shell(c.socket(1), &c.path("")).args(["-c", "exit 3"]).status().expect("om-shell");
    assert_eq!(st.code(), Some(3));
    let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let mut p = shell(c.socket(1), &c.path(""))
        .args(["-c", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("om-shell");
    let mut input = p.stdin.take().expect("stdin");
    let feed = data.clone();
    let writer = std::thread::spawn(move || input.write_all(&feed));
    let out = p.wait_with_output().expect("cat");
    writer.join().expect("writer").expect("write");
    assert!(out.status.success(), "{:?}", out.status);
    assert!(out.stdout == data, "{} bytes came back, not the {} sent unchanged", out.stdout.len(), data.len());
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// With no omd, the shell still starts and runs the command, after one
/// warning on stderr that names the problem.
#[test]
fn with_no_omd_the_shell_still_runs_and_warns_once() {
    let dir = std::env::temp_dir().join(format!("om-shell-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let out = shell(&dir.join("no-omd.sock"), &dir).args(["-c", "echo ran; exit 4"]).output().expect("om-shell");
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ran\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no omd answers") && err.contains("without om"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// om-exec and om-shell hand the program the signal dispositions they were
/// given: SIGPIPE is not left ignored (Rust programs ignore it by default),
/// so `yes | head -1` ends `yes` by SIGPIPE, without an error, as natively.
#[test]
fn programs_start_with_the_signal_dispositions_they_were_given() {
    let c = Cluster::start(1);
    let probe = "grep SigIgn /proc/self/status; yes | head -1";
    let native = Command::new("sh").args(["-c", probe]).output().expect("sh");
    let exec = Command::new(bin("om-exec"))
        .env("OM_SOCKET", c.socket(1))
        .args(["--", "sh", "-c", probe])
        .output()
        .expect("om-exec");
    let shell = shell(c.socket(1), &c.path("")).args(["-c", probe]).output().expect("om-shell");
    for (who, o) in [("om-exec", &exec), ("om-shell", &shell)] {
        assert_eq!(String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&native.stdout), "{who}");
        assert_eq!(String::from_utf8_lossy(&o.stderr), String::from_utf8_lossy(&native.stderr), "{who}");
    }
}
