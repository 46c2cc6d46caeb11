//! The load balancer on a simulated cluster (`omctl sim up 4`, every node a
//! 0.4-CPU quota): jobs started on node 1 spread by themselves, pinned ones
//! stay, blocked nodes take none, expelled guests come home and finish, and
//! nothing thrashes. Also `om-exec --node`, `omctl speed` and `omctl mon`.

use om_tests::{bin, require_root, wait_child};
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One sim at a time: it owns the default socket and /run/om-sim.
static SIM: Mutex<()> = Mutex::new(());

fn socket(node: u32) -> PathBuf {
    if node == 1 {
        PathBuf::from("/run/om/omd.sock")
    } else {
        PathBuf::from(format!("/run/om-sim/node-{node}/omd.sock"))
    }
}

fn omctl(node: u32, args: &[&str]) -> Output {
    Command::new(bin("omctl")).env("OM_SOCKET", socket(node)).args(args).output().expect("omctl")
}

fn text(o: &Output) -> String {
    om_tests::output_text(o)
}

fn logs() -> String {
    om_tests::sim_logs(Some(60))
}

/// A sim for one test, always taken down; jobs it started are killed.
struct Sim {
    jobs: Vec<Child>,
    dir: PathBuf,
}

impl Sim {
    fn up(args: &[&str]) -> Sim {
        require_root();
        let _ = omctl(1, &["sim", "down"]);
        let mut a = vec!["sim", "up"];
        a.extend_from_slice(args);
        let o = omctl(1, &a);
        assert!(o.status.success(), "omctl sim up failed:\n{}\n{}", text(&o), logs());
        let dir = std::env::temp_dir().join(format!("om-balance-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        Sim { jobs: Vec::new(), dir }
    }

    /// Start `spin MILLIONS` on node 1 under om-exec with extra flags.
    fn spin(&mut self, millions: u64, flags: &[&str]) -> u32 {
        let out = self.dir.join(format!("out-{}", self.jobs.len()));
        let c = Command::new(bin("om-exec"))
            .env_remove("OM_SOCKET")
            .args(flags)
            .arg("--")
            .arg(bin("spin"))
            .arg(millions.to_string())
            .stdout(std::fs::File::create(&out).expect("output file"))
            .stderr(Stdio::inherit())
            .spawn()
            .expect("om-exec");
        let pid = c.id();
        self.jobs.push(c);
        pid
    }

    fn output(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("out-{i}"))).unwrap_or_default()
    }

    /// pid -> node it runs on, from node 1's `omctl ps`.
    fn places(&self) -> HashMap<u32, u64> {
        let o = omctl(1, &["--json", "ps"]);
        let v: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        v.as_array()
            .map(|a| a.iter().filter_map(|p| Some((p["pid"].as_u64()? as u32, p["where"].as_u64()?))).collect())
            .unwrap_or_default()
    }

    fn ps(&self) -> Vec<Value> {
        let o = omctl(1, &["--json", "ps"]);
        serde_json::from_slice::<Value>(&o.stdout).ok().and_then(|v| v.as_array().cloned()).unwrap_or_default()
    }

    /// Jobs per node among `pids`.
    fn spread(&self, pids: &[u32]) -> HashMap<u64, usize> {
        let mut per: HashMap<u64, usize> = HashMap::new();
        for (pid, w) in self.places() {
            if pids.contains(&pid) {
                *per.entry(w).or_default() += 1;
            }
        }
        per
    }

    fn wait_for(&self, what: &str, timeout: Duration, mut ok: impl FnMut(&Sim) -> bool) {
        let t = Instant::now();
        while t.elapsed() < timeout {
            if ok(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!("{what} within {timeout:?}; places {:?}\n{}", self.places(), logs());
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", logs());
        }
        for c in &mut self.jobs {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = omctl(1, &["sim", "down"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn lock() -> std::sync::MutexGuard<'static, ()> {
    SIM.lock().unwrap_or_else(|p| p.into_inner())
}

/// Long enough to outlive any test here (minutes at 0.4 CPU).
const LONG: u64 = 400_000;

#[test]
fn eight_jobs_spread_by_themselves_and_do_not_thrash() {
    let _g = lock();
    let mut sim = Sim::up(&["4"]);
    let pids: Vec<u32> = (0..8).map(|_| sim.spin(LONG, &[])).collect();
    sim.wait_for("8 jobs spread 2 per node", Duration::from_secs(20), |s| {
        let per = s.spread(&pids);
        per.len() == 4 && per.values().all(|&n| n == 2)
    });
    // Steady state: over 10 s, no process moves more than once.
    let mut last = sim.places();
    let mut moves: HashMap<u32, usize> = HashMap::new();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(250));
        let now = sim.places();
        for (pid, w) in &now {
            if last.get(pid).is_some_and(|o| o != w) {
                *moves.entry(*pid).or_default() += 1;
            }
        }
        last = now;
    }
    assert!(moves.values().all(|&n| n <= 1), "processes moved more than once in 10 s: {moves:?}\n{}", logs());
    // ps says why each one stays.
    for p in sim.ps() {
        let why = p["why"].as_str().unwrap_or("");
        assert!(!why.is_empty(), "no reason given for {p}");
    }
}

#[test]
fn locked_processes_never_move_and_unlock_lets_them() {
    let _g = lock();
    let mut sim = Sim::up(&["4"]);
    let a = sim.spin(LONG, &["--lock"]);
    let b = sim.spin(LONG, &["--lock"]);
    let c = sim.spin(LONG, &[]);
    sim.wait_for("om-exec registers", Duration::from_secs(5), |s| s.places().contains_key(&c));
    let o = omctl(1, &["lock", &c.to_string()]);
    assert!(o.status.success(), "omctl lock: {}", text(&o));
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(8) {
        let places = sim.places();
        for pid in [a, b, c] {
            assert_eq!(places.get(&pid), Some(&1), "locked process {pid} moved: {places:?}\n{}", logs());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let ps = sim.ps();
    assert!(ps.iter().all(|p| p["why"] == "locked"), "{ps:?}");
    let o = omctl(1, &["unlock", &a.to_string()]);
    assert!(o.status.success(), "omctl unlock: {}", text(&o));
    sim.wait_for("the unlocked process moves", Duration::from_secs(8), |s| s.places().get(&a) != Some(&1));
    let o = omctl(1, &["lock", "999999"]);
    assert!(!o.status.success() && text(&o).contains("not under om"), "{}", text(&o));
}

#[test]
fn blocked_node_takes_no_guests_and_expelled_guests_finish_at_home() {
    let _g = lock();
    let mut sim = Sim::up(&["4"]);
    let o = omctl(2, &["block"]);
    assert!(o.status.success(), "omctl block: {}", text(&o));
    let pids: Vec<u32> = (0..6).map(|_| sim.spin(LONG, &[])).collect();
    sim.wait_for("jobs spread over nodes 1, 3 and 4", Duration::from_secs(20), |s| {
        let per = s.spread(&pids);
        per.get(&3).is_some_and(|&n| n >= 1) && per.get(&4).is_some_and(|&n| n >= 1)
    });
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        assert_eq!(sim.spread(&pids).get(&2), None, "blocked node 2 took a guest\n{}", logs());
        std::thread::sleep(Duration::from_millis(250));
    }
    for c in &mut sim.jobs {
        let _ = c.kill();
        let _ = c.wait();
    }
    // Shorter jobs whose result we check: about 10 s of CPU at 0.4 CPU each.
    let expect = {
        let o = Command::new(bin("spin")).arg("2000").output().expect("spin natively");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let o = omctl(2, &["unblock"]);
    assert!(o.status.success(), "omctl unblock: {}", text(&o));
    sim.wait_for("node 1 hears that node 2 takes guests again", Duration::from_secs(5), |_| {
        let o = omctl(1, &["--json", "nodes"]);
        let v: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        v.as_array().is_some_and(|a| a.iter().any(|n| n["id"] == 2 && n["accepts"] == true))
    });
    let first = sim.jobs.len();
    let short: Vec<u32> = (0..3).map(|_| sim.spin(2000, &[])).collect();
    sim.wait_for("a job on node 2 after unblock", Duration::from_secs(15), |s| {
        s.spread(&short).get(&2).is_some_and(|&n| n >= 1)
    });
    let o = omctl(2, &["expel"]);
    assert!(o.status.success(), "omctl expel: {}", text(&o));
    sim.wait_for("every guest of node 2 gone", Duration::from_secs(5), |s| !s.spread(&short).contains_key(&2));
    let nodes = omctl(2, &["--json", "nodes"]);
    let v: Value = serde_json::from_slice(&nodes.stdout).expect("nodes json");
    assert_eq!(v[0]["accepts"], false, "expel leaves the node blocked: {v}");
    for i in first..first + 3 {
        let st = wait_child(&mut sim.jobs[i], Duration::from_secs(120));
        assert!(st.success(), "job {i}: {st:?}\n{}", logs());
        assert_eq!(sim.output(i), expect, "job {i} printed a wrong result");
    }
}

#[test]
fn om_exec_node_starts_there_and_speed_is_spread() {
    let _g = lock();
    let mut sim = Sim::up(&["4"]);
    let p = sim.spin(LONG, &["--node", "3", "--lock"]);
    sim.wait_for("the process runs on node 3", Duration::from_secs(5), |s| s.places().get(&p) == Some(&3));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(sim.places().get(&p), Some(&3), "a locked process started on node 3 stays there");
    let o = Command::new(bin("om-exec")).env_remove("OM_SOCKET").args(["--node", "9", "true"]).output().unwrap();
    assert!(!o.status.success() && text(&o).contains("unknown node 9"), "{}", text(&o));

    let o = omctl(1, &["speed", "2.5"]);
    assert!(o.status.success(), "omctl speed: {}", text(&o));
    let t = Instant::now();
    loop {
        let o = omctl(3, &["--json", "nodes"]);
        let v: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        let n1 = v.as_array().and_then(|a| a.iter().find(|n| n["id"] == 1).cloned()).unwrap_or(Value::Null);
        if n1["speed"].as_f64() == Some(2.5) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "node 3 never saw node 1's speed 2.5: {v}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let o = omctl(1, &["speed", "0"]);
    assert!(!o.status.success() && text(&o).contains("positive"), "{}", text(&o));
}

#[test]
fn io_heavy_job_stays_home_while_cpu_jobs_leave() {
    let _g = lock();
    let mut sim = Sim::up(&["4"]);
    let file = sim.dir.join("stream");
    std::fs::write(&file, vec![7u8; 32 << 20]).expect("stream file");
    let py = {
        let o = Command::new("python3").args(["-c", "import sys; print(sys.executable)"]).output().expect("python3");
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let stream = format!(
        "import time\nt=time.time()\nwhile time.time()-t<30:\n  f=open('{}','rb',buffering=0)\n  while f.read(65536): pass\n  f.close()",
        file.display()
    );
    let io = Command::new(bin("om-exec"))
        .env_remove("OM_SOCKET")
        .args(["--", &py, "-c", &stream])
        .stdout(Stdio::null())
        .spawn()
        .expect("om-exec");
    let io_pid = io.id();
    sim.jobs.push(io);
    let cpu: Vec<u32> = (0..6).map(|_| sim.spin(LONG, &[])).collect();
    sim.wait_for("the CPU-bound jobs leave node 1", Duration::from_secs(20), |s| {
        s.spread(&cpu).get(&1).copied().unwrap_or(0) <= 1
    });
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(6) {
        assert_eq!(sim.places().get(&io_pid), Some(&1), "the I/O-heavy job left home\n{}", logs());
        std::thread::sleep(Duration::from_millis(250));
    }
    let ps = sim.ps();
    let why = ps.iter().find(|p| p["pid"] == io_pid).map(|p| p["why"].to_string()).unwrap_or_default();
    assert!(why.contains("I/O-bound"), "ps says: {why}");
}

#[test]
fn node_filling_its_memory_ushers_a_process_out_before_anything_is_killed() {
    let _g = lock();
    // Every node has 400 MiB; two jobs each grow to 240 MiB, slowly, mostly
    // asleep (no reason to move for CPU). Together they do not fit.
    let mut sim = Sim::up(&["3", "--mem", "400"]);
    let grow = "import time\na=[]\nfor i in range(48):\n  a.append(bytes(range(256))*20480)\n  time.sleep(0.25)\n\
                for i in range(20):\n  time.sleep(0.25)\nprint('done', sum(len(x) for x in a))";
    let mut pids = Vec::new();
    for i in 0..2 {
        let out = sim.dir.join(format!("out-{i}"));
        let c = Command::new(bin("om-exec"))
            .env_remove("OM_SOCKET")
            .args(["--", "python3", "-c", grow])
            .stdout(std::fs::File::create(&out).expect("output file"))
            .spawn()
            .expect("om-exec");
        pids.push(c.id());
        sim.jobs.push(c);
    }
    let mut moved = false;
    for i in 0..2 {
        let t = Instant::now();
        loop {
            moved |= sim.places().iter().any(|(p, w)| pids.contains(p) && *w != 1);
            if let Some(st) = sim.jobs[i].try_wait().expect("wait") {
                assert!(st.success(), "job {i} ended with {st:?} (killed for memory?)\n{}", logs());
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(60), "job {i} still running\n{}", logs());
            std::thread::sleep(Duration::from_millis(200));
        }
        assert_eq!(sim.output(i).trim(), format!("done {}", 48 * (5 << 20)));
    }
    assert!(moved, "no process left node 1\n{}", logs());
    // Moved by the balancer (the memory cost, or the low-memory rule), not by hand.
    assert!(logs().contains("balancer moves the process"), "{}", logs());
}

/// Run `omctl mon` on a pseudo-terminal of 80x24, type `key`, and return
/// its exit status and everything it drew.
fn mon_with_key(key: &[u8]) -> (std::process::ExitStatus, String) {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    let (master, slave) = om_tests::sys::openpty().expect("openpty");
    let mut child = {
        let mut cmd = Command::new(bin("omctl"));
        cmd.env_remove("OM_SOCKET").env("TERM", "xterm").arg("mon");
        cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        om_tests::sys::controlling_tty_on_spawn(&mut cmd);
        cmd.spawn().expect("omctl mon")
    };
    let mut master = std::fs::File::from(master);
    let fd = master.as_raw_fd();
    om_tests::sys::set_nonblocking(fd);
    let mut seen = Vec::new();
    let read_some = |master: &mut std::fs::File, seen: &mut Vec<u8>| {
        let mut buf = [0u8; 8192];
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
        }
    };
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) && !String::from_utf8_lossy(&seen).contains("processes") {
        read_some(&mut master, &mut seen);
        std::thread::sleep(Duration::from_millis(50));
    }
    master.write_all(key).expect("type a key");
    let t = Instant::now();
    let status = loop {
        read_some(&mut master, &mut seen);
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if t.elapsed() > Duration::from_secs(3) {
            let _ = child.kill();
            panic!("omctl mon did not exit on {key:?}: {}", String::from_utf8_lossy(&seen));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    read_some(&mut master, &mut seen);
    (status, String::from_utf8_lossy(&seen).into_owned())
}

#[test]
fn mon_draws_in_80x24_and_quits_on_q_and_ctrl_c() {
    let _g = lock();
    let mut sim = Sim::up(&["2"]);
    let _p = sim.spin(LONG, &[]);
    for key in [&b"q"[..], &b"\x03"[..]] {
        let (st, screen) = mon_with_key(key);
        assert!(st.success(), "omctl mon exit on {key:?}: {st:?}\n{screen}");
        assert!(screen.contains("om mon") && screen.contains("nodes") && screen.contains("alive"), "{screen}");
        // It gave the terminal back: left the alternate screen.
        assert!(screen.contains("\x1b[?1049l"), "terminal not restored: {screen:?}");
    }
}

/// Two gangs of two busy processes each (parent and child sharing a page)
/// start on node 1: the balancer moves one gang, whole, to node 2, and no
/// gang is ever split between nodes.
#[test]
fn the_balancer_moves_a_gang_as_one_job_and_never_splits_it() {
    let _g = lock();
    let sim = Sim::up(&["2"]);
    let mut kids = Vec::new();
    let mut gangs: Vec<(u32, u32)> = Vec::new();
    for i in 0..2 {
        let out = sim.dir.join(format!("gang-{i}"));
        let c = Command::new(bin("om-exec"))
            .env_remove("OM_SOCKET")
            .arg("--")
            .arg(bin("gangspin"))
            .args(["2", "60"])
            .stdout(std::fs::File::create(&out).expect("output file"))
            .spawn()
            .expect("om-exec");
        let t = Instant::now();
        let child = loop {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            if let Some(l) = text.lines().next() {
                break l.trim_start_matches("ready [").trim_end_matches(']').parse::<u32>().expect("child pid");
            }
            assert!(t.elapsed() < Duration::from_secs(10), "gangspin did not start");
            std::thread::sleep(Duration::from_millis(50));
        };
        gangs.push((c.id(), child));
        kids.push(c);
    }
    let split = |s: &Sim| {
        let p = s.places();
        gangs.iter().find(|(a, b)| p.contains_key(a) && p.contains_key(b) && p.get(a) != p.get(b)).copied()
    };
    let t = Instant::now();
    let mut spread = false;
    while t.elapsed() < Duration::from_secs(40) {
        if let Some(g) = split(&sim) {
            // A move in progress shows the members "migrating" on their
            // way; only a settled split is wrong.
            std::thread::sleep(Duration::from_millis(1500));
            assert!(split(&sim) != Some(g), "gang {g:?} split: {:?}\n{}", sim.places(), logs());
        }
        let p = sim.places();
        let at: Vec<Option<&u64>> = gangs.iter().map(|(a, _)| p.get(a)).collect();
        if at[0].is_some() && at[1].is_some() && at[0] != at[1] && split(&sim).is_none() {
            spread = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(spread, "the gangs never spread over the two nodes: {:?}\n{}", sim.places(), logs());
    for mut k in kids {
        let _ = k.kill();
        let _ = k.wait();
    }
}
