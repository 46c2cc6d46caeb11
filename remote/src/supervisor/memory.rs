//! Memory calls that trap: mmap of a file (or shared memory).

use super::*;

impl Supervisor {
    /// A file mapping (the filter lets anonymous ones through). A private or
    /// read-only mapping of a file this node has identical to home's is served here: the
    /// local file is installed in the guest at the home fd's number and the
    /// kernel runs the mmap. Anything else runs at home.
    pub(super) fn mmap_file(&mut self, n: &SeccompNotif) -> Flow {
        let a = n.data.args;
        let fd = a[4] as i32;
        if a[3] & libc::MAP_ANONYMOUS as u64 != 0 {
            // Private anonymous maps never trap. A shared one is made here
            // (it is the guest's own memory); it moves with the process, and
            // a fork (which runs at home) shares it there.
            let _ = sys::seccomp_send(self.lfd(), n.id, 0, true);
            return Flow::Go;
        }
        if fd < 0 {
            self.reply(n.id, -(libc::EBADF as i64));
            return Flow::Go;
        }
        // A read-only shared mapping of an identical file reads the same bytes
        // here (the local file is opened read-only); a writable one runs at home.
        let map_type = a[3] & 0x0f; // MAP_TYPE: a field, not bits (MAP_SHARED_VALIDATE = 3)
        let shared = map_type == libc::MAP_SHARED as u64 || map_type == libc::MAP_SHARED_VALIDATE as u64;
        if shared && a[2] & libc::PROT_WRITE as u64 != 0 {
            return self.go_home("writable shared file mappings run at home", Some(n.id));
        }
        let file = loop {
            match self.fd_ident(fd) {
                Ok(f) => break f,
                Err(true) => match self.park_or_home(n.id) {
                    Some(flow) => return flow,
                    None => continue,
                },
                Err(false) => {
                    let _ = sys::kill(self.gpid, libc::SIGKILL);
                    return Flow::Go;
                }
            }
        };
        let Some((path, id)) = file else {
            return self.go_home("mapping something that is not a regular file runs at home", Some(n.id));
        };
        if image::file_id(&path).as_ref() != Some(&id) {
            return self.go_home("mapping a file this node does not have runs at home", Some(n.id));
        }
        let local = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(_) => return self.go_home("mapping a file this node cannot open runs at home", Some(n.id)),
        };
        let lfd = self.lfd();
        match sys::seccomp_addfd_at(lfd, n.id, local.as_raw_fd(), fd) {
            Ok(_) => {
                let _ = sys::seccomp_send(lfd, n.id, 0, true);
                Flow::Go
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Flow::Go,
            Err(_) => self.go_home("mapping a file runs at home", Some(n.id)),
        }
    }
}
