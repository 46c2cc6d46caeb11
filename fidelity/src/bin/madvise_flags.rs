//! Memory attributes set with madvise and mlock survive: MADV_DONTFORK,
//! MADV_WIPEONFORK, mlock, MADV_HUGEPAGE and MADV_NOHUGEPAGE show in
//! /proc/self/smaps, and a child sees a wiped page.

fn region(advice: i32) -> usize {
    let len = 4 << 20;
    // SAFETY: a fresh anonymous mapping of our own, then advice on it.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        std::ptr::write_bytes(p as *mut u8, 7, 4096);
        if advice == -1 {
            libc::mlock(p, 4096 * 4);
        } else {
            libc::madvise(p, len, advice);
        }
        p as usize
    }
}

fn flags(at: usize) -> String {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let head = format!("{at:x}-");
    let mut inside = false;
    for l in smaps.lines() {
        if l.contains(" ") && l.split(' ').next().is_some_and(|r| r.contains('-') && !r.ends_with(':')) {
            inside = l.starts_with(&head);
        }
        if inside {
            if let Some(v) = l.strip_prefix("VmFlags:") {
                let keep = ["dc", "wf", "lo", "hg", "nh"];
                return v.split_whitespace().filter(|f| keep.contains(f)).collect::<Vec<_>>().join(" ");
            }
        }
    }
    "?".into()
}

fn main() {
    om_fidelity::case(
        || {
            [
                ("dontfork", region(libc::MADV_DONTFORK)),
                ("wipeonfork", region(libc::MADV_WIPEONFORK)),
                ("mlock", region(-1)),
                ("hugepage", region(libc::MADV_HUGEPAGE)),
                ("nohugepage", region(libc::MADV_NOHUGEPAGE)),
            ]
        },
        |rs, seen| {
            for (name, at) in rs {
                seen.note(name, flags(at));
            }
            let wipe = rs[1].1 as *const u8;
            // SAFETY: fork; the child reads one byte of a wipe-on-fork page and exits.
            let child = unsafe { libc::fork() };
            if child == 0 {
                // SAFETY: the page is mapped (and zero in the child).
                let v = unsafe { *wipe };
                // SAFETY: leave the child at once.
                unsafe { libc::_exit(v as i32) };
            }
            let mut st = 0;
            // SAFETY: wait for our child.
            unsafe { libc::waitpid(child, &mut st, 0) };
            seen.expect("child's wiped byte", libc::WEXITSTATUS(st), 0);
        },
    );
}
