//! omd: the om node daemon.

use anyhow::{bail, Context};
use clap::Parser;
use om_loadbal::daemon::{self, Config};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "omd", about = "om node daemon: runs the home, remote and balancer roles of one node")]
struct Args {
    /// This node's id (a positive number, unique in the cluster).
    #[arg(long)]
    node_id: u32,
    /// Address for node links, e.g. 127.0.0.1:7701.
    #[arg(long)]
    listen: SocketAddr,
    /// Control socket for om-exec and omctl [default: $OM_SOCKET, else /run/om/omd.sock].
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Directory for this node's state [default: /var/lib/om/node-ID].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// A peer node, ID=ADDR:PORT (repeat for each peer).
    #[arg(long = "peer", value_parser = parse_peer)]
    peers: Vec<(u32, SocketAddr)>,
    /// Configuration file (TOML).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Refuse incoming guests.
    #[arg(long)]
    no_guests: bool,
}

fn parse_peer(s: &str) -> Result<(u32, SocketAddr), String> {
    let (id, addr) = s.split_once('=').ok_or_else(|| format!("peer '{s}' is not ID=ADDR:PORT"))?;
    let id = id.parse().map_err(|_| format!("peer id '{id}' is not a number"))?;
    let addr = addr.parse().map_err(|_| format!("peer address '{addr}' is not ADDR:PORT"))?;
    Ok((id, addr))
}

fn main() -> anyhow::Result<()> {
    // A guest process is created from this binary and replaced before it runs;
    // if it ever does run, it must do nothing.
    if std::env::args().nth(1).as_deref() == Some("--om-guest-stub") {
        std::process::exit(111);
    }
    let log = om_loadbal::sys::LogFd(om_loadbal::sys::log_fd().context("setting up the log")?);
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_ansi(false)
        .with_writer(move || log)
        .init();
    let a = Args::parse();
    if a.config.is_some() {
        bail!("--config: configuration files are not supported yet; use the command-line flags");
    }
    if a.node_id == 0 {
        bail!("--node-id must be a positive number");
    }
    if a.peers.iter().any(|(id, _)| *id == a.node_id) {
        bail!("--peer {} names this node itself; list only the other nodes", a.node_id);
    }
    let cfg = Config {
        node_id: a.node_id,
        listen: a.listen,
        socket: om_runtime::client::socket_path(a.socket.as_deref()),
        state_dir: a.state_dir.unwrap_or_else(|| PathBuf::from(format!("/var/lib/om/node-{}", a.node_id))),
        peers: a.peers,
        accept_guests: !a.no_guests,
    };
    daemon::run(cfg).context("omd stopped")
}
