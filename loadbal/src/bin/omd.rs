//! omd: the om node daemon.

use anyhow::{bail, Context};
use clap::Parser;
use om_loadbal::config;
use om_loadbal::daemon::{self, Config};
use om_runtime::link::ClusterKey;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "omd",
    about = "om node daemon: runs the home, remote and balancer roles of one node",
    after_help = "Settings come from the configuration file (/etc/om/om.toml, or --config); flags override it."
)]
struct Args {
    /// This node's id (a positive number, unique in the cluster).
    #[arg(long)]
    node_id: Option<u32>,
    /// Address for node links and gossip (TCP and UDP), e.g. 192.168.1.10:7700.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Control socket for om-exec and omctl [default: $OM_SOCKET, else /run/om/omd.sock].
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Directory for this node's state [default: /var/lib/om/node-ID].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// A seed node to join through, ADDR:PORT or ID=ADDR:PORT (repeat for more).
    #[arg(long = "peer", value_parser = parse_peer)]
    peers: Vec<SocketAddr>,
    /// Configuration file (TOML) [default: /etc/om/om.toml].
    #[arg(long)]
    config: Option<PathBuf>,
    /// Cluster key file, made by `omctl keygen` [default: /etc/om/cluster.key].
    #[arg(long)]
    key: Option<PathBuf>,
    /// This node's relative speed (1 = a typical node).
    #[arg(long)]
    speed: Option<f64>,
    /// Most guests this node hosts at once.
    #[arg(long)]
    max_guests: Option<u32>,
    /// Refuse incoming guests.
    #[arg(long)]
    no_guests: bool,
    /// A cgroup directory to put the processes this node runs in (repeat per hierarchy).
    #[arg(long = "cgroup")]
    cgroups: Vec<PathBuf>,
    /// Do not move processes automatically (only omctl migrate moves them).
    #[arg(long)]
    no_balance: bool,
    /// Cores to count for this node [default: all it has].
    #[arg(long)]
    cpus: Option<u32>,
}

fn parse_peer(s: &str) -> Result<SocketAddr, String> {
    let addr = s.split_once('=').map_or(s, |(_, a)| a);
    addr.parse().map_err(|_| format!("peer address '{addr}' is not ADDR:PORT"))
}

fn main() -> anyhow::Result<()> {
    // A guest process is created from this binary and replaced before it runs;
    // if it ever does run, it must do nothing.
    if std::env::args().nth(1).as_deref() == Some("--om-guest-stub") {
        std::process::exit(111);
    }
    let log_fd = om_loadbal::sys::log_fd().context("setting up the log")?;
    let log = om_loadbal::sys::LogFd(log_fd);
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_ansi(false)
        .with_writer(move || log)
        .init();
    // A migrated process's deputy: a process of its own, started by omd.
    if std::env::args().nth(1).as_deref() == Some(om_deputy::process::ARG) {
        om_deputy::process::child_main(log_fd);
    }
    let a = Args::parse();
    let f = config::load(a.config.as_deref())?;
    let Some(node_id) = a.node_id.or(f.node_id) else {
        bail!(
            "no node id: set node_id in {} or pass --node-id",
            a.config.as_deref().map_or(config::DEFAULT_PATH.into(), |p| p.display().to_string())
        );
    };
    if node_id == 0 {
        bail!("--node-id must be a positive number");
    }
    let Some(listen) = a.listen.or(f.listen) else {
        bail!("no listen address: set listen in the config file or pass --listen ADDR:PORT");
    };
    let speed = a.speed.or(f.speed).unwrap_or(1.0);
    if !(speed.is_finite() && speed > 0.0) {
        bail!("--speed must be a positive number");
    }
    let mem_low = f.mem_low.unwrap_or(0.1);
    if !(0.0..0.9).contains(&mem_low) {
        bail!("mem_low must be a share of memory between 0 and 0.9");
    }
    let key_file = a.key.or(f.key_file).unwrap_or_else(ClusterKey::default_path);
    let key = ClusterKey::load(&key_file)?;
    let mut seeds = if a.peers.is_empty() { f.seeds } else { a.peers };
    seeds.retain(|s| *s != listen);
    let cfg = Config {
        node_id,
        listen,
        socket: om_runtime::client::socket_path(a.socket.as_deref().or(f.socket.as_deref())),
        state_dir: a.state_dir.or(f.state_dir).unwrap_or_else(|| PathBuf::from(format!("/var/lib/om/node-{node_id}"))),
        seeds,
        key,
        speed,
        max_guests: a.max_guests.or(f.max_guests).unwrap_or(64),
        accept_guests: !a.no_guests && f.accept_guests.unwrap_or(true),
        consistent_paths: f.consistent_paths,
        cgroups: if a.cgroups.is_empty() { f.cgroups } else { a.cgroups },
        balance: !a.no_balance && f.balance.unwrap_or(true),
        cpus: a.cpus.or(f.cpus).filter(|&c| c > 0),
        mem_low,
    };
    om_runtime::image::set_consistent_paths(cfg.consistent_paths.clone());
    daemon::run(cfg).context("omd stopped")
}
