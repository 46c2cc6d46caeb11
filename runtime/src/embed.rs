//! The library batch tools embed: start programs on the cluster, wait for
//! their exit status, see where they run, move them, and hear what happens
//! to them. Shaped like `std::process`; re-exported as the `om` crate.
//!
//! ```no_run
//! let mut child = om_runtime::embed::Command::new("./simulate").arg("--steps").arg("1e9").node(2).spawn()?;
//! println!("{} runs on node {}", child.id(), child.node()?);
//! child.home()?;
//! let status = child.wait()?;
//! # Ok::<(), om_runtime::embed::Error>(())
//! ```

pub use crate::client::Events;
use crate::client::{display_command, socket_path, Client, ClientError};
pub use crate::wire::{NodeInfo, ProcEvent, ProcInfo};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{ChildStderr, ChildStdin, ChildStdout, ExitStatus, Stdio};

/// What went wrong, with om's own message (no omd, an unknown node, a
/// refusal and its reason) or the system's.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Om(#[from] ClientError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("process {0} is not under om on this node")]
    NotListed(u32),
}

/// A program to start under om, like [`std::process::Command`].
pub struct Command {
    inner: std::process::Command,
    argv: Vec<String>,
    socket: Option<PathBuf>,
    node: Option<u32>,
    lock: bool,
}

impl Command {
    pub fn new(program: impl AsRef<OsStr>) -> Command {
        let p = program.as_ref();
        Command {
            inner: std::process::Command::new(p),
            argv: vec![p.to_string_lossy().into_owned()],
            socket: None,
            node: None,
            lock: false,
        }
    }

    pub fn arg(&mut self, a: impl AsRef<OsStr>) -> &mut Command {
        self.argv.push(a.as_ref().to_string_lossy().into_owned());
        self.inner.arg(a);
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(&mut self, args: I) -> &mut Command {
        for a in args {
            self.arg(a);
        }
        self
    }

    pub fn env(&mut self, key: impl AsRef<OsStr>, val: impl AsRef<OsStr>) -> &mut Command {
        self.inner.env(key, val);
        self
    }

    pub fn env_remove(&mut self, key: impl AsRef<OsStr>) -> &mut Command {
        self.inner.env_remove(key);
        self
    }

    pub fn env_clear(&mut self) -> &mut Command {
        self.inner.env_clear();
        self
    }

    pub fn current_dir(&mut self, dir: impl AsRef<Path>) -> &mut Command {
        self.inner.current_dir(dir);
        self
    }

    pub fn stdin(&mut self, s: impl Into<Stdio>) -> &mut Command {
        self.inner.stdin(s);
        self
    }

    pub fn stdout(&mut self, s: impl Into<Stdio>) -> &mut Command {
        self.inner.stdout(s);
        self
    }

    pub fn stderr(&mut self, s: impl Into<Stdio>) -> &mut Command {
        self.inner.stderr(s);
        self
    }

    /// Start it on node `n`: it moves there as soon as it has started.
    pub fn node(&mut self, n: u32) -> &mut Command {
        self.node = Some(n);
        self
    }

    /// Keep it where it starts: the balancer never moves it.
    pub fn lock(&mut self) -> &mut Command {
        self.lock = true;
        self
    }

    /// omd's control socket [default: `$OM_SOCKET`, else /run/om/omd.sock].
    pub fn socket(&mut self, path: impl AsRef<Path>) -> &mut Command {
        self.socket = Some(path.as_ref().to_path_buf());
        self
    }

    /// Start the program under om. The child registers with omd between
    /// fork and exec, so the program and everything it starts are under om
    /// from their first instruction; with no omd (or a bad node), spawn
    /// fails with om's message and the program never runs.
    pub fn spawn(&mut self) -> Result<Child, Error> {
        let socket = socket_path(self.socket.as_deref());
        // Fail here, with om's message, rather than in the child.
        Client::connect(&socket)?;
        let (sock, cmd, lock, node) = (socket.clone(), display_command(&self.argv), self.lock, self.node);
        crate::sys::before_exec(&mut self.inner, move || {
            let pid = std::process::id() as i32;
            Client::connect(&sock)
                .and_then(|mut c| c.register_with(pid, &cmd, lock, node))
                .map_err(|e| std::io::Error::other(e.to_string()))
        });
        let mut c = self.inner.spawn()?;
        Ok(Child { stdin: c.stdin.take(), stdout: c.stdout.take(), stderr: c.stderr.take(), inner: c, socket })
    }

    /// Start it and wait for its exit status.
    pub fn status(&mut self) -> Result<ExitStatus, Error> {
        Ok(self.spawn()?.wait()?)
    }
}

/// A program started under om, like [`std::process::Child`].
pub struct Child {
    inner: std::process::Child,
    socket: PathBuf,
    pub stdin: Option<ChildStdin>,
    pub stdout: Option<ChildStdout>,
    pub stderr: Option<ChildStderr>,
}

impl Child {
    /// Its pid, at home, wherever it runs.
    pub fn id(&self) -> u32 {
        self.inner.id()
    }

    /// Wait for it to end: its own exit status (a death by signal too),
    /// wherever it ran.
    pub fn wait(&mut self) -> std::io::Result<ExitStatus> {
        drop(self.stdin.take());
        self.inner.wait()
    }

    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        self.inner.try_wait()
    }

    /// SIGKILL, wherever it runs.
    pub fn kill(&mut self) -> std::io::Result<()> {
        self.inner.kill()
    }

    /// Move it to node `n` while it runs (or keep it there).
    pub fn migrate(&self, n: u32) -> Result<(), Error> {
        Ok(Client::connect(&self.socket)?.migrate(self.id() as i32, Some(n))?)
    }

    /// Bring it home.
    pub fn home(&self) -> Result<(), Error> {
        Ok(Client::connect(&self.socket)?.migrate(self.id() as i32, None)?)
    }

    /// The node it runs on now.
    pub fn node(&self) -> Result<u32, Error> {
        let me = self.id() as i32;
        let ps = Client::connect(&self.socket)?.ps()?;
        ps.iter().find(|p| p.pid == me).map(|p| p.where_).ok_or(Error::NotListed(self.id()))
    }

    /// Pin it where it is (`on`), or let the balancer move it again.
    pub fn lock(&self, on: bool) -> Result<(), Error> {
        Ok(Client::connect(&self.socket)?.lock(self.id() as i32, on)?)
    }
}

/// The nodes of the cluster, as `omctl nodes` shows them (`socket`: omd's
/// control socket, default as [`Command::socket`]).
pub fn nodes(socket: Option<&Path>) -> Result<Vec<NodeInfo>, Error> {
    Ok(Client::connect(&socket_path(socket))?.nodes()?)
}

/// The processes under om whose home is this node, as `omctl ps` shows them.
pub fn ps(socket: Option<&Path>) -> Result<Vec<ProcInfo>, Error> {
    Ok(Client::connect(&socket_path(socket))?.ps()?)
}

/// What happens to this node's processes from now on: moved, came home,
/// refused (with the reason), exited (with the status).
pub fn events(socket: Option<&Path>) -> Result<Events, Error> {
    Ok(Client::connect(&socket_path(socket))?.events()?)
}
