//! Library API for batch tools and the command-line tools: talk to the local omd.

use crate::wire::{self, Msg, NodeInfo, ProcInfo, WireError};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

pub const DEFAULT_SOCKET: &str = "/run/om/omd.sock";

/// A command as a person reads it: the program's name (not its path) and
/// its arguments, `spin 1000000` for `/home/me/build/spin 1000000`.
pub fn display_command<S: AsRef<str>>(argv: &[S]) -> String {
    let mut words = argv.iter().map(|a| a.as_ref());
    let Some(prog) = words.next() else { return String::new() };
    let name = prog.rsplit('/').find(|p| !p.is_empty()).unwrap_or(prog);
    std::iter::once(name).chain(words).collect::<Vec<_>>().join(" ")
}

/// The control socket: `--socket`, else `$OM_SOCKET`, else `/run/om/omd.sock`.
pub fn socket_path(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    std::env::var_os("OM_SOCKET").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no omd answers on {path}: {source} (start omd, or point --socket/OM_SOCKET at its control socket)")]
    Connect { path: String, source: std::io::Error },
    #[error("{0}")]
    Daemon(String),
    #[error("talking to omd: {0}")]
    Wire(#[from] WireError),
}

/// The events of one node's processes, as they happen ([`Client::events`]).
/// Ends when omd goes away.
pub struct Events {
    stream: UnixStream,
}

impl Iterator for Events {
    type Item = Result<crate::wire::ProcEvent, ClientError>;

    fn next(&mut self) -> Option<Self::Item> {
        match wire::recv_msg(&mut self.stream) {
            Ok(Msg::Event(e)) => Some(Ok(e)),
            Ok(m) => Some(Err(ClientError::Daemon(format!("unexpected message {m:?}")))),
            Err(WireError::Closed) => None,
            Err(e) => Some(Err(e.into())),
        }
    }
}

/// A connection to one omd.
pub struct Client {
    stream: UnixStream,
}

impl Client {
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path)
            .map_err(|source| ClientError::Connect { path: path.display().to_string(), source })?;
        Ok(Client { stream })
    }

    fn call(&mut self, msg: &Msg) -> Result<Msg, ClientError> {
        wire::send(&mut self.stream, msg)?;
        match wire::recv_msg(&mut self.stream)? {
            Msg::Error { message } => Err(ClientError::Daemon(message)),
            m => Ok(m),
        }
    }

    /// Put process `pid` (normally the caller itself, before exec) under om.
    pub fn register(&mut self, pid: i32, cmd: &str) -> Result<(), ClientError> {
        self.register_with(pid, cmd, false, None)
    }

    /// Register, pinned where it is (`lock`) or to be moved to `node` as
    /// soon as it has started.
    pub fn register_with(&mut self, pid: i32, cmd: &str, lock: bool, node: Option<u32>) -> Result<(), ClientError> {
        self.call(&Msg::Register { pid, cmd: cmd.to_string(), lock, node }).map(drop)
    }

    /// Pin `pid` where it is (`on`), or let the balancer move it again.
    pub fn lock(&mut self, pid: i32, on: bool) -> Result<(), ClientError> {
        self.call(&Msg::Lock { pid, on }).map(drop)
    }

    /// Stop (`on`) or restart taking guests on this node.
    pub fn block(&mut self, on: bool) -> Result<(), ClientError> {
        self.call(&Msg::Block { on }).map(drop)
    }

    /// Send every guest on this node home; the node takes no more until
    /// unblocked.
    pub fn expel(&mut self) -> Result<(), ClientError> {
        self.call(&Msg::Expel).map(drop)
    }

    /// Set this node's relative speed.
    pub fn set_speed(&mut self, speed: f64) -> Result<(), ClientError> {
        self.call(&Msg::Speed { speed }).map(drop)
    }

    /// Move `pid` to node `to`, or home with `None`.
    pub fn migrate(&mut self, pid: i32, to: Option<u32>) -> Result<(), ClientError> {
        self.call(&Msg::Migrate { pid, to }).map(drop)
    }

    pub fn ps(&mut self) -> Result<Vec<ProcInfo>, ClientError> {
        match self.call(&Msg::Ps)? {
            Msg::PsReply(v) => Ok(v),
            m => Err(ClientError::Daemon(format!("unexpected reply {m:?}"))),
        }
    }

    /// Subscribe to the events of this node's processes (moved, came home,
    /// refused, exited): the connection then carries only those.
    pub fn events(mut self) -> Result<Events, ClientError> {
        match self.call(&Msg::Events)? {
            Msg::Ok => Ok(Events { stream: self.stream }),
            m => Err(ClientError::Daemon(format!("unexpected reply {m:?}"))),
        }
    }

    pub fn nodes(&mut self) -> Result<Vec<NodeInfo>, ClientError> {
        match self.call(&Msg::Nodes)? {
            Msg::NodesReply(v) => Ok(v),
            m => Err(ClientError::Daemon(format!("unexpected reply {m:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::display_command;

    #[test]
    fn commands_read_as_program_name_and_arguments() {
        assert_eq!(display_command(&["/home/me/build/target/release/spin", "1000000"]), "spin 1000000");
        assert_eq!(display_command(&["python3", "-c", "loop"]), "python3 -c loop");
        assert_eq!(display_command(&["./a.out"]), "a.out");
        assert_eq!(display_command::<&str>(&[]), "");
    }
}
