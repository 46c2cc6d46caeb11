//! The fidelity suite: every program in `fidelity/src/bin/` is run natively,
//! away (moved to node 2 and checked there), across (2 -> 3, checked on
//! node 3) and bounced (2 -> 3 -> home, then checked), and must print the
//! same lines and end the same way in all four. A case marked `refused` must be refused by om with a reason, and
//! then pass at home; a `terminal` case runs in a session of its own with a
//! pty as its controlling terminal. See `fidelity/src/lib.rs` for how a case
//! is written.
//! `OM_FIDELITY=name,name` runs only those cases; `OM_FIDELITY_LOGS=1` prints
//! the daemons' logs at the end.

use om_tests::{Cluster, OpenDir};
use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const NOBODY: u32 = 65534;
const WAIT: Duration = Duration::from_secs(30);

struct Case {
    name: String,
    nobody: bool,
    refused: bool,
    /// Started in a session of its own whose controlling terminal (a pty) is its stdin.
    terminal: bool,
    /// Its check starts when the terminal hangs up, not on SIGUSR2.
    hangup: bool,
}

fn cases() -> Vec<Case> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fidelity/src/bin");
    let only: Option<Vec<String>> =
        std::env::var("OM_FIDELITY").ok().map(|s| s.split(',').map(str::to_string).collect());
    let mut v: Vec<Case> = std::fs::read_dir(&dir)
        .expect("fidelity/src/bin")
        .filter_map(|e| {
            let p = e.ok()?.path();
            let name = p.file_stem()?.to_str()?.to_string();
            if p.extension()? != "rs" || only.as_ref().is_some_and(|o| !o.contains(&name)) {
                return None;
            }
            let src = std::fs::read_to_string(&p).ok()?;
            let says = |what: &str| src.lines().take(5).any(|l| l.trim() == format!("//! fidelity: {what}"));
            Some(Case {
                nobody: says("user nobody"),
                refused: says("refused"),
                terminal: says("terminal") || says("hangup"),
                hangup: says("hangup"),
                name,
            })
        })
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Native,
    Away,
    /// 2 -> 3, checked on node 3 (the image comes from a guest).
    Across,
    Bounced,
}

/// What one run printed after `ready`, and how it ended.
#[derive(Debug, PartialEq)]
struct Outcome {
    lines: Vec<String>,
    status: Option<i32>,
    signal: Option<i32>,
}

/// Start a case; with its terminal's master side when it has one (keep it
/// open while the case runs: closing it hangs the terminal up).
fn spawn(dir: &OpenDir, case: &Case, om: Option<&Path>) -> (Child, Option<std::fs::File>) {
    let prog = dir.path(&case.name);
    let mut cmd = match (om, case.nobody) {
        (Some(sock), true) => dir.om_exec_as(NOBODY, sock, &case.name, &[]),
        (Some(sock), false) => {
            let mut c = Command::new(dir.path("om-exec"));
            c.arg("--").arg(&prog).env("OM_SOCKET", sock);
            c
        }
        (None, true) => {
            let mut c = Command::new("setpriv");
            c.args([format!("--reuid={NOBODY}"), format!("--regid={NOBODY}"), "--clear-groups".into(), "--".into()])
                .arg(&prog);
            c
        }
        (None, false) => Command::new(&prog),
    };
    cmd.current_dir("/tmp").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut master = None;
    if case.terminal {
        let (m, s) = om_tests::sys::openpty().expect("a pseudo-terminal");
        // Only we hold the master side, so closing it hangs the terminal up.
        // SAFETY: fcntl on our own fd with an integer argument.
        unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&m), libc::F_SETFD, libc::FD_CLOEXEC) };
        cmd.stdin(std::fs::File::from(s));
        om_tests::sys::controlling_tty_on_spawn(&mut cmd);
        master = Some(std::fs::File::from(m));
    }
    (cmd.spawn().expect("start a case"), master)
}

fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    rx
}

fn run(c: &Cluster, dir: &OpenDir, case: &Case, mode: Mode) -> Result<Outcome, String> {
    let om = (mode != Mode::Native).then(|| c.socket(1));
    let (mut child, mut terminal) = spawn(dir, case, om);
    let pid = child.id();
    let rx = lines_of(&mut child);
    let r = drive(c, case, mode, pid, &rx);
    if r.is_err() {
        let _ = child.kill();
    }
    r?;
    if case.hangup {
        drop(terminal.take());
    } else {
        // SAFETY: a plain signal to the case we started.
        unsafe { libc::kill(pid as i32, libc::SIGUSR2) };
    }
    let mut lines = Vec::new();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
            Ok(l) => lines.push(l),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                return Err(format!("no end after the check; printed {lines:?}"));
            }
        }
    }
    let st = om_tests::wait_child(&mut child, WAIT);
    use std::os::unix::process::ExitStatusExt;
    Ok(Outcome { lines, status: st.code(), signal: st.signal() })
}

/// Up to the check: ready, then the moves of the mode.
fn drive(c: &Cluster, case: &Case, mode: Mode, pid: u32, rx: &mpsc::Receiver<String>) -> Result<(), String> {
    match rx.recv_timeout(WAIT) {
        Ok(l) if l == "ready" => {}
        Ok(l) => return Err(format!("printed {l:?} instead of ready")),
        Err(_) => return Err("never became ready".into()),
    }
    let moves: &[&str] = match mode {
        Mode::Native => &[],
        Mode::Away => &["2"],
        Mode::Across => &["2", "3"],
        Mode::Bounced => &["2", "3", "home"],
    };
    for to in moves {
        match (c.migrate(1, pid, to), case.refused) {
            (Ok(()), false) => {}
            (Ok(()), true) => return Err(format!("moved to {to}, but om should refuse it")),
            (Err(e), true) => {
                if e.trim().is_empty() {
                    return Err("refused without a reason".into());
                }
                if c.where_is(1, pid) != Some(1) {
                    return Err(format!("refused ({e}), but not running at home"));
                }
                return Ok(());
            }
            (Err(e), false) => return Err(format!("move to {to} failed: {e}")),
        }
    }
    if mode == Mode::Away && c.where_is(1, pid) != Some(2) {
        return Err(format!("not on node 2 when checked: {:?}", c.where_is(1, pid)));
    }
    if mode == Mode::Across && c.where_is(1, pid) != Some(3) {
        return Err(format!("not on node 3 when checked: {:?}", c.where_is(1, pid)));
    }
    Ok(())
}

#[test]
fn every_case_behaves_away_and_bounced_as_natively() {
    let cases = cases();
    assert!(!cases.is_empty(), "no cases in fidelity/src/bin (or none named in OM_FIDELITY)");
    let mut bins: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    bins.push("om-exec");
    let dir = OpenDir::with("fidelity", &bins);
    let c = Cluster::start(3);
    let mut failures = Vec::new();
    for case in &cases {
        let native = match run(&c, &dir, case, Mode::Native) {
            Ok(o) if o.lines.last().map(String::as_str) == Some("PASS") => o,
            Ok(o) => {
                failures.push(format!("{}: fails natively (this machine lacks it?): {:?}", case.name, o.lines));
                continue;
            }
            Err(e) => {
                failures.push(format!("{}: natively: {e}", case.name));
                continue;
            }
        };
        for mode in [Mode::Away, Mode::Across, Mode::Bounced] {
            match run(&c, &dir, case, mode) {
                Ok(o) if o == native => {}
                Ok(o) => failures.push(format!(
                    "{} {mode:?}: differs from native\n  native: {:?} exit {:?}/{:?}\n  om:     {:?} exit {:?}/{:?}",
                    case.name, native.lines, native.status, native.signal, o.lines, o.status, o.signal
                )),
                Err(e) => failures.push(format!("{} {mode:?}: {e}", case.name)),
            }
        }
        eprintln!("case {} done", case.name);
    }
    if std::env::var_os("OM_FIDELITY_LOGS").is_some() {
        eprintln!("{}", c.logs());
    }
    assert!(
        failures.is_empty(),
        "{} runs differ ({} cases):\n{}\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n"),
        tail_logs(&c)
    );
}

fn tail_logs(c: &Cluster) -> String {
    let logs = c.logs();
    let lines: Vec<&str> =
        logs.lines().filter(|l| l.contains("WARN") || l.contains("ERROR") || l.starts_with("---")).collect();
    lines.join("\n")
}
