//! om-exec: run a program under om. It registers with the local omd and then
//! becomes the program (same pid, same parent), so its exit status is the program's.
//!
//! `no_main`: Rust's usual entry would ignore SIGPIPE before `main`, and an
//! ignored signal stays ignored across exec; the program must start with the
//! dispositions om-exec was given (`yes | head` ends `yes` by SIGPIPE).
#![no_main]

use clap::Parser;
use om_runtime::client::{display_command, socket_path, Client};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "om-exec", about = "run PROG under om: it starts at home and can migrate while it runs")]
struct Args {
    /// omd's control socket [default: $OM_SOCKET, else /run/om/omd.sock].
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Keep the process where it starts: the balancer never moves it.
    #[arg(long)]
    lock: bool,
    /// Start on this node: it moves there as soon as the program has started.
    #[arg(long)]
    node: Option<u32>,
    /// The program and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

#[no_mangle]
extern "C" fn main(_argc: i32, _argv: *const *const u8) -> i32 {
    let a = Args::parse();
    let path = socket_path(a.socket.as_deref());
    let me = std::process::id() as i32;
    let result =
        Client::connect(&path).and_then(|mut c| c.register_with(me, &display_command(&a.command), a.lock, a.node));
    if let Err(e) = result {
        eprintln!("om-exec: {e}");
        std::process::exit(125);
    }
    let err = om_runtime::sys::execvp(&a.command[0], &a.command);
    eprintln!("om-exec: cannot run {}: {err}", a.command[0]);
    if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    }
}
