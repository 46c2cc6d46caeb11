//! End-to-end: memory arrives exactly as it was, whatever its protection.
//! The same fixture runs natively (under om, never moved), checked while away
//! on node 2, and moved 2 -> 3 -> home; every byte and every protection must
//! match.

use om_tests::{bin, wait_child, wait_lines, Cluster};
use std::path::Path;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// The fixture's regions: (name, start, end) from its `region` lines.
fn regions(out: &Path) -> Vec<(String, u64, u64)> {
    let lines = wait_lines(out, 6, T);
    lines
        .iter()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&"region")).then(|| {
                (
                    f[1].to_string(),
                    u64::from_str_radix(f[2], 16).expect("hex"),
                    u64::from_str_radix(f[3], 16).expect("hex"),
                )
            })
        })
        .collect()
}

/// The permissions column (`rwxp`) of the mapping at exactly [start, end) in `pid`'s maps.
fn perms(pid: u32, start: u64, end: u64) -> Option<String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    maps.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let range = f.next()?;
        let (a, b) = range.split_once('-')?;
        (u64::from_str_radix(a, 16).ok()? == start && u64::from_str_radix(b, 16).ok()? == end)
            .then(|| f.next().map(str::to_string))?
    })
}

/// The process on this host (other than `home_pid`) that has the fixture's
/// first region mapped: the guest, when the process is away.
fn guest_of(home_pid: u32, start: u64, end: u64) -> u32 {
    let t0 = std::time::Instant::now();
    loop {
        for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if pid != home_pid && comm.trim() == "memprot" && perms(pid, start, end).is_some() {
                return pid;
            }
        }
        assert!(t0.elapsed() < T, "no guest of process {home_pid} found on this host");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Ask the fixture to check itself (SIGUSR1) and wait for its verdict.
fn check(out: &Path, pid: u32, n: usize, c: &Cluster) {
    let have = wait_lines(out, 1, T).len();
    // SAFETY: signalling the process under test.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGUSR1) }, 0);
    let lines = wait_lines(out, have + 1, T);
    let last = lines.last().expect("a line");
    assert_eq!(last, &format!("check {n} ok"), "{}\n{}", lines.join("\n"), c.logs());
}

fn finish(mut p: std::process::Child, out: &Path, c: &Cluster) {
    // SAFETY: signalling the process under test.
    assert_eq!(unsafe { libc::kill(p.id() as i32, libc::SIGUSR2) }, 0);
    let st = wait_child(&mut p, T);
    let text = std::fs::read_to_string(out).unwrap_or_default();
    assert!(st.success(), "memprot ended with {st:?}:\n{text}\n{}", c.logs());
    assert!(!text.contains("FAIL"), "{text}");
}

fn expected_perms() -> [(&'static str, &'static str); 5] {
    [("none", "---p"), ("wo", "-w-p"), ("xo", "--xp"), ("ro", "r--p"), ("rw", "rw-p")]
}

fn check_perms(pid: u32, regs: &[(String, u64, u64)], when: &str) {
    for (name, want) in expected_perms() {
        let (_, s, e) = regs.iter().find(|r| r.0 == name).expect("region");
        assert_eq!(perms(pid, *s, *e).as_deref(), Some(want), "{when}: region {name} of process {pid}");
    }
}

#[test]
fn protected_memory_is_exact_natively_away_and_after_moves() {
    let c = Cluster::start(3);

    // Natively: the fixture's own checks hold and its protections are as set.
    let out = c.path("native.out");
    let p = c.om_exec(1, &bin("memprot"), &[], "native.out");
    let regs = regions(&out);
    check_perms(p.id(), &regs, "natively");
    check(&out, p.id(), 1, &c);
    finish(p, &out, &c);

    // Away on node 2 (checked there), then 3, then home.
    let out = c.path("moved.out");
    let p = c.om_exec(1, &bin("memprot"), &[], "moved.out");
    let pid = p.id();
    let regs = regions(&out);
    c.migrate(1, pid, "2").unwrap_or_else(|e| panic!("migrate to 2: {e}\n{}", c.logs()));
    assert_eq!(c.where_is(1, pid), Some(2));
    let (_, s, e) = regs[0].clone();
    check_perms(guest_of(pid, s, e), &regs, "away on node 2");
    check(&out, pid, 1, &c);
    c.migrate(1, pid, "3").unwrap_or_else(|e| panic!("migrate to 3: {e}\n{}", c.logs()));
    check(&out, pid, 2, &c);
    c.migrate(1, pid, "home").unwrap_or_else(|e| panic!("migrate home: {e}\n{}", c.logs()));
    assert_eq!(c.where_is(1, pid), Some(1));
    check_perms(pid, &regs, "back home");
    check(&out, pid, 3, &c);
    finish(p, &out, &c);
}

/// Guard pages (MADV_GUARD_INSTALL): the process moves with its guards in
/// place (a write() from one fails with EFAULT there too), never with EIO.
#[test]
fn guard_pages_move_with_the_process() {
    let c = Cluster::start(3);
    let out = c.path("guard.out");
    let p = c.om_exec(1, &bin("memprot"), &["guard"], "guard.out");
    let pid = p.id();
    let lines = wait_lines(&out, 1, T);
    assert!(
        !lines[0].starts_with("guard pages unsupported"),
        "this kernel has no MADV_GUARD_INSTALL (Linux 6.13+ is needed for this test): {}",
        lines[0]
    );
    regions(&out);
    check(&out, pid, 1, &c);
    c.migrate(1, pid, "2").unwrap_or_else(|e| panic!("migrate to 2: {e}\n{}", c.logs()));
    check(&out, pid, 2, &c);
    c.migrate(1, pid, "3").unwrap_or_else(|e| panic!("migrate to 3: {e}\n{}", c.logs()));
    c.migrate(1, pid, "home").unwrap_or_else(|e| panic!("migrate home: {e}\n{}", c.logs()));
    check(&out, pid, 3, &c);
    finish(p, &out, &c);
}

/// (Shared_Dirty, Private_Dirty) in kB of the mapping of `pid` at `addr`.
fn dirty_kb(pid: u32, addr: u64) -> (u64, u64) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("smaps");
    let (mut inside, mut shared, mut private) = (false, 0, 0);
    for l in smaps.lines() {
        let first = l.split(' ').next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            inside = first.split('-').next().and_then(|a| u64::from_str_radix(a, 16).ok()) == Some(addr);
        }
        let kb = |l: &str| l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        if inside && l.starts_with("Shared_Dirty:") {
            shared = kb(l);
        }
        if inside && l.starts_with("Private_Dirty:") {
            private = kb(l);
        }
    }
    (shared, private)
}

/// Pages a process shares copy-on-write with its child stay shared after a
/// move out and back, except those it changed away: the move does not
/// double its memory. Checked at home through /proc/PID/smaps.
#[test]
fn pages_shared_with_a_child_stay_shared_after_a_move_out_and_back() {
    use std::io::{BufRead, Write};
    let c = Cluster::start(3);
    let (mut p, mut out, line) = c.om_exec_piped(1, &bin("cowshare"), &["32"]);
    let pid = p.id();
    let mut stdin = p.stdin.take().expect("in");
    let addr = u64::from_str_radix(line.strip_prefix("ready ").expect("ready ADDR"), 16).expect("addr");
    let (shared, private) = dirty_kb(pid, addr);
    assert!(shared >= 32 * 1024 - 64 && private < 64, "before any move: shared {shared} kB, private {private} kB");
    let mut say = |what: &str| -> String {
        stdin.write_all(format!("{what}\n").as_bytes()).expect("stdin");
        let mut l = String::new();
        out.read_line(&mut l).expect("answer");
        l.trim().to_string()
    };
    for to in ["2", "3"] {
        c.migrate(1, pid, to).unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    }
    assert_eq!(say("touch"), "touched");
    c.migrate(1, pid, "home").unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    assert_eq!(say("check"), "ok", "{}", c.logs());
    let (shared, private) = dirty_kb(pid, addr);
    assert!(
        shared >= 31 * 1024 - 64 && private <= 1024 + 64,
        "after 2 -> 3 -> home with 1 MiB changed away: shared {shared} kB, private {private} kB (expected about 31 MiB shared, 1 MiB private)"
    );
    drop(stdin);
    assert!(wait_child(&mut p, T).success());
}

/// A cluster whose nodes all declare `dir` cluster-consistent.
fn consistent_cluster(n: u32, tag: &str) -> (Cluster, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("om-consistent-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let conf = dir.join("om.toml");
    std::fs::write(&conf, format!("consistent_paths = [\"{}\"]\n", dir.display())).expect("config");
    let c = Cluster::start_with(n, |_| vec!["--config".into(), conf.display().to_string()]);
    (c, dir)
}

/// The 8-byte little-endian word at `off` of `file`.
fn word(file: &Path, off: usize) -> u64 {
    let b = std::fs::read(file).expect("file");
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

/// A shared writable mapping of a file on a cluster-consistent path moves
/// 2 -> 3 -> home: its writes reach the file while it is away (a reader
/// sees them with read(), as natively), and every one counts at the end.
#[test]
fn a_shared_writable_file_mapping_on_a_consistent_path_moves() {
    let (c, dir) = consistent_cluster(3, "map");
    let file = dir.join("counter");
    std::fs::write(&file, vec![0u8; 8192]).expect("file");
    let ticks = 150u64;
    let mut p = c.om_exec(1, &bin("sharedmap"), &[file.to_str().expect("path"), &ticks.to_string()], "map.out");
    wait_lines(&c.path("map.out"), 3, T);
    c.migrate(1, p.id(), "2").unwrap_or_else(|e| panic!("to 2: {e}\n{}", c.logs()));
    let seen = word(&file, 4096);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(c.where_is(1, p.id()), Some(2), "{}", c.logs());
    let later = word(&file, 4096);
    assert!(later > seen, "writes away did not reach the file ({seen} then {later})\n{}", c.logs());
    c.migrate(1, p.id(), "3").unwrap_or_else(|e| panic!("to 3: {e}\n{}", c.logs()));
    std::thread::sleep(Duration::from_millis(300));
    c.migrate(1, p.id(), "home").unwrap_or_else(|e| panic!("home: {e}\n{}", c.logs()));
    assert!(wait_child(&mut p, T).success(), "{}", c.logs());
    let out = wait_lines(&c.path("map.out"), ticks as usize + 2, T);
    assert_eq!(out.last().map(String::as_str), Some(format!("count {ticks}").as_str()), "{}", c.logs());
    assert_eq!((word(&file, 0), word(&file, 4096)), (ticks, ticks), "{}", c.logs());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A shared writable file mapping is refused, with the reason, when the
/// file is not on a cluster-consistent path, or when another process maps
/// it too (named); the process runs on at home and finishes.
#[test]
fn shared_file_mappings_elsewhere_or_shared_with_another_are_refused() {
    let (c, dir) = consistent_cluster(2, "refuse");
    let outside = c.path("outside");
    std::fs::write(&outside, vec![0u8; 8192]).expect("file");
    let inside = dir.join("shared");
    std::fs::write(&inside, vec![0u8; 8192]).expect("file");
    let mut other = std::process::Command::new(bin("sharedmap"))
        .args([inside.to_str().expect("path"), "100000", "50"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("sharedmap");
    for (file, why) in [
        (&outside, "not on a cluster-consistent path".to_string()),
        (&inside, format!("process {} (sharedmap) maps too", other.id())),
    ] {
        let out = format!("{}.out", file.file_name().and_then(|n| n.to_str()).unwrap_or("x"));
        let mut p = c.om_exec(1, &bin("sharedmap"), &[file.to_str().expect("path"), "60"], &out);
        wait_lines(&c.path(&out), 3, T);
        let e = c.migrate(1, p.id(), "2").expect_err("the move must be refused");
        assert!(e.contains("cannot migrate") && e.contains(&why), "{e}");
        assert_eq!(c.where_is(1, p.id()), Some(1));
        assert!(wait_child(&mut p, T).success());
        // The counter is shared with the other process in the second case.
        let last = wait_lines(&c.path(&out), 62, T).last().cloned().unwrap_or_default();
        assert!(last.starts_with("count "), "{last}");
    }
    let _ = other.kill();
    let _ = other.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
