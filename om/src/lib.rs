//! om for batch tools: start programs on the cluster, wait for their exit
//! status, see where they run, move them, and hear what happens to them.
//! Shaped like `std::process`.
//!
//! ```no_run
//! // Start on node 2, watch it, bring it home, wait for its own status.
//! let mut child = om::Command::new("./simulate").args(["--steps", "1e9"]).node(2).spawn()?;
//! println!("{} runs on node {}", child.id(), child.node()?);
//! child.home()?;
//! let status = child.wait()?;
//! println!("{status}");
//! # Ok::<(), om::Error>(())
//! ```
//!
//! A program started this way is under om from its first instruction, and
//! so is everything it starts; the balancer moves it like any other unless
//! [`Command::lock`] pins it. `examples/parallel.rs` is a small GNU
//! parallel on the cluster.

pub use om_runtime::embed::{events, nodes, ps, Child, Command, Error, Events, NodeInfo, ProcEvent, ProcInfo};
