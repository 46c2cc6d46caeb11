//! mlockall(MCL_FUTURE) stays in effect: a region mapped after the move is
//! locked (VmFlags "lo" in /proc/self/smaps), while one mapped before
//! mlockall stays unlocked.

fn map(len: usize) -> usize {
    // SAFETY: a fresh anonymous mapping of our own.
    unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        ) as usize
    }
}

/// Whether the region starting at `at` is locked, per /proc/self/smaps.
fn locked(at: usize) -> String {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let head = format!("{at:x}-");
    let mut inside = false;
    for l in smaps.lines() {
        if l.split(' ').next().is_some_and(|r| r.contains('-') && !r.ends_with(':')) {
            inside = l.starts_with(&head);
        }
        if inside {
            if let Some(v) = l.strip_prefix("VmFlags:") {
                return v.split_whitespace().filter(|f| matches!(*f, "lo" | "lf")).collect::<Vec<_>>().join(" ");
            }
        }
    }
    "?".into()
}

fn main() {
    om_fidelity::case(
        || {
            let before = map(1 << 20);
            // SAFETY: a plain flag for our own future mappings.
            let r = unsafe { libc::mlockall(libc::MCL_FUTURE) };
            (before, r)
        },
        |(before, r), seen| {
            seen.expect("mlockall", r, 0);
            let after = map(64 << 10);
            seen.expect("mapped after: locked", locked(after), "lo".to_string());
            seen.expect("mapped before: not locked", locked(before), String::new());
        },
    );
}
