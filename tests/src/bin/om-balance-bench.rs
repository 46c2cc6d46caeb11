//! om-balance-bench: makespans of a batch of 16 uneven CPU-bound jobs (Python
//! loops and xz compressions of random data) started on node 1 of
//! `omctl sim up 4`, with om's balancer, with static round-robin placement,
//! and all at home; against the ideal (the batch's CPU work, measured in the
//! same run, over the cluster's CPU capacity). Then the same with speeds
//! 2,1,1,0.5, and an I/O-heavy job that must stay home.

use om_tests::{bin, require_root};
use serde_json::Value;
use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CPU_PER_SPEED: f64 = 0.4;

fn omctl(args: &[&str]) -> std::process::Output {
    Command::new(bin("omctl")).env_remove("OM_SOCKET").args(args).output().expect("omctl")
}

/// The real Python interpreter (not a wrapper script such as pyenv's shim,
/// which would add a shell and its children to every job).
fn python() -> String {
    let o = Command::new("python3").args(["-c", "import sys; print(sys.executable)"]).output().expect("python3");
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// The batch: program and arguments of each job.
fn jobs(dir: &std::path::Path, py: &str) -> Vec<Vec<String>> {
    let mut v = Vec::new();
    for (i, m) in [10, 20, 30, 40, 15, 25, 35, 45].iter().enumerate() {
        let n = m * 1_000_000;
        v.push(vec![py.into(), "-c".into(), format!("s=0\nfor i in range({n}): s+=i*{}\nprint(s)", i + 1)]);
    }
    for mb in [2, 4, 6, 8, 3, 5, 7, 9] {
        let f = dir.join(format!("rand-{mb}M"));
        if !f.exists() {
            let data: Vec<u8> = {
                let mut d = vec![0u8; mb << 20];
                std::fs::File::open("/dev/urandom")
                    .and_then(|mut r| std::io::Read::read_exact(&mut r, &mut d))
                    .expect("random data");
                d
            };
            std::fs::write(&f, data).expect("write random data");
        }
        v.push(vec!["xz".into(), "-6".into(), "-T1".into(), "-c".into(), f.display().to_string()]);
    }
    v
}

/// CPU seconds of each job, run natively, all at once.
fn cpu_work(jobs: &[Vec<String>]) -> f64 {
    let kids: Vec<_> =
        jobs.iter().map(|j| Command::new(&j[0]).args(&j[1..]).stdout(Stdio::null()).spawn().expect("job")).collect();
    kids.iter()
        .map(|k| {
            let (st, cpu) = om_tests::sys::wait_rusage(k.id() as i32).expect("wait4");
            assert!(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0, "a job failed natively");
            cpu
        })
        .sum()
}

/// Per job: its node over time, and the busy seconds of each node.
#[derive(Default)]
struct Watch {
    places: HashMap<u32, Vec<u64>>,
    busy: HashMap<u64, f64>,
}

fn watch(stop: Arc<AtomicBool>, out: Arc<Mutex<Watch>>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let dt = 0.25;
        while !stop.load(Ordering::SeqCst) {
            let o = omctl(&["--json", "ps"]);
            let v: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
            let mut w = out.lock().unwrap();
            let mut busy: Vec<u64> = Vec::new();
            for p in v.as_array().cloned().unwrap_or_default() {
                let (Some(pid), Some(at)) = (p["pid"].as_u64(), p["where"].as_u64()) else { continue };
                w.places.entry(pid as u32).or_default().push(at);
                if !busy.contains(&at) {
                    busy.push(at);
                }
            }
            for b in busy {
                *w.busy.entry(b).or_default() += dt;
            }
            drop(w);
            std::thread::sleep(Duration::from_secs_f64(dt));
        }
    })
}

enum Mode {
    Om,
    RoundRobin,
    Home,
}

/// Run the batch under om; returns (makespan, watch, io job samples at home / all).
fn batch(jobs: &[Vec<String>], mode: Mode, io: Option<&Vec<String>>) -> (f64, Watch, Option<(usize, usize)>) {
    let stop = Arc::new(AtomicBool::new(false));
    let w = Arc::new(Mutex::new(Watch::default()));
    let t = Instant::now();
    let mut kids = Vec::new();
    for (i, j) in jobs.iter().enumerate() {
        let mut c = Command::new(bin("om-exec"));
        c.env_remove("OM_SOCKET");
        match mode {
            Mode::Om => {}
            Mode::Home => {
                c.arg("--lock");
            }
            Mode::RoundRobin => {
                c.arg("--lock");
                let node = i % 4 + 1;
                if node != 1 {
                    c.arg("--node").arg(node.to_string());
                }
            }
        }
        kids.push(c.arg("--").args(j).stdout(Stdio::null()).spawn().expect("om-exec"));
    }
    let mut io_kid = io.map(|j| {
        Command::new(bin("om-exec")).env_remove("OM_SOCKET").arg("--").args(j).stdout(Stdio::null()).spawn().unwrap()
    });
    let h = watch(stop.clone(), w.clone());
    for k in &mut kids {
        assert!(k.wait().expect("wait").success(), "a job failed under om");
    }
    let makespan = t.elapsed().as_secs_f64();
    let io_home = io_kid.as_mut().map(|k| {
        let _ = k.wait();
        let w = w.lock().unwrap();
        let s = w.places.get(&k.id()).cloned().unwrap_or_default();
        (s.iter().filter(|&&n| n == 1).count(), s.len())
    });
    stop.store(true, Ordering::SeqCst);
    let _ = h.join();
    let w = std::mem::take(&mut *w.lock().unwrap());
    (makespan, w, io_home)
}

fn moves(w: &Watch) -> usize {
    w.places.values().map(|s| s.windows(2).filter(|p| p[0] != p[1]).count()).sum()
}

fn main() {
    require_root();
    let dir = std::env::temp_dir().join("om-balance-bench");
    std::fs::create_dir_all(&dir).expect("bench dir");
    let py = python();
    let jobs = jobs(&dir, &py);
    let big = dir.join("stream-64M");
    if !big.exists() {
        std::fs::write(&big, vec![7u8; 64 << 20]).expect("stream file");
    }
    println!("| what | om makespan | ideal: work / measured capacity | om / ideal | ideal by nominal quota | all at home | round-robin at start | om vs round-robin | om migrations | target | met |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for speeds in [[1.0, 1.0, 1.0, 1.0], [2.0, 1.0, 1.0, 0.5]] {
        let _ = omctl(&["sim", "down"]);
        let work = cpu_work(&jobs);
        let cap: f64 = speeds.iter().map(|s| s * CPU_PER_SPEED).sum();
        let ideal = work / cap;
        let list: Vec<String> = speeds.iter().map(|s| s.to_string()).collect();
        let o = omctl(&["sim", "up", "4", "--speeds", &list.join(","), "--cpu-per-speed", &CPU_PER_SPEED.to_string()]);
        assert!(o.status.success(), "sim up: {}", String::from_utf8_lossy(&o.stderr));
        let equal = speeds[0] == speeds[3];
        let io = vec![
            py.clone(),
            "-c".into(),
            format!(
                "import time\nt=time.time()\nwhile time.time()-t<{}:\n  f=open('{}','rb',buffering=0)\n  while f.read(65536): pass\n  f.close()",
                if equal { 20 } else { 1 },
                big.display()
            ),
        ];
        let (om, w, io_home) = batch(&jobs, Mode::Om, equal.then_some(&io));
        let (rr, _, _) = batch(&jobs, Mode::RoundRobin, None);
        let (home, _, _) = batch(&jobs, Mode::Home, None);
        let _ = omctl(&["sim", "down"]);
        // The capacity the quotas really give, measured in this run: node 1
        // alone does the whole batch in `home` seconds (never idle before
        // the last job ends), and the other nodes give in proportion to speed.
        let per_speed = work / home / speeds[0];
        let measured = work / (per_speed * speeds.iter().sum::<f64>());
        let r = om / measured;
        println!(
            "| 16 jobs from node 1, speeds {} ({:.1} CPU-s of work) | {om:.1} s | {measured:.1} s ({:.2} CPU per speed unit) | {r:.2}x | {ideal:.1} s ({CPU_PER_SPEED} CPU per speed unit) | {home:.1} s | {rr:.1} s | {:.2}x faster | {} | <= 1.15x ideal | {} |",
            list.join(","),
            work,
            per_speed,
            rr / om,
            moves(&w),
            if r <= 1.15 { "yes" } else { "no" }
        );
        let total: f64 = (1..=4).map(|n| w.busy.get(&n).copied().unwrap_or(0.0) * speeds[n as usize - 1]).sum();
        let shares: Vec<String> = (1..=4)
            .map(|n| {
                let s = w.busy.get(&n).copied().unwrap_or(0.0) * speeds[n as usize - 1] / total.max(1e-9);
                format!(
                    "node {n} {:.0}% (speed share {:.0}%)",
                    s * 100.0,
                    speeds[n as usize - 1] / speeds.iter().sum::<f64>() * 100.0
                )
            })
            .collect();
        println!("|  work done per node (om) | {} | | | | | | | | proportional to speed | |", shares.join(", "));
        if let Some((at_home, all)) = io_home {
            println!(
                "|  I/O-heavy job streaming a 64 MiB file at home during the batch | at home in {at_home} of {all} samples | | | | | | | | stays home | {} |",
                if at_home == all { "yes" } else { "no" }
            );
        }
    }
}
