//! omd's configuration file (TOML), `/etc/om/om.toml` by default.
//!
//! ```toml
//! node_id = 1
//! listen = "192.168.1.10:7700"
//! seeds = ["192.168.1.11:7700", "192.168.1.12:7700"]
//! key_file = "/etc/om/cluster.key"
//! speed = 1.0
//! max_guests = 8
//! accept_guests = true
//! consistent_paths = ["/home", "/srv/data"]
//! balance = true
//! shell = "/bin/bash"   # what om-shell starts
//! ```

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub const DEFAULT_PATH: &str = "/etc/om/om.toml";

/// The file as written; every field may be left out (flags fill it in).
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub node_id: Option<u32>,
    pub listen: Option<SocketAddr>,
    pub socket: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    #[serde(default)]
    pub seeds: Vec<SocketAddr>,
    pub key_file: Option<PathBuf>,
    pub speed: Option<f64>,
    pub max_guests: Option<u32>,
    pub accept_guests: Option<bool>,
    #[serde(default)]
    pub consistent_paths: Vec<PathBuf>,
    /// Cgroup directories (one per hierarchy) that the processes this node
    /// runs are put in, for a node with a CPU quota.
    #[serde(default)]
    pub cgroups: Vec<PathBuf>,
    /// Move processes automatically (the load balancer); default true.
    pub balance: Option<bool>,
    /// Cores to count for this node [default: all it has].
    pub cpus: Option<u32>,
    /// Share of memory to keep free: below it, processes are ushered out [default: 0.1].
    pub mem_low: Option<f64>,
    /// The real shell `om-shell` starts when $OM_SHELL is not set [default: /bin/bash].
    pub shell: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}:{line}: {reason}")]
    Bad { path: String, line: usize, reason: String },
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|&b| b == b'\n').count() + 1
}

/// Parse the text of a config file; errors name the file and line.
pub fn parse(path: &Path, text: &str) -> Result<File, ConfigError> {
    let p = path.display().to_string();
    let f: File = toml::from_str(text).map_err(|e| ConfigError::Bad {
        path: p.clone(),
        line: e.span().map_or(1, |s| line_of(text, s.start)),
        reason: e.message().trim().to_string(),
    })?;
    let at = |key: &str| text.lines().position(|l| l.trim_start().starts_with(key)).map_or(1, |i| i + 1);
    let bad = |key: &str, reason: String| ConfigError::Bad { path: p.clone(), line: at(key), reason };
    if f.node_id == Some(0) {
        return Err(bad("node_id", "node_id must be a positive number".into()));
    }
    if let Some(s) = f.speed {
        if !(s.is_finite() && s > 0.0) {
            return Err(bad("speed", format!("speed must be a positive number, not {s}")));
        }
    }
    for c in &f.consistent_paths {
        if !c.is_absolute() {
            return Err(bad("consistent_paths", format!("'{}' is not an absolute path", c.display())));
        }
    }
    Ok(f)
}

/// Load `path`. A missing default file is no error (flags may say it all).
pub fn load(path: Option<&Path>) -> Result<File, ConfigError> {
    let (p, explicit) = match path {
        Some(p) => (p.to_path_buf(), true),
        None => (PathBuf::from(DEFAULT_PATH), false),
    };
    match std::fs::read_to_string(&p) {
        Ok(text) => parse(&p, &text),
        Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => Ok(File::default()),
        Err(source) => Err(ConfigError::Read { path: p.display().to_string(), source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_file_parses() {
        let f = parse(
            Path::new("om.toml"),
            "node_id = 2\nlisten = \"10.0.0.2:7700\"\nseeds = [\"10.0.0.1:7700\"]\nkey_file = \"/k\"\nspeed = 0.5\n\
             max_guests = 4\naccept_guests = false\nconsistent_paths = [\"/data\"]\n",
        )
        .unwrap();
        assert_eq!(f.node_id, Some(2));
        assert_eq!(f.seeds.len(), 1);
        assert_eq!(f.speed, Some(0.5));
        assert_eq!(f.accept_guests, Some(false));
    }

    #[test]
    fn shipped_example_parses() {
        let f = parse(Path::new("dist/om.toml"), include_str!("../../dist/om.toml")).unwrap();
        assert_eq!((f.node_id, f.seeds.len(), f.accept_guests), (Some(1), 2, Some(true)));
    }

    #[test]
    fn errors_name_file_line_and_reason() {
        let e = parse(Path::new("/etc/om/om.toml"), "node_id = 1\n\nlisten = \"nowhere\"\n").unwrap_err().to_string();
        assert!(e.starts_with("/etc/om/om.toml:3:"), "{e}");
        let e = parse(Path::new("x.toml"), "node_id = 1\nspeeed = 2\n").unwrap_err().to_string();
        assert!(e.starts_with("x.toml:2:") && e.contains("speeed"), "{e}");
        let e = parse(Path::new("x.toml"), "node_id = 1\nspeed = -1\n").unwrap_err().to_string();
        assert!(e.starts_with("x.toml:2:") && e.contains("positive"), "{e}");
        let e = parse(Path::new("x.toml"), "node_id = [\n").unwrap_err().to_string();
        assert!(e.starts_with("x.toml:"), "{e}");
    }
}
