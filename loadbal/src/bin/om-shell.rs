//! om-shell: a login shell that puts the session under om. Set as a user's
//! shell (listed in /etc/shells, chosen with `chsh`), it registers itself
//! with the local omd and then becomes the user's real shell, with the same
//! pid, arguments and environment, so every process of the session is under
//! om and can migrate. `ssh host CMD`, scp, rsync and sftp (`-c CMD`) work
//! unchanged.
//!
//! The real shell: `$OM_SHELL`, else `shell` in om.toml, else /bin/bash. A
//! leading `-` in argv[0] (a login shell) is kept. With no omd, the shell
//! still starts, after one warning on stderr: nobody is locked out of a
//! machine because omd is down.
//!
//! `no_main`: Rust's usual entry would ignore SIGPIPE, and an ignored
//! signal stays ignored across exec.
#![no_main]

use om_loadbal::config;
use om_runtime::client::{socket_path, Client};
use std::path::{Path, PathBuf};

const DEFAULT_SHELL: &str = "/bin/bash";

#[no_mangle]
extern "C" fn main(_argc: i32, _argv: *const *const u8) -> i32 {
    let args: Vec<String> = std::env::args().collect();
    let me = args.first().cloned().unwrap_or_else(|| "om-shell".into());
    let login = me.starts_with('-');
    // A broken om.toml must not keep anyone out: its defaults, with a word.
    let file = config::load(None).unwrap_or_else(|e| {
        eprintln!("om-shell: {e}; using the defaults");
        config::File::default()
    });
    let shell = real_shell(std::env::var_os("OM_SHELL").map(PathBuf::from), file.shell);
    let sock = match (std::env::var_os("OM_SOCKET"), file.socket) {
        (None, Some(s)) => s,
        _ => socket_path(None),
    };
    let name = shell.file_name().map_or_else(|| "sh".into(), |n| n.to_string_lossy().into_owned());
    let argv0 = if login { format!("-{name}") } else { shell.to_string_lossy().into_owned() };
    let cmd = std::iter::once(name.clone()).chain(args.iter().skip(1).cloned()).collect::<Vec<_>>().join(" ");
    let pid = std::process::id() as i32;
    if let Err(e) = Client::connect(&sock).and_then(|mut c| c.register_with(pid, &cmd, false, None)) {
        eprintln!("om-shell: {e}; starting {} without om", shell.display());
    }
    let argv: Vec<String> = std::iter::once(argv0).chain(args.into_iter().skip(1)).collect();
    let err = om_runtime::sys::execvp(&shell.to_string_lossy(), &argv);
    eprintln!("om-shell: cannot run {}: {err}", shell.display());
    if shell != Path::new(DEFAULT_SHELL) {
        // The configured shell is broken: the default rather than no shell.
        let argv: Vec<String> = std::iter::once(if login { "-bash".into() } else { DEFAULT_SHELL.into() })
            .chain(argv.into_iter().skip(1))
            .collect();
        let err = om_runtime::sys::execvp(DEFAULT_SHELL, &argv);
        eprintln!("om-shell: cannot run {DEFAULT_SHELL} either: {err}");
    }
    if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    }
}

/// The shell to become: `$OM_SHELL`, else om.toml's, else /bin/bash; never
/// om-shell itself (that would exec itself for ever).
fn real_shell(env: Option<PathBuf>, file: Option<PathBuf>) -> PathBuf {
    let is_us = |p: &Path| {
        p.file_name().is_some_and(|n| n == "om-shell")
            || std::fs::canonicalize(p).ok().zip(std::env::current_exe().ok()).is_some_and(|(a, b)| a == b)
    };
    [env, file]
        .into_iter()
        .flatten()
        .find(|p| !p.as_os_str().is_empty() && !is_us(p))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SHELL))
}
