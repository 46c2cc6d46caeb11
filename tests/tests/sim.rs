//! `omctl sim`: a simulated cluster on this machine, and what a guest on a
//! simulated node can and cannot reach.

use om_tests::{bin, require_root, wait_child, wait_lines};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One sim at a time: it owns the default socket and /run/om-sim.
static SIM: Mutex<()> = Mutex::new(());

fn omctl(args: &[&str]) -> Output {
    Command::new(bin("omctl")).env_remove("OM_SOCKET").args(args).output().expect("omctl")
}

fn text(o: &Output) -> String {
    om_tests::output_text(o)
}

/// Brings a sim up for one test and always takes it down.
struct Sim;

impl Sim {
    fn up(args: &[&str]) -> Sim {
        require_root();
        let _ = omctl(&["sim", "down"]);
        let mut a = vec!["sim", "up"];
        a.extend_from_slice(args);
        let o = omctl(&a);
        assert!(o.status.success(), "omctl sim up failed:\n{}\n{}", text(&o), logs());
        Sim
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", logs());
        }
        let _ = omctl(&["sim", "down"]);
    }
}

fn logs() -> String {
    om_tests::sim_logs(None)
}

/// Everything `sim up` could have made that is still there.
fn leftovers() -> Vec<String> {
    let mut left = Vec::new();
    for (dir, prefix) in [("/run/netns", "omsim"), ("/sys/class/net", "omsim")] {
        for e in std::fs::read_dir(dir).map(|d| d.flatten().collect::<Vec<_>>()).unwrap_or_default() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(prefix) {
                left.push(format!("{dir}/{n}"));
            }
        }
    }
    for cg in ["/sys/fs/cgroup/cpu/om-sim", "/sys/fs/cgroup/om-sim", "/run/om-sim"] {
        if Path::new(cg).exists() {
            left.push(cg.to_string());
        }
    }
    for e in std::fs::read_dir("/proc").map(|d| d.flatten().collect::<Vec<_>>()).unwrap_or_default() {
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains("/run/om-sim/") && cmd.contains("omd") {
            left.push(format!("process {}: {cmd}", e.file_name().to_string_lossy()));
        }
    }
    left
}

/// `omctl sim up 4` makes four real nodes that see each other; `sim down`
/// leaves no namespace, interface, cgroup or process behind.
#[test]
fn sim_up_4_then_down_leaves_nothing() {
    let _g = SIM.lock().unwrap_or_else(|p| p.into_inner());
    {
        let _s = Sim::up(&["4", "--speeds", "1,1,0.5,2"]);
        let o = omctl(&["--json", "nodes"]);
        assert!(o.status.success(), "{}", text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
        let v = v.as_array().expect("array");
        assert_eq!(v.len(), 4, "{v:?}");
        assert!(v.iter().all(|n| n["state"] == "alive"), "{v:?}");
        let speed = |id: u64| v.iter().find(|n| n["id"] == id).and_then(|n| n["speed"].as_f64());
        assert_eq!((speed(3), speed(4)), (Some(0.5), Some(2.0)));
        // Each simulated node has its own namespace, address and CPU quota.
        assert!(Path::new("/run/netns/omsim-4").exists());
        let quota = ["/sys/fs/cgroup/cpu/om-sim/node-3/cpu.cfs_quota_us", "/sys/fs/cgroup/om-sim/node-3/cpu.max"]
            .iter()
            .find_map(|p| std::fs::read_to_string(p).ok())
            .expect("node 3's cgroup");
        assert!(quota.starts_with("20000"), "speed 0.5 x 0.4 CPU should be 20000/100000 us, got {quota}");
        let st = omctl(&["--json", "sim", "status"]);
        let st: serde_json::Value = serde_json::from_slice(&st.stdout).expect("status json");
        assert_eq!(st.as_array().map(Vec::len), Some(4), "{st}");
        // A second `up` is refused clearly.
        let again = omctl(&["sim", "up", "2"]);
        assert!(!again.status.success() && text(&again).contains("already up"), "{}", text(&again));
    }
    let left = leftovers();
    assert!(left.is_empty(), "sim down left: {left:?}");
    let o = omctl(&["sim", "status"]);
    assert!(!o.status.success() && text(&o).contains("no simulated cluster"), "{}", text(&o));
}

/// Without root the sim says what it needs.
#[test]
fn sim_without_root_says_what_it_needs() {
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(bin("omctl"))
        .args(["sim", "up", "2"])
        .output()
        .expect("setpriv (util-linux)");
    assert!(!o.status.success());
    assert!(text(&o).contains("needs root or user namespaces"), "{}", text(&o));
}

/// A guest on simulated node 2 reads /tmp/x and gets its home's file, not the
/// node's private one; the node's key file is out of reach. On the host it
/// runs as an unprivileged uid of its own, without capabilities, in its own
/// mount namespace holding none of the node's files, in that node's cgroup.
#[test]
fn guest_sees_home_files_and_is_sandboxed_on_its_host() {
    let _g = SIM.lock().unwrap_or_else(|p| p.into_inner());
    let _s = Sim::up(&["2"]);
    let tag = std::process::id();
    let x = format!("/tmp/om-sim-x-{tag}");
    let go = format!("/tmp/om-sim-go-{tag}");
    std::fs::write(&x, "home's file\n").expect("home /tmp/x");
    std::fs::write(format!("/run/om-sim/node-2/tmp/om-sim-x-{tag}"), "HOST'S FILE\n").expect("host /tmp/x");
    let key = "/run/om-sim/node-2/private/cluster.key";
    let script = format!(
        "import os, time, sys\nprint('ready', flush=True)\nwhile not os.path.exists('{go}'): time.sleep(0.05)\n\
         print('x:', open('{x}').read().strip(), flush=True)\n\
         try:\n    print('key:', open('{key}').read().strip(), flush=True)\n\
         except OSError as e:\n    print('key: errno', e.errno, flush=True)\n"
    );
    let out = format!("/tmp/om-sim-out-{tag}");
    let mut p = Command::new(bin("om-exec"))
        .env_remove("OM_SOCKET")
        .args(["--", "python3", "-c", &script])
        .stdout(std::fs::File::create(&out).expect("out"))
        .stdin(Stdio::null())
        .spawn()
        .expect("om-exec");
    wait_lines(Path::new(&out), 1, Duration::from_secs(30));
    let o = omctl(&["migrate", &p.id().to_string(), "2"]);
    assert!(o.status.success(), "migrate: {}", text(&o));

    // The guest process on node 2, as that node's root sees it.
    let st: serde_json::Value = serde_json::from_slice(&omctl(&["--json", "sim", "status"]).stdout).expect("json");
    let omd2 =
        st.as_array().and_then(|a| a.iter().find(|n| n["id"] == 2)).and_then(|n| n["pid"].as_u64()).expect("pid");
    let t0 = Instant::now();
    let guest = loop {
        let kids: Vec<String> = std::fs::read_dir(format!("/proc/{omd2}/task"))
            .map(|d| d.flatten().filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok()).collect())
            .unwrap_or_default();
        if let Some(k) = kids.join(" ").split_whitespace().next() {
            break k.to_string();
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "no guest under omd 2");
        std::thread::sleep(Duration::from_millis(50));
    };
    let status = std::fs::read_to_string(format!("/proc/{guest}/status")).expect("guest status");
    let field = |k: &str| {
        status.lines().find(|l| l.starts_with(k)).map(|l| l[k.len()..].trim().to_string()).unwrap_or_default()
    };
    let uid: u64 = field("Uid:").split_whitespace().next().and_then(|u| u.parse().ok()).unwrap_or(0);
    assert!(uid >= u64::from(om_remote::GUEST_UID_BASE), "guest runs as uid {uid}:\n{status}");
    assert_eq!(field("CapEff:"), "0000000000000000", "guest has capabilities:\n{status}");
    assert_eq!(field("NoNewPrivs:"), "1");
    let ns = |pid: &str, n: &str| std::fs::read_link(format!("/proc/{pid}/ns/{n}")).expect("ns");
    assert_ne!(ns(&guest, "mnt"), ns(&omd2.to_string(), "mnt"), "guest shares the node's mount namespace");
    assert_eq!(ns(&guest, "net"), ns(&omd2.to_string(), "net"), "guest is not on its node's network");
    let root: Vec<String> = std::fs::read_dir(format!("/proc/{guest}/root/"))
        .expect("guest root")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(root.is_empty(), "the guest's root holds node files: {root:?}");
    let cg = std::fs::read_to_string(format!("/proc/{guest}/cgroup")).unwrap_or_default();
    assert!(cg.contains("om-sim/node-2"), "guest not in node 2's cgroup:\n{cg}");

    std::fs::write(&go, "").expect("go");
    let st = wait_child(&mut p, Duration::from_secs(30));
    let lines = std::fs::read_to_string(&out).unwrap_or_default();
    for f in [&x, &go, &out] {
        let _ = std::fs::remove_file(f);
    }
    assert!(st.success(), "{st:?}: {lines}");
    assert!(lines.contains("x: home's file"), "the guest did not read its home's /tmp/x:\n{lines}");
    assert!(!lines.contains("HOST'S FILE"), "the guest read the host's /tmp/x:\n{lines}");
    assert!(lines.contains("key: errno 2"), "the guest reached the host's key:\n{lines}");
}

/// The network to a process's host goes silent (its veth is cut: no FIN, no
/// RST). Within 5 s the home declares the node down and the parent sees the
/// process killed by SIGKILL; nothing hangs, and no zombie is left.
#[test]
fn silent_host_node_is_noticed_within_5s() {
    use std::os::unix::process::ExitStatusExt;
    let _g = SIM.lock().unwrap_or_else(|p| p.into_inner());
    let _s = Sim::up(&["2"]);
    let out = format!("/tmp/om-sim-silent-{}", std::process::id());
    let mut p = Command::new(bin("om-exec"))
        .env_remove("OM_SOCKET")
        .arg("--")
        .arg(bin("counter"))
        .args(["4", "100000", "50"])
        .stdout(std::fs::File::create(&out).expect("out"))
        .spawn()
        .expect("om-exec");
    wait_lines(Path::new(&out), 2, Duration::from_secs(30));
    let o = omctl(&["migrate", &p.id().to_string(), "2"]);
    assert!(o.status.success(), "migrate: {}", text(&o));
    std::thread::sleep(Duration::from_millis(300));
    let cut = Command::new("ip").args(["link", "set", "omsim-2", "down"]).status().expect("ip");
    assert!(cut.success());
    let t0 = Instant::now();
    let st = wait_child(&mut p, Duration::from_secs(20));
    let took = t0.elapsed();
    let _ = std::fs::remove_file(&out);
    assert_eq!(st.signal(), Some(libc::SIGKILL), "{st:?}");
    assert!(took < Duration::from_secs(5), "the parent saw the end only after {took:?}");
    let log = std::fs::read_to_string("/run/om-sim/node-1/omd.log").unwrap_or_default();
    assert!(log.contains("node 2"), "the home log does not name the lost node:\n{log}");
}
