//! A working directory that was removed stays the working directory:
//! getcwd fails with ENOENT and relative paths fail as natively, rather
//! than landing in some other directory.

fn getcwd() -> Result<String, i32> {
    let mut b = [0u8; 4096];
    // SAFETY: getcwd writes at most the buffer's length.
    let r = unsafe { libc::syscall(libc::SYS_getcwd, b.as_mut_ptr(), b.len()) };
    if r < 0 {
        return Err(om_fidelity::errno());
    }
    Ok(String::from_utf8_lossy(&b[..r as usize]).trim_end_matches('\0').to_string())
}

fn main() {
    om_fidelity::case(
        || {
            let d = std::env::temp_dir().join(format!("om-fid-cwd-{}", std::process::id()));
            std::fs::create_dir(&d).expect("mkdir");
            std::env::set_current_dir(&d).expect("chdir");
            std::fs::remove_dir(&d).expect("rmdir");
        },
        |_, seen| {
            seen.expect("getcwd", getcwd(), Err(libc::ENOENT));
            let made = std::fs::File::create("x").map_err(|e| e.raw_os_error().unwrap_or(0));
            seen.expect("create ./x", made.map(|_| ()), Err(libc::ENOENT));
            seen.expect(
                "stat .",
                std::fs::metadata(".").map(|m| m.nlink()).map_err(|e| e.raw_os_error().unwrap_or(0)),
                Ok(0),
            );
        },
    );
}

use std::os::unix::fs::MetadataExt;
