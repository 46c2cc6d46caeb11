//! Reads of /proc/self answer the process's own state: its pid, its
//! status and its own mappings.

fn main() {
    om_fidelity::case(
        || {
            // A mapping of our own to look for in /proc/self/maps.
            // SAFETY: a fresh anonymous mapping.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    3 * 4096,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            p as u64
        },
        |at, seen| {
            let me = std::process::id();
            let link = std::fs::read_link("/proc/self").map(|p| p.display().to_string());
            seen.expect("/proc/self is our pid", link.ok() == Some(me.to_string()), true);
            let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
            let field = |k: &str| status.lines().find(|l| l.starts_with(k)).map(|l| l[k.len()..].trim().to_string());
            seen.expect("Pid is ours", field("Pid:") == Some(me.to_string()), true);
            seen.expect("Tgid is ours", field("Tgid:") == Some(me.to_string()), true);
            seen.note("Name", field("Name:").unwrap_or_default());
            let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
            seen.expect("stat pid is ours", stat.split(' ').next() == Some(me.to_string().as_str()), true);
            let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
            let want = format!("{:x}-{:x} r--p", at, at + 3 * 4096);
            seen.expect("maps has our region", maps.lines().any(|l| l.starts_with(&want)), true);
            let exe =
                std::fs::read_link("/proc/self/exe").map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
            seen.expect("exe", exe.ok().flatten(), Some("proc_self".to_string()));
        },
    );
}
