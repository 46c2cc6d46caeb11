//! omctl: look at and steer the processes and nodes of an om cluster.

use clap::{Parser, Subcommand};
use om_runtime::client::{socket_path, Client};
use std::io::Write;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "omctl", about = "steer om: list processes and nodes, migrate, pin and balance processes")]
struct Args {
    /// omd's control socket [default: $OM_SOCKET, else /run/om/omd.sock].
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Processes under om whose home is this node.
    Ps,
    /// Move a process to a node, or bring it home.
    Migrate {
        pid: i32,
        /// A node id, or "home".
        node: String,
    },
    /// Nodes of the cluster: alive, suspect or down, with their load figures.
    Nodes,
    /// What happens to this node's processes, as it happens: moved, came
    /// home, refused (with the reason), exited (with the status); one per line.
    Events,
    /// Pin a process where it is: the balancer never moves it.
    Lock { pid: i32 },
    /// Let the balancer move a pinned process again.
    Unlock { pid: i32 },
    /// Stop this node taking guests (those it has stay).
    Block,
    /// Let this node take guests again.
    Unblock,
    /// Send every guest on this node home, and take no more until unblock.
    Expel,
    /// Set this node's relative speed (1 = a typical node).
    Speed { speed: f64 },
    /// Live view of the cluster: nodes, processes and migrations (q to quit).
    Mon {
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
    },
    /// Create a new cluster key (mode 0600); copy it to every node.
    Keygen {
        /// Where to write it, e.g. /etc/om/cluster.key.
        file: PathBuf,
    },
    /// A simulated cluster on this machine (network namespaces, CPU quotas).
    Sim {
        #[command(subcommand)]
        cmd: SimCmd,
    },
}

#[derive(Subcommand, Debug)]
enum SimCmd {
    /// Start N nodes: node 1 is this host (default socket), the others get
    /// their own network and mount namespaces.
    Up {
        n: u32,
        /// Relative speed of each node, e.g. 1,1,0.5,2 [default: all 1].
        #[arg(long, value_delimiter = ',')]
        speeds: Vec<f64>,
        /// CPUs that speed 1 gets (cgroup CPU quota).
        #[arg(long, default_value_t = 0.4)]
        cpu_per_speed: f64,
        /// Memory of each node in MiB (a memory cgroup limit) [default: no limit].
        #[arg(long, default_value_t = 0)]
        mem: u64,
    },
    /// Show the simulated cluster.
    Status,
    /// Remove everything `sim up` made.
    Down,
}

fn main() {
    let a = Args::parse();
    match &a.cmd {
        Cmd::Keygen { file } => match om_runtime::link::ClusterKey::create(file) {
            Ok(_) => {
                println!("wrote a new cluster key to {} (mode 0600); copy it to every node", file.display());
                return;
            }
            Err(e) => fail(&e.to_string()),
        },
        Cmd::Sim { cmd } => {
            let r = match cmd {
                SimCmd::Up { n, speeds, cpu_per_speed, mem } => om_runtime::sim::up(*n, speeds, *cpu_per_speed, *mem),
                SimCmd::Status => om_runtime::sim::status(a.json),
                SimCmd::Down => om_runtime::sim::down(),
            };
            if let Err(e) = r {
                fail(&e.to_string());
            }
            return;
        }
        _ => {}
    }
    let path = socket_path(a.socket.as_deref());
    if let Cmd::Mon { interval } = a.cmd {
        if let Err(e) = om_runtime::mon::run(&path, interval) {
            fail(&e.to_string());
        }
        return;
    }
    let mut c = match Client::connect(&path) {
        Ok(c) => c,
        Err(e) => fail(&e.to_string()),
    };
    if let Cmd::Events = a.cmd {
        let events = c.events().unwrap_or_else(|e| fail(&e.to_string()));
        for e in events {
            let e = e.unwrap_or_else(|e| fail(&e.to_string()));
            let line = if a.json {
                serde_json::json!({"pid": e.pid, "event": e.kind, "from": e.from, "to": e.to, "reason": e.reason, "code": e.code, "signal": e.signal}).to_string()
            } else {
                event_text(&e)
            };
            // A reader that went away (omctl events | head) ends it.
            if writeln!(std::io::stdout(), "{line}").and_then(|_| std::io::stdout().flush()).is_err() {
                return;
            }
        }
        fail("omd went away");
    }
    match a.cmd {
        Cmd::Ps => {
            let ps = c.ps().unwrap_or_else(|e| fail(&e.to_string()));
            if a.json {
                let v: Vec<_> = ps
                    .iter()
                    .map(|p| serde_json::json!({"pid": p.pid, "home": p.home, "where": p.where_, "state": p.state, "cmd": p.cmd, "cant_move": p.cant_move, "why": p.why, "demand": p.demand, "rss": p.rss, "locked": p.locked, "gang": p.gang}))
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                println!(
                    "{:>8} {:>5} {:>6} {:<10} {:<30} {:<12} WHY IT STAYS",
                    "PID", "HOME", "WHERE", "STATE", "COMMAND", "GANG"
                );
                for p in ps {
                    let why = if p.cant_move.is_empty() || p.locked { &p.why } else { &p.cant_move };
                    // The other processes it shares memory and moves with.
                    let gang = if p.gang.is_empty() {
                        "-".to_string()
                    } else {
                        p.gang.iter().map(|g| g.to_string()).collect::<Vec<_>>().join(",")
                    };
                    println!(
                        "{:>8} {:>5} {:>6} {:<10} {:<30} {:<12} {}",
                        p.pid,
                        p.home,
                        p.where_,
                        p.state,
                        trunc(&p.cmd.replace(char::is_control, " "), 30),
                        trunc(&gang, 12),
                        why
                    );
                }
            }
        }
        Cmd::Migrate { pid, node } => {
            let to = if node == "home" {
                None
            } else {
                match node.parse::<u32>() {
                    Ok(n) => Some(n),
                    Err(_) => fail(&format!("'{node}' is not a node id; give a number or 'home'")),
                }
            };
            if let Err(e) = c.migrate(pid, to) {
                fail(&e.to_string());
            }
        }
        Cmd::Keygen { .. } | Cmd::Sim { .. } | Cmd::Mon { .. } | Cmd::Events => {}
        Cmd::Lock { pid } => c.lock(pid, true).unwrap_or_else(|e| fail(&e.to_string())),
        Cmd::Unlock { pid } => c.lock(pid, false).unwrap_or_else(|e| fail(&e.to_string())),
        Cmd::Block => c.block(true).unwrap_or_else(|e| fail(&e.to_string())),
        Cmd::Unblock => c.block(false).unwrap_or_else(|e| fail(&e.to_string())),
        Cmd::Expel => {
            c.expel().unwrap_or_else(|e| fail(&e.to_string()));
            println!("guests are going home; this node takes no more until 'omctl unblock'");
        }
        Cmd::Speed { speed } => c.set_speed(speed).unwrap_or_else(|e| fail(&e.to_string())),
        Cmd::Nodes => {
            let nodes = c.nodes().unwrap_or_else(|e| fail(&e.to_string()));
            if a.json {
                let v: Vec<_> = nodes
                    .iter()
                    .map(|n| serde_json::json!({"id": n.id, "addr": n.addr, "state": n.state, "load": n.load, "cpus": n.cpus, "speed": n.speed, "mem_total": n.mem_total, "mem_free": n.mem_free, "guests": n.guests, "max_guests": n.max_guests, "accepts": n.accepts, "age_ms": n.age_ms}))
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                println!(
                    "{:>4} {:<22} {:<8} {:>6} {:>5} {:>6} {:>10} {:>7} {:>7}",
                    "ID", "ADDRESS", "STATE", "LOAD", "CPUS", "SPEED", "MEM FREE", "GUESTS", "AGE"
                );
                for n in nodes {
                    let guests =
                        if n.accepts { format!("{}/{}", n.guests, n.max_guests) } else { format!("{} no", n.guests) };
                    println!(
                        "{:>4} {:<22} {:<8} {:>6.2} {:>5} {:>6.2} {:>9}M {:>7} {:>6.1}s",
                        n.id,
                        n.addr,
                        n.state,
                        n.load,
                        n.cpus,
                        n.speed,
                        n.mem_free >> 20,
                        guests,
                        n.age_ms as f64 / 1000.0
                    );
                }
            }
        }
    }
}

fn trunc(s: &str, n: usize) -> String {
    let s: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n - 1).collect::<String>() + "…"
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("omctl: {msg}");
    std::process::exit(1);
}

/// One event as a line of text.
fn event_text(e: &om_runtime::wire::ProcEvent) -> String {
    let pid = e.pid;
    match e.kind.as_str() {
        "moved" => format!("process {pid} moved from node {} to node {}", e.from, e.to),
        "home" => format!("process {pid} came home from node {}", e.from),
        "refused" => format!("process {pid} did not move to node {}: {}", e.to, e.reason),
        "exited" if e.signal != 0 => format!("process {pid} was killed by signal {}", e.signal),
        "exited" => format!("process {pid} exited with status {}", e.code),
        k => format!("process {pid}: {k}"),
    }
}
