//! A tiny GNU parallel on the cluster: runs each line of FILE with `sh -c`
//! under om, N at a time, and prints for each the nodes it ran on and its
//! exit status. Run it with `cargo run -p om --example parallel -- -j 4 jobs.txt`.
//!
//! Usage: parallel [-j N] [--socket PATH] FILE

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut jobs, mut socket, mut file) = (2usize, None::<String>, None::<String>);
    while let Some(a) = args.next() {
        match a.as_str() {
            "-j" => jobs = args.next().and_then(|n| n.parse().ok()).filter(|&n| n > 0).unwrap_or_else(|| usage()),
            "--socket" => socket = Some(args.next().unwrap_or_else(|| usage())),
            f if file.is_none() => file = Some(f.to_string()),
            _ => usage(),
        }
    }
    let file = file.unwrap_or_else(|| usage());
    let lines: Vec<String> = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| fail(&format!("cannot read {file}: {e}")))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    let sock = socket.as_deref().map(std::path::Path::new);

    // Where each job ran: its home node, then every move the events tell.
    let home = om::nodes(sock).ok().and_then(|n| n.first().map(|n| n.id)).unwrap_or(1);
    let ran_on: Arc<Mutex<HashMap<u32, Vec<u32>>>> = Arc::default();
    let events = om::events(sock).unwrap_or_else(|e| fail(&e.to_string()));
    let seen = ran_on.clone();
    std::thread::spawn(move || {
        for e in events.map_while(Result::ok) {
            if e.kind == "moved" || e.kind == "home" {
                seen.lock().unwrap_or_else(|p| p.into_inner()).entry(e.pid as u32).or_default().push(e.to);
            }
        }
    });

    let mut running: Vec<(String, om::Child)> = Vec::new();
    let mut next = lines.into_iter();
    let mut failed = 0;
    loop {
        while running.len() < jobs {
            let Some(line) = next.next() else { break };
            let mut c = om::Command::new("sh");
            c.args(["-c", &line]);
            if let Some(s) = &socket {
                c.socket(s);
            }
            match c.spawn() {
                Ok(child) => running.push((line, child)),
                Err(e) => fail(&format!("{line}: {e}")),
            }
        }
        if running.is_empty() {
            break;
        }
        let mut k = 0;
        while k < running.len() {
            match running[k].1.try_wait() {
                Ok(Some(status)) => {
                    let (line, child) = running.swap_remove(k);
                    let mut nodes = vec![home];
                    nodes.extend(
                        ran_on.lock().unwrap_or_else(|p| p.into_inner()).remove(&child.id()).unwrap_or_default(),
                    );
                    nodes.dedup();
                    let nodes: Vec<String> = nodes.iter().map(u32::to_string).collect();
                    failed += usize::from(!status.success());
                    println!("{line}\tnodes {}\t{status}", nodes.join(","));
                }
                Ok(None) => k += 1,
                Err(e) => fail(&e.to_string()),
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::process::exit(i32::from(failed > 0));
}

fn usage() -> ! {
    fail("usage: parallel [-j N] [--socket PATH] FILE")
}

fn fail(msg: &str) -> ! {
    eprintln!("parallel: {msg}");
    std::process::exit(2)
}
