//! `omctl sim`: a simulated cluster on this one machine.
//!
//! Node 1 is the host itself (root network namespace, default control
//! socket). Node k > 1 runs its omd in a network namespace `omsim-k`, joined
//! to a bridge `omsim0` by a veth pair, and in a mount namespace of its own
//! with a private /tmp and a private key directory. Every node gets a cgroup
//! whose CPU quota is its speed times `cpu_per_speed` CPUs; omd puts the
//! processes it runs (home processes and guests) in it. All nodes share one
//! generated cluster key. `sim down` removes every piece.

use crate::link::ClusterKey;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const ROOT: &str = "/run/om-sim";
const BRIDGE: &str = "omsim0";
const NET: &str = "10.201.0";
const PORT: u16 = 7700;
const PERIOD_US: u64 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("omctl sim needs root or user namespaces (to make network namespaces and cgroups); run it as root")]
    NotRoot,
    #[error("a simulated cluster of {0} nodes is already up; run `omctl sim down` first")]
    AlreadyUp(u32),
    #[error("no simulated cluster is up; start one with `omctl sim up N`")]
    NotUp,
    #[error("{0}")]
    Bad(String),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("`{cmd}` failed: {err}")]
    Cmd { cmd: String, err: String },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SimError {
    let what = what.into();
    move |source| SimError::Io { what, source }
}

/// What `sim up` made, so `sim down` can remove exactly that.
#[derive(Serialize, Deserialize, Debug, Default)]
pub struct State {
    pub nodes: Vec<SimNode>,
    pub cgroup_v2: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct SimNode {
    pub id: u32,
    pub speed: f64,
    pub addr: String,
    pub socket: PathBuf,
    pub pid: u32,
    pub netns: Option<String>,
    pub veth: Option<String>,
    pub cgroups: Vec<PathBuf>,
}

fn state_path() -> PathBuf {
    Path::new(ROOT).join("state.json")
}

fn node_dir(id: u32) -> PathBuf {
    Path::new(ROOT).join(format!("node-{id}"))
}

/// The private key directory of node `id` (a tmpfs in its mount namespace).
pub fn private_dir(id: u32) -> PathBuf {
    node_dir(id).join("private")
}

fn run(args: &[&str]) -> Result<(), SimError> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| SimError::Cmd { cmd: args.join(" "), err: e.to_string() })?;
    if !out.status.success() {
        return Err(SimError::Cmd {
            cmd: args.join(" "),
            err: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

fn load_state() -> Option<State> {
    serde_json::from_str(&std::fs::read_to_string(state_path()).ok()?).ok()
}

fn save_state(s: &State) -> Result<(), SimError> {
    let text = serde_json::to_string_pretty(s).map_err(|e| SimError::Bad(e.to_string()))?;
    std::fs::write(state_path(), text).map_err(io("writing the sim state"))
}

fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Where cgroups go: v2 (unified) if mounted so, else the v1 cpu hierarchy.
fn cgroup_base() -> Result<(PathBuf, bool), SimError> {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        return Ok((root.join("om-sim"), true));
    }
    for d in ["cpu", "cpu,cpuacct"] {
        if root.join(d).join("cpu.cfs_quota_us").exists() {
            return Ok((root.join(d).join("om-sim"), false));
        }
    }
    Err(SimError::Bad("no cgroup cpu controller found under /sys/fs/cgroup (need v1 cpu or v2 cpu.max)".into()))
}

fn make_cgroup(base: &Path, v2: bool, id: u32, cpus: f64) -> Result<PathBuf, SimError> {
    let dir = base.join(format!("node-{id}"));
    std::fs::create_dir_all(&dir).map_err(io(format!("creating cgroup {}", dir.display())))?;
    let quota = ((cpus * PERIOD_US as f64) as u64).max(1000);
    if v2 {
        let _ = std::fs::write(base.parent().unwrap_or(base).join("cgroup.subtree_control"), "+cpu");
        let _ = std::fs::write(base.join("cgroup.subtree_control"), "+cpu");
        std::fs::write(dir.join("cpu.max"), format!("{quota} {PERIOD_US}"))
            .map_err(io(format!("setting {}/cpu.max", dir.display())))?;
    } else {
        std::fs::write(dir.join("cpu.cfs_period_us"), PERIOD_US.to_string())
            .map_err(io(format!("setting {}/cpu.cfs_period_us", dir.display())))?;
        std::fs::write(dir.join("cpu.cfs_quota_us"), quota.to_string())
            .map_err(io(format!("setting {}/cpu.cfs_quota_us", dir.display())))?;
    }
    Ok(dir)
}

/// A memory limit for node `id`: in its own v1 memory cgroup (returned, to
/// be joined too), or on its v2 cgroup `cpu_cg`.
fn memory_cgroup(cpu_cg: &Path, v2: bool, id: u32, bytes: u64) -> Result<Option<PathBuf>, SimError> {
    if v2 {
        let base = cpu_cg.parent().unwrap_or(cpu_cg);
        let _ = std::fs::write(base.parent().unwrap_or(base).join("cgroup.subtree_control"), "+memory");
        let _ = std::fs::write(base.join("cgroup.subtree_control"), "+memory");
        std::fs::write(cpu_cg.join("memory.max"), bytes.to_string())
            .map_err(io(format!("setting {}/memory.max", cpu_cg.display())))?;
        return Ok(None);
    }
    let dir = Path::new("/sys/fs/cgroup/memory/om-sim").join(format!("node-{id}"));
    std::fs::create_dir_all(&dir).map_err(io(format!("creating cgroup {}", dir.display())))?;
    std::fs::write(dir.join("memory.limit_in_bytes"), bytes.to_string())
        .map_err(io(format!("setting {}/memory.limit_in_bytes", dir.display())))?;
    Ok(Some(dir))
}

fn omd_path() -> Result<PathBuf, SimError> {
    let me = std::env::current_exe().map_err(io("finding omctl's own path"))?;
    let p = me.with_file_name("omd");
    if p.exists() {
        Ok(p)
    } else {
        Err(SimError::Bad(format!("omd not found next to omctl ({}); build the workspace first", p.display())))
    }
}

/// Start `n` nodes.
pub fn up(n: u32, speeds: &[f64], cpu_per_speed: f64, mem_mb: u64) -> Result<(), SimError> {
    if euid() != 0 {
        return Err(SimError::NotRoot);
    }
    if let Some(s) = load_state() {
        return Err(SimError::AlreadyUp(s.nodes.len() as u32));
    }
    if !(1..=200).contains(&n) {
        return Err(SimError::Bad(format!("{n} nodes: give between 1 and 200")));
    }
    if !speeds.is_empty() && speeds.len() != n as usize {
        return Err(SimError::Bad(format!("--speeds lists {} speeds for {n} nodes", speeds.len())));
    }
    if speeds.iter().any(|s| !(s.is_finite() && *s > 0.0)) || !(cpu_per_speed.is_finite() && cpu_per_speed > 0.0) {
        return Err(SimError::Bad("speeds and --cpu-per-speed must be positive numbers".into()));
    }
    let socket1 = crate::client::socket_path(None);
    if std::os::unix::net::UnixStream::connect(&socket1).is_ok() {
        return Err(SimError::Bad(format!(
            "an omd already answers on {}; stop it first (node 1 of the sim is this host)",
            socket1.display()
        )));
    }
    let built = omd_path()?;
    std::fs::create_dir_all(ROOT).map_err(io(format!("creating {ROOT}")))?;
    // A copy outside /tmp: the simulated nodes get a private /tmp, which
    // would hide a binary built under it.
    let omd = Path::new(ROOT).join("omd");
    std::fs::copy(&built, &omd).map_err(io(format!("copying {} to {}", built.display(), omd.display())))?;
    let mut state = State::default();
    save_state(&state)?;
    match build(n, speeds, cpu_per_speed, mem_mb, &omd, &socket1, &mut state) {
        Ok(()) => {
            save_state(&state)?;
            if let Err(e) = wait_ready(&state) {
                let logs: String = state
                    .nodes
                    .iter()
                    .map(|n| {
                        let l = std::fs::read_to_string(node_dir(n.id).join("omd.log")).unwrap_or_default();
                        let tail: Vec<&str> = l.lines().rev().take(5).collect();
                        format!("\n--- node {} ---\n{}", n.id, tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
                    })
                    .collect();
                let _ = down();
                return Err(SimError::Bad(format!("{e}{logs}")));
            }
            print_status(&state, false);
            println!(
                "\nnode 1 is this host: `om-exec PROG` runs a program under om, `omctl migrate PID 2` moves it.\n\
                 `omctl sim down` removes the simulated cluster."
            );
            Ok(())
        }
        Err(e) => {
            let _ = save_state(&state);
            let _ = down();
            Err(e)
        }
    }
}

fn build(
    n: u32,
    speeds: &[f64],
    cpu_per_speed: f64,
    mem_mb: u64,
    omd: &Path,
    socket1: &Path,
    state: &mut State,
) -> Result<(), SimError> {
    let (cg_base, v2) = cgroup_base()?;
    state.cgroup_v2 = v2;
    let key_path = Path::new(ROOT).join("cluster.key");
    let _ = std::fs::remove_file(&key_path);
    ClusterKey::create(&key_path).map_err(|e| SimError::Bad(e.to_string()))?;
    // The bridge, with node 1's address on it.
    if n > 1 {
        run(&["ip", "link", "add", BRIDGE, "type", "bridge"])?;
        let _ = run(&["ip", "link", "set", BRIDGE, "type", "bridge", "nf_call_iptables", "0"]);
        run(&["ip", "addr", "add", &format!("{NET}.1/24"), "dev", BRIDGE])?;
        run(&["ip", "link", "set", BRIDGE, "up"])?;
    }
    let addr_of = |id: u32| if n == 1 { format!("127.0.0.1:{PORT}") } else { format!("{NET}.{id}:{PORT}") };
    for id in 1..=n {
        let speed = speeds.get(id as usize - 1).copied().unwrap_or(1.0);
        let dir = node_dir(id);
        for d in [dir.clone(), dir.join("tmp"), dir.join("state"), private_dir(id)] {
            std::fs::create_dir_all(&d).map_err(io(format!("creating {}", d.display())))?;
        }
        let _ = std::fs::set_permissions(dir.join("tmp"), std::os::unix::fs::PermissionsExt::from_mode(0o1777));
        let cg = make_cgroup(&cg_base, v2, id, speed * cpu_per_speed)?;
        let mut cgroups = vec![cg.clone()];
        if mem_mb > 0 {
            cgroups.extend(memory_cgroup(&cg, v2, id, mem_mb << 20)?);
        }
        let mut node = SimNode {
            id,
            speed,
            addr: addr_of(id),
            socket: if id == 1 { socket1.to_path_buf() } else { dir.join("omd.sock") },
            pid: 0,
            netns: None,
            veth: None,
            cgroups: cgroups.clone(),
        };
        if id > 1 {
            let ns = format!("omsim-{id}");
            let veth = format!("omsim-{id}");
            run(&["ip", "netns", "add", &ns])?;
            node.netns = Some(ns.clone());
            run(&["ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            node.veth = Some(veth.clone());
            run(&["ip", "link", "set", &veth, "master", BRIDGE])?;
            run(&["ip", "link", "set", &veth, "up"])?;
            run(&["ip", "-n", &ns, "addr", "add", &format!("{NET}.{id}/24"), "dev", "eth0"])?;
            run(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        }
        // The key this node reads: node 1's in its directory; the others' in
        // a tmpfs that only their own mount namespace has.
        let seeds: Vec<String> = (1..=n).filter(|&o| o != id).map(|o| format!("\"{}\"", addr_of(o))).collect();
        let key_file = if id == 1 { dir.join("cluster.key") } else { private_dir(id).join("cluster.key") };
        let toml = format!(
            "# omd of simulated node {id} (written by omctl sim up)\nnode_id = {id}\nlisten = \"{}\"\n\
             socket = \"{}\"\nstate_dir = \"{}\"\nseeds = [{}]\nkey_file = \"{}\"\nspeed = {speed}\n\
             # one core of this speed (its CPU quota is speed x cpu_per_speed)\ncpus = 1\n\
             cgroups = [{}]\n",
            node.addr,
            node.socket.display(),
            dir.join("state").display(),
            seeds.join(", "),
            key_file.display(),
            cgroups.iter().map(|c| format!("\"{}\"", c.display())).collect::<Vec<_>>().join(", ")
        );
        let conf = dir.join("om.toml");
        std::fs::write(&conf, toml).map_err(io(format!("writing {}", conf.display())))?;
        let log = std::fs::File::create(dir.join("omd.log")).map_err(io("creating the node log"))?;
        let mut cmd = if id == 1 {
            std::fs::copy(&key_path, &key_file).map_err(io("copying the key"))?;
            let mut c = Command::new(omd);
            c.arg("--config").arg(&conf);
            c
        } else {
            // A mount namespace of its own: private
            // /tmp, and the key in a tmpfs no other node sees.
            let script = format!(
                "mount --bind {tmp} /tmp && mount -t tmpfs -o mode=0700,size=1m om-key {priv} && \
                 install -m 0600 {key} {priv}/cluster.key && exec {omd} --config {conf}",
                tmp = dir.join("tmp").display(),
                priv = private_dir(id).display(),
                key = key_path.display(),
                omd = omd.display(),
                conf = conf.display()
            );
            // nsenter, not `ip netns exec`: that remounts /sys and would hide
            // the cgroup hierarchies from this node's omd.
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{}", node.netns.as_deref().unwrap_or_default())).args([
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                &script,
            ]);
            c
        };
        let err = log.try_clone().map_err(io("log"))?;
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .spawn()
            .map_err(io(format!("starting omd for node {id}")))?;
        node.pid = child.id();
        state.nodes.push(node);
        save_state(state)?;
    }
    Ok(())
}

fn wait_ready(state: &State) -> Result<(), SimError> {
    let t0 = Instant::now();
    let n = state.nodes.len();
    loop {
        let mut ready = 0;
        let mut last = String::new();
        for node in &state.nodes {
            match crate::client::Client::connect(&node.socket).and_then(|mut c| c.nodes()) {
                Ok(v) if v.iter().filter(|x| x.state == "alive" && x.cpus > 0).count() == n => ready += 1,
                Ok(v) => last = format!("node {} sees {} of {n} nodes alive", node.id, v.len()),
                Err(e) => last = format!("node {}: {e}", node.id),
            }
        }
        if ready == n {
            return Ok(());
        }
        if t0.elapsed() > Duration::from_secs(15) {
            return Err(SimError::Bad(format!(
                "the simulated cluster did not form within 15 s ({last}); logs are in {ROOT}/node-*/omd.log"
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn alive(pid: u32) -> bool {
    pid != 0 && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
}

fn print_status(state: &State, json: bool) {
    let views: Vec<Option<Vec<crate::wire::NodeInfo>>> = state
        .nodes
        .iter()
        .map(|n| crate::client::Client::connect(&n.socket).and_then(|mut c| c.nodes()).ok())
        .collect();
    if json {
        let v: Vec<_> = state
            .nodes
            .iter()
            .zip(&views)
            .map(|(n, v)| {
                serde_json::json!({
                    "id": n.id, "addr": n.addr, "speed": n.speed, "socket": n.socket, "pid": n.pid,
                    "running": alive(n.pid), "netns": n.netns, "cgroups": n.cgroups,
                    "sees_alive": v.as_ref().map(|v| v.iter().filter(|x| x.state == "alive").count()),
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return;
    }
    println!(
        "{:>4} {:<18} {:>6} {:<12} {:>8} {:<8} {:<32}",
        "NODE", "ADDRESS", "SPEED", "NETNS", "OMD PID", "OMD", "SOCKET"
    );
    for (n, v) in state.nodes.iter().zip(&views) {
        let health = match v {
            Some(v) => format!("{}/{} up", v.iter().filter(|x| x.state == "alive").count(), state.nodes.len()),
            None if alive(n.pid) => "no answer".into(),
            None => "dead".into(),
        };
        println!(
            "{:>4} {:<18} {:>6.2} {:<12} {:>8} {:<8} {:<32}",
            n.id,
            n.addr,
            n.speed,
            n.netns.as_deref().unwrap_or("(host)"),
            n.pid,
            health,
            n.socket.display()
        );
    }
}

pub fn status(json: bool) -> Result<(), SimError> {
    let s = load_state().ok_or(SimError::NotUp)?;
    print_status(&s, json);
    Ok(())
}

/// Remove everything: daemons and the processes in the nodes' cgroups,
/// cgroups, interfaces, namespaces, files.
pub fn down() -> Result<(), SimError> {
    if euid() != 0 {
        return Err(SimError::NotRoot);
    }
    let s = load_state().ok_or(SimError::NotUp)?;
    let mut problems = Vec::new();
    let kill_all = |sig| {
        for n in &s.nodes {
            if alive(n.pid) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(n.pid as i32), sig);
            }
            for cg in &n.cgroups {
                for p in std::fs::read_to_string(cg.join("cgroup.procs")).unwrap_or_default().lines() {
                    if let Ok(p) = p.trim().parse::<i32>() {
                        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), nix::sys::signal::SIGKILL);
                    }
                }
            }
        }
    };
    kill_all(nix::sys::signal::SIGTERM);
    let t0 = Instant::now();
    while s.nodes.iter().any(|n| alive(n.pid)) && t0.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(50));
    }
    kill_all(nix::sys::signal::SIGKILL);
    for n in &s.nodes {
        let t0 = Instant::now();
        for cg in &n.cgroups {
            while std::fs::remove_dir(cg).is_err() && cg.exists() {
                if t0.elapsed() > Duration::from_secs(5) {
                    problems.push(format!("cgroup {} is still busy", cg.display()));
                    break;
                }
                kill_all(nix::sys::signal::SIGKILL);
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if let Some(v) = &n.veth {
            if let Err(e) = run(&["ip", "link", "del", v]) {
                if Path::new("/sys/class/net").join(v).exists() {
                    problems.push(e.to_string());
                }
            }
        }
        if let Some(ns) = &n.netns {
            if let Err(e) = run(&["ip", "netns", "del", ns]) {
                if Path::new("/run/netns").join(ns).exists() {
                    problems.push(e.to_string());
                }
            }
        }
    }
    if Path::new("/sys/class/net").join(BRIDGE).exists() {
        if let Err(e) = run(&["ip", "link", "del", BRIDGE]) {
            problems.push(e.to_string());
        }
    }
    if let Ok((base, _)) = cgroup_base() {
        let _ = std::fs::remove_dir(base);
    }
    if let Some(n1) = s.nodes.first() {
        let _ = std::fs::remove_file(&n1.socket);
    }
    if let Err(e) = std::fs::remove_dir_all(ROOT) {
        problems.push(format!("removing {ROOT}: {e}"));
    }
    if problems.is_empty() {
        println!("simulated cluster removed ({} nodes)", s.nodes.len());
        Ok(())
    } else {
        Err(SimError::Bad(format!("some pieces were left: {}", problems.join("; "))))
    }
}
