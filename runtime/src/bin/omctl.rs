//! omctl: look at and steer the processes and nodes of an om cluster.

use clap::{Parser, Subcommand};
use om_runtime::client::{socket_path, Client};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "omctl", about = "steer om: list processes and nodes, migrate processes")]
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
    /// Nodes of the cluster.
    Nodes,
}

fn main() {
    let a = Args::parse();
    let path = socket_path(a.socket.as_deref());
    let mut c = match Client::connect(&path) {
        Ok(c) => c,
        Err(e) => fail(&e.to_string()),
    };
    match a.cmd {
        Cmd::Ps => {
            let ps = c.ps().unwrap_or_else(|e| fail(&e.to_string()));
            if a.json {
                let v: Vec<_> = ps
                    .iter()
                    .map(|p| serde_json::json!({"pid": p.pid, "home": p.home, "where": p.where_, "state": p.state, "cmd": p.cmd, "cant_move": p.cant_move}))
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                println!("{:>8} {:>5} {:>6} {:<10} {:<30} WHY IT STAYS", "PID", "HOME", "WHERE", "STATE", "COMMAND");
                for p in ps {
                    println!(
                        "{:>8} {:>5} {:>6} {:<10} {:<30} {}",
                        p.pid,
                        p.home,
                        p.where_,
                        p.state,
                        trunc(&p.cmd, 30),
                        p.cant_move
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
        Cmd::Nodes => {
            let nodes = c.nodes().unwrap_or_else(|e| fail(&e.to_string()));
            if a.json {
                let v: Vec<_> = nodes
                    .iter()
                    .map(|n| serde_json::json!({"id": n.id, "addr": n.addr, "state": n.state, "load": n.load, "cpus": n.cpus, "speed": n.speed, "mem_free": n.mem_free, "guests": n.guests}))
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                println!(
                    "{:>4} {:<22} {:<8} {:>6} {:>5} {:>6} {:>10}",
                    "ID", "ADDRESS", "STATE", "LOAD", "CPUS", "SPEED", "MEM FREE"
                );
                for n in nodes {
                    println!(
                        "{:>4} {:<22} {:<8} {:>6.2} {:>5} {:>6.2} {:>9}M",
                        n.id,
                        n.addr,
                        n.state,
                        n.load,
                        n.cpus,
                        n.speed,
                        n.mem_free >> 20
                    );
                }
            }
        }
    }
}

fn trunc(s: &str, n: usize) -> String {
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
