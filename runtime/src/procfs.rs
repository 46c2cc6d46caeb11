//! Small /proc readers for the fields om needs.

use std::io;

/// One line of /proc/PID/maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapLine {
    pub start: u64,
    pub end: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    pub shared: bool,
    pub offset: u64,
    pub inode: u64,
    pub path: String,
}

pub fn parse_maps(text: &str) -> Vec<MapLine> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut it = line.splitn(6, ' ');
        let (Some(range), Some(perms), Some(off), Some(_dev), Some(inode)) =
            (it.next(), it.next(), it.next(), it.next(), it.next())
        else {
            continue;
        };
        let path = it.next().unwrap_or("").trim_start().to_string();
        let Some((s, e)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(s, 16), u64::from_str_radix(e, 16)) else {
            continue;
        };
        let p = perms.as_bytes();
        if p.len() < 4 {
            continue;
        }
        out.push(MapLine {
            start,
            end,
            read: p[0] == b'r',
            write: p[1] == b'w',
            exec: p[2] == b'x',
            shared: p[3] == b's',
            offset: u64::from_str_radix(off, 16).unwrap_or(0),
            inode: inode.parse().unwrap_or(0),
            path,
        });
    }
    out
}

pub fn maps(pid: i32) -> io::Result<Vec<MapLine>> {
    Ok(parse_maps(&std::fs::read_to_string(format!("/proc/{pid}/maps"))?))
}

/// Fields of /proc/PID/stat after the command name, indexed by their
/// 1-based field number in proc(5).
pub struct Stat {
    fields: Vec<String>,
    pub comm: String,
}

impl Stat {
    pub fn field(&self, n: usize) -> u64 {
        // fields[0] is field 3 (state).
        self.fields.get(n.wrapping_sub(3)).and_then(|f| f.parse::<i64>().ok()).map_or(0, |v| v as u64)
    }
    pub fn state(&self) -> char {
        self.fields.first().and_then(|s| s.chars().next()).unwrap_or('?')
    }
}

pub fn parse_stat(text: &str) -> Option<Stat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_string();
    let fields = text[close + 1..].split_whitespace().map(str::to_string).collect();
    Some(Stat { fields, comm })
}

pub fn stat(pid: i32) -> io::Result<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&text).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad /proc stat"))
}

/// Time a task (process or thread id) ran and waited to run, ns
/// (`/proc/ID/schedstat`).
pub fn schedstat(id: i32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{id}/schedstat")).ok()?;
    let mut it = s.split_whitespace().map(|x| x.parse::<u64>().ok());
    Some((it.next()??, it.next()??))
}

/// Time all threads of process `pid` ran and waited to run, ns: a process
/// with four busy threads counts as four cores of demand. (A thread that
/// ended takes its time with it: readings may go down.)
pub fn process_schedstat(pid: i32) -> Option<(u64, u64)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return schedstat(pid) };
    let (mut run, mut wait, mut any) = (0u64, 0u64, false);
    for t in tasks.flatten() {
        let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if let Some((r, w)) = schedstat(tid) {
            run += r;
            wait += w;
            any = true;
        }
    }
    any.then_some((run, wait))
}

/// Resident bytes of a process (`/proc/PID/statm`).
pub fn rss(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Whether process `pid`'s process group is orphaned (no member has a parent
/// in another group of the same session): the kernel then drops the stop
/// signals TSTP, TTIN and TTOU that would stop it by default.
pub fn pgrp_orphaned(pid: i32) -> bool {
    let Ok(me) = stat(pid) else { return false };
    let (pgid, sid) = (me.field(5), me.field(6));
    let Ok(dir) = std::fs::read_dir("/proc") else { return false };
    for e in dir.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(st) = stat(p) else { continue };
        if st.field(5) != pgid {
            continue;
        }
        if let Ok(parent) = stat(st.field(4) as i32) {
            if parent.field(5) != pgid && parent.field(6) == sid {
                return false;
            }
        }
    }
    true
}

/// The fds of process `pid` that nobody else reads from: a socket no other
/// process holds, or the read end of a pipe no other process holds a
/// readable fd on. (Reading ahead of such an fd cannot take data another
/// reader would have had.)
pub fn sole_readers(pid: i32) -> Vec<i32> {
    let readable = |p: &str, fd: &str| {
        let info = std::fs::read_to_string(format!("/proc/{p}/fdinfo/{fd}")).unwrap_or_default();
        let flags = status_field_in(&info, "flags").and_then(|f| u32::from_str_radix(&f, 8).ok()).unwrap_or(0);
        flags & libc::O_ACCMODE as u32 != libc::O_WRONLY as u32
    };
    let links = |p: &str| -> Vec<(String, String)> {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{p}/fd")) else { return Vec::new() };
        dir.flatten()
            .filter_map(|e| {
                let fd = e.file_name().to_str()?.to_string();
                let to = std::fs::read_link(e.path()).ok()?.to_string_lossy().into_owned();
                (to.starts_with("socket:[") || to.starts_with("pipe:[")).then_some((fd, to))
            })
            .collect()
    };
    let me = pid.to_string();
    let mut mine: Vec<(String, String)> = links(&me);
    mine.retain(|(fd, to)| to.starts_with("socket:[") || readable(&me, fd));
    if mine.is_empty() {
        return Vec::new();
    }
    let mut shared = std::collections::HashSet::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    for e in dir.flatten() {
        let Some(p) = e.file_name().to_str().map(str::to_string) else { continue };
        if p == me || p.parse::<i32>().is_err() {
            continue;
        }
        for (fd, to) in links(&p) {
            if mine.iter().any(|(_, t)| *t == to) && (to.starts_with("socket:[") || readable(&p, &fd)) {
                shared.insert(to);
            }
        }
    }
    mine.iter().filter(|(_, to)| !shared.contains(to)).filter_map(|(fd, _)| fd.parse().ok()).collect()
}

/// The processes of process group `pgrp`.
pub fn group_members(pgrp: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| stat(p).is_ok_and(|st| st.field(5) == pgrp as u64))
        .collect()
}

pub fn status_field_in(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == key).then(|| v.trim().to_string())
    })
}

/// Whether a signal is pending for thread `tid` that it neither blocks nor
/// ignores (one that would run a handler or act now). True when its status
/// cannot be read.
pub fn signal_deliverable(tid: i32) -> bool {
    let Ok(st) = std::fs::read_to_string(format!("/proc/{tid}/status")) else { return true };
    let m = |k: &str| hex_mask(&status_field_in(&st, k).unwrap_or_default());
    (m("SigPnd") | m("ShdPnd")) & !m("SigBlk") & !m("SigIgn") != 0
}

pub fn hex_mask(s: &str) -> u64 {
    u64::from_str_radix(s.trim(), 16).unwrap_or(0)
}

/// Open fds of a process with their close-on-exec flag.
pub fn fds(pid: i32) -> io::Result<Vec<(i32, bool)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let e = e?;
        let Ok(fd) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap_or_default();
        let flags = status_field_in(&info, "flags").and_then(|f| u64::from_str_radix(&f, 8).ok()).unwrap_or(0);
        out.push((fd, flags & libc::O_CLOEXEC as u64 != 0));
    }
    out.sort();
    Ok(out)
}

/// Children of a process (all its threads).
pub fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in rd.flatten() {
            let p = t.path().join("children");
            if let Ok(s) = std::fs::read_to_string(p) {
                out.extend(s.split_whitespace().filter_map(|x| x.parse::<i32>().ok()));
            }
        }
    }
    out
}

/// Put process `pid` into each cgroup directory (v1 hierarchies or a v2
/// group), so it runs under that node's CPU quota.
pub fn join_cgroups(pid: i32, dirs: &[std::path::PathBuf]) -> std::io::Result<()> {
    for d in dirs {
        std::fs::write(d.join("cgroup.procs"), pid.to_string())
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", d.display())))?;
    }
    Ok(())
}

/// The 16 resource limits (soft, hard) of a process, in RLIMIT_* order,
/// from /proc/PID/limits (which root reads for any process, where prlimit on
/// another user's process needs CAP_SYS_RESOURCE).
pub fn limits(pid: i32) -> io::Result<Vec<(u64, u64)>> {
    parse_limits(&std::fs::read_to_string(format!("/proc/{pid}/limits"))?)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unreadable /proc/PID/limits"))
}

/// The kernel prints each line as "%-25s %-20s %-20s %-10s".
pub fn parse_limits(text: &str) -> Option<Vec<(u64, u64)>> {
    let value = |v: &str| -> Option<u64> {
        match v.trim() {
            "unlimited" => Some(u64::MAX),
            n => n.parse().ok(),
        }
    };
    let out: Vec<(u64, u64)> = text
        .lines()
        .skip(1)
        .map(|l| Some((value(l.get(26..47)?)?, value(l.get(47..68).or_else(|| l.get(47..))?)?)))
        .collect::<Option<_>>()?;
    (out.len() >= 16).then(|| out[..16].to_vec())
}

/// Effective uid, effective gid and supplementary groups of a process.
pub fn exec_creds(pid: i32) -> Option<(u32, u32, Vec<u32>)> {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let second = |k: &str| -> Option<u32> { status_field_in(&st, k)?.split_whitespace().nth(1)?.parse().ok() };
    let groups =
        status_field_in(&st, "Groups").unwrap_or_default().split_whitespace().filter_map(|g| g.parse().ok()).collect();
    Some((second("Uid")?, second("Gid")?, groups))
}

#[cfg(test)]
mod limits_tests {
    #[test]
    fn limits_parse_as_the_kernel_prints_them() {
        let l = super::limits(std::process::id() as i32).expect("own limits");
        assert_eq!(l.len(), 16);
        let (cur, max) = crate::sys::prlimit(0, libc::RLIMIT_STACK, None).expect("getrlimit");
        assert_eq!(l[libc::RLIMIT_STACK as usize], (cur, max));
        let (cur, max) = crate::sys::prlimit(0, libc::RLIMIT_NOFILE, None).expect("getrlimit");
        assert_eq!(l[libc::RLIMIT_NOFILE as usize], (cur, max));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pipe's read end is ours alone until another process holds it
    /// readable; its write end held elsewhere does not count.
    #[test]
    fn sole_readers_sees_other_holders_of_a_read_end() {
        use std::os::fd::AsRawFd;
        let (r, w) = std::io::pipe().expect("pipe");
        let fd = r.as_raw_fd();
        let me = std::process::id() as i32;
        // Other tests fork too: their children hold our fds for a moment
        // before they exec (close-on-exec).
        let sole = || (0..100).any(|_| sole_readers(me).contains(&fd) || !sleep_ms(10));
        assert!(sole(), "a fresh pipe's read end");
        let mut writer =
            std::process::Command::new("sleep").arg("30").stdout(w.try_clone().expect("dup")).spawn().expect("sleep");
        assert!(sole(), "another process holds only the write end");
        let mut reader =
            std::process::Command::new("sleep").arg("30").stdin(r.try_clone().expect("dup")).spawn().expect("sleep");
        assert!(!sole_readers(me).contains(&fd), "another process holds the read end");
        for c in [&mut reader, &mut writer] {
            let _ = c.kill();
            let _ = c.wait();
        }
        assert!(sole(), "the other holder is gone");
    }

    fn sleep_ms(ms: u64) -> bool {
        std::thread::sleep(std::time::Duration::from_millis(ms));
        true
    }

    #[test]
    fn maps_line() {
        let m = parse_maps(
            "55d0c0a00000-55d0c0a02000 r--p 00000000 fd:01 1234   /usr/bin/cat\n7ffd1000-7ffd3000 rw-p 00000000 00:00 0                          [stack]\n7f00-8f00 ---p 00000000 00:00 0 \n",
        );
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].path, "/usr/bin/cat");
        assert!(m[0].read && !m[0].write && !m[0].shared);
        assert_eq!(m[1].path, "[stack]");
        assert_eq!(m[2].path, "");
    }

    #[test]
    fn stat_with_spaces_in_comm() {
        let s = parse_stat("42 (a b) c) S 1 42 42 0 -1").unwrap();
        assert_eq!(s.comm, "a b) c");
        assert_eq!(s.state(), 'S');
        assert_eq!(s.field(4), 1);
        assert_eq!(s.field(5), 42);
    }
}
