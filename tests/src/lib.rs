//! Helpers for om's end-to-end tests: a cluster of real `omd` daemons on
//! this host (each with its own node id, port, control socket and state dir),
//! and the fixtures and tools run against it.

pub mod load;
pub mod stress;
pub mod sys;

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Directory holding the built binaries (target/debug or target/release).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let here = exe.parent().expect("exe dir");
    // Tests live in target/PROFILE/deps, bench binaries in target/PROFILE.
    let dir =
        if here.join("omd").exists() { here.to_path_buf() } else { here.parent().expect("target dir").to_path_buf() };
    for b in ["omd", "omctl", "om-exec", "counter"] {
        assert!(
            dir.join(b).exists(),
            "{} is missing: build the binaries first with `cargo build --workspace` (the README's test command does)",
            dir.join(b).display()
        );
    }
    dir
}

pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// om needs root here: ptrace of any process, PR_SET_MM_MAP (CAP_SYS_ADMIN).
pub fn require_root() {
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "om's end-to-end tests need root (CAP_SYS_PTRACE and CAP_SYS_ADMIN); run them as root");
}

static NEXT_PORT: AtomicU32 = AtomicU32::new(0);

/// A port for a daemon: below the ephemeral range (so no outgoing connection
/// of ours can hold it), distinct within this test process, and bindable now.
fn free_port() -> u16 {
    let base = (std::process::id() % 400) * 30;
    loop {
        let n = NEXT_PORT.fetch_add(1, Ordering::SeqCst);
        let port = 20000 + ((base + n) % 12000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub struct Node {
    pub id: u32,
    pub port: u16,
    pub socket: PathBuf,
    child: Option<Child>,
}

pub struct Cluster {
    pub dir: PathBuf,
    pub nodes: Vec<Node>,
    extra: Vec<Vec<String>>,
    /// Whether the daemons balance by themselves (off here: these clusters
    /// share one machine's load, so tests place processes by hand; the
    /// balancer is tested on `omctl sim`, whose nodes have CPU quotas).
    balance: bool,
}

impl Cluster {
    /// Start `n` daemons that know each other as static peers.
    pub fn start(n: u32) -> Cluster {
        Self::start_with(n, |_| Vec::new())
    }

    /// Like [`Cluster::start`], with extra omd flags per node.
    pub fn start_with(n: u32, extra: impl Fn(u32) -> Vec<String>) -> Cluster {
        require_root();
        // Under /tmp, not the checkout: tests that run programs as another
        // user need to reach the control sockets.
        let base = std::env::temp_dir().join("om-e2e");
        let _ = std::fs::create_dir_all(&base);
        let _ = std::fs::set_permissions(&base, std::os::unix::fs::PermissionsExt::from_mode(0o755));
        let dir = base.join(format!("{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::SeqCst)));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("test dir");
        om_runtime::link::ClusterKey::create(&dir.join("cluster.key")).expect("cluster key");
        let nodes = (1..=n)
            .map(|id| Node { id, port: free_port(), socket: dir.join(format!("n{id}.sock")), child: None })
            .collect();
        let mut c = Cluster { dir, nodes, extra: (1..=n).map(&extra).collect(), balance: false };
        for id in 1..=n {
            c.start_node(id);
        }
        for id in 1..=n {
            c.wait_nodes(id, Duration::from_secs(10), |v| {
                v.len() == n as usize && v.iter().all(|x| x["state"] == "alive" && x["cpus"].as_u64() > Some(0))
            })
            .unwrap_or_else(|v| panic!("node {id} did not see the cluster form: {v:?}\n{}", c.logs()));
        }
        c
    }

    /// `omctl --json nodes` on node `id`.
    pub fn nodes(&self, id: u32) -> Vec<serde_json::Value> {
        let o = self.omctl(id, &["--json", "nodes"]);
        assert!(o.status.success(), "omctl nodes on node {id}: {}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).expect("json").as_array().expect("array").clone()
    }

    /// Poll node `id`'s view until `ok` holds; Err(last view) at the deadline.
    pub fn wait_nodes(
        &self,
        id: u32,
        timeout: Duration,
        ok: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Result<Duration, Vec<serde_json::Value>> {
        let t0 = Instant::now();
        loop {
            let v = self.nodes(id);
            if ok(&v) {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() > timeout {
                return Err(v);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn start_node(&mut self, id: u32) {
        let peers: Vec<String> =
            self.nodes.iter().filter(|x| x.id != id).map(|x| format!("--peer={}=127.0.0.1:{}", x.id, x.port)).collect();
        let node = &self.nodes[(id - 1) as usize];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("n{id}.log")))
            .expect("log");
        let child = Command::new(bin("omd"))
            .arg(format!("--node-id={id}"))
            .arg(format!("--listen=127.0.0.1:{}", node.port))
            .arg(format!("--socket={}", node.socket.display()))
            .arg(format!("--state-dir={}", self.dir.join(format!("s{id}")).display()))
            .arg(format!("--key={}", self.key_file().display()))
            .args(peers)
            .args((!self.balance).then_some("--no-balance"))
            .args(&self.extra[(id - 1) as usize])
            // OM_TEST_LOG=debug for the daemons' debug logs.
            .env("RUST_LOG", std::env::var("OM_TEST_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start omd");
        let socket = node.socket.clone();
        self.nodes[(id - 1) as usize].child = Some(child);
        let t0 = Instant::now();
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(t0.elapsed() < Duration::from_secs(10), "omd {id} did not come up; log:\n{}", self.log(id));
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The cluster key the daemons were started with.
    pub fn key_file(&self) -> PathBuf {
        self.dir.join("cluster.key")
    }

    /// SIGKILL one daemon.
    pub fn kill_node(&mut self, id: u32) {
        if let Some(mut c) = self.nodes[(id - 1) as usize].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn node_pid(&self, id: u32) -> Option<u32> {
        self.nodes[(id - 1) as usize].child.as_ref().map(Child::id)
    }

    pub fn socket(&self, id: u32) -> &Path {
        &self.nodes[(id - 1) as usize].socket
    }

    pub fn log(&self, id: u32) -> String {
        std::fs::read_to_string(self.dir.join(format!("n{id}.log"))).unwrap_or_default()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `om-exec` on node `id` running a fixture (or any program), output to files.
    pub fn om_exec(&self, id: u32, prog: &Path, args: &[&str], out: &str) -> Child {
        Command::new(bin("om-exec"))
            .env("OM_SOCKET", self.socket(id))
            .arg("--")
            .arg(prog)
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(self.path(out)).expect("out"))
            .stderr(std::fs::File::create(self.path(&format!("{out}.err"))).expect("err"))
            .spawn()
            .expect("om-exec")
    }

    /// Start `prog` under om-exec on node `id` with its stdin and stdout
    /// piped to the test, and read its first line (a fixture's `ready`).
    /// Returns the child (its stdin still set), its stdout and that line.
    pub fn om_exec_piped(
        &self,
        id: u32,
        prog: &Path,
        args: &[&str],
    ) -> (Child, std::io::BufReader<std::process::ChildStdout>, String) {
        use std::io::BufRead;
        let mut p = Command::new(bin("om-exec"))
            .env("OM_SOCKET", self.socket(id))
            .arg("--")
            .arg(prog)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("om-exec");
        // A test that waits for a line that never comes fails, with its
        // logs, instead of hanging the suite: the program is killed after
        // 5 minutes, which ends its output.
        watchdog(p.id(), Duration::from_secs(300));
        let mut out = std::io::BufReader::new(p.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("first line");
        (p, out, line.trim().to_string())
    }

    pub fn omctl(&self, id: u32, args: &[&str]) -> Output {
        Command::new(bin("omctl")).env("OM_SOCKET", self.socket(id)).args(args).output().expect("omctl")
    }

    /// `omctl migrate PID TO` on the home node; Ok or the error text.
    pub fn migrate(&self, home: u32, pid: u32, to: &str) -> Result<(), String> {
        let o = self.omctl(home, &["migrate", &pid.to_string(), to]);
        if o.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&o.stderr).into_owned())
        }
    }

    pub fn ps(&self, id: u32) -> serde_json::Value {
        let o = self.omctl(id, &["--json", "ps"]);
        assert!(o.status.success(), "omctl ps failed: {}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).expect("ps json")
    }

    /// Where `pid` runs now, per its home's `omctl ps --json`.
    pub fn where_is(&self, home: u32, pid: u32) -> Option<u64> {
        self.ps(home).as_array()?.iter().find(|p| p["pid"] == pid)?.get("where")?.as_u64()
    }

    pub fn logs(&self) -> String {
        self.nodes.iter().map(|n| format!("--- node {} ---\n{}", n.id, self.log(n.id))).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                if let Ok(Some(st)) = c.try_wait() {
                    let _ = writeln!(std::io::stderr(), "omd of node {} had ended: {st:?}", n.id);
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if std::thread::panicking() {
            let _ = writeln!(std::io::stderr(), "daemon logs kept in {}\n{}", self.dir.display(), self.logs());
        } else if std::env::var_os("OM_KEEP_LOGS").is_some() {
            let _ = writeln!(std::io::stderr(), "daemon logs kept in {} (OM_KEEP_LOGS)", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Wait until `path` has at least `n` lines; returns its lines.
pub fn wait_lines(path: &Path, n: usize, timeout: Duration) -> Vec<String> {
    let t0 = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(t0.elapsed() < timeout, "{} has {} lines, waited for {n}: {text}", path.display(), lines.len());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kill process `pid` (a child of this test, not yet waited for) if it
/// still runs after `after`.
pub fn watchdog(pid: u32, after: Duration) {
    let Ok(fd) = om_runtime::sys::pidfd_open(pid as i32, 0) else { return };
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let ended = om_runtime::sys::poll(&[(fd.as_raw_fd(), libc::POLLIN)], after.as_millis() as i32)
            .map_or(true, |r| r[0] != 0);
        if !ended {
            let _ = writeln!(std::io::stderr(), "process {pid} still runs after {after:?}: killing it");
            let _ = om_runtime::sys::kill(pid as i32, libc::SIGKILL);
        }
    });
}

/// Wait for a child with a deadline; its exit status.
pub fn wait_child(c: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(s) = c.try_wait().expect("try_wait") {
            return s;
        }
        if t0.elapsed() > timeout {
            let _ = c.kill();
            panic!("process {} did not finish within {timeout:?}", c.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A command's stdout and stderr, as text.
pub fn output_text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The logs of a simulated cluster's daemons (`omctl sim`), the last
/// `tail` lines of each (all with None).
pub fn sim_logs(tail: Option<usize>) -> String {
    (1..=8)
        .filter_map(|i| {
            let l = std::fs::read_to_string(format!("/run/om-sim/node-{i}/omd.log")).ok()?;
            let lines: Vec<&str> = l.lines().collect();
            let from = tail.map_or(0, |t| lines.len().saturating_sub(t));
            Some(format!("--- node {i} ---\n{}\n", lines[from..].join("\n")))
        })
        .collect()
}

/// Copies of built binaries in a directory every user can reach (the
/// checkout may sit under a private one), for tests that run programs as
/// another user; removed when dropped.
pub struct OpenDir(pub PathBuf);

impl OpenDir {
    pub fn with(tag: &str, bins: &[&str]) -> OpenDir {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("om-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::set_permissions(&dir, PermissionsExt::from_mode(0o755)).expect("chmod dir");
        for b in bins {
            std::fs::copy(bin(b), dir.join(b)).expect("copy a binary");
        }
        OpenDir(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// `om-exec -- PROG ARGS...` from this directory, run as uid and gid `id`
    /// with no groups (setpriv), against the daemon on `socket`.
    pub fn om_exec_as(&self, id: u32, socket: &Path, prog: &str, args: &[&str]) -> Command {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={id}"))
            .arg(format!("--regid={id}"))
            .args(["--clear-groups", "--"])
            .arg(self.path("om-exec"))
            .arg("--")
            .arg(self.path(prog))
            .args(args)
            .env("OM_SOCKET", socket);
        c
    }
}

impl Drop for OpenDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Read a terminal (a pty's master side) into `seen` until it holds
/// `want`; fails the test after `timeout`.
pub fn read_until(term: &mut impl std::io::Read, want: &str, seen: &mut String, timeout: Duration) {
    let t0 = Instant::now();
    let mut b = [0u8; 4096];
    while !seen.contains(want) {
        assert!(t0.elapsed() < timeout, "terminal never showed {want:?}: {seen:?}");
        let n = term.read(&mut b).expect("read tty");
        seen.push_str(&String::from_utf8_lossy(&b[..n]));
    }
}
