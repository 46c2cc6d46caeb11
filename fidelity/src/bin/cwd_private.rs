//! A working directory under a private directory (mode 0700, so no other
//! node's guest could see it) stays the working directory: getcwd and
//! relative paths behave as natively.

fn main() {
    om_fidelity::case(
        || {
            use std::os::unix::fs::PermissionsExt;
            let d = std::env::temp_dir().join(format!("om-fid-priv-{}", std::process::id()));
            std::fs::create_dir_all(d.join("inner")).expect("mkdir");
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).expect("chmod");
            std::fs::write(d.join("inner/note"), "here\n").expect("write");
            std::env::set_current_dir(d.join("inner")).expect("chdir");
            d
        },
        |d, seen| {
            seen.expect("getcwd is the directory", std::env::current_dir().ok() == Some(d.join("inner")), true);
            seen.expect("read ./note", std::fs::read_to_string("note").ok(), Some("here\n".to_string()));
            let _ = std::fs::remove_dir_all(&d);
        },
    );
}
