//! Moving an image over a link: the offer (which files the receiver can
//! reopen), the image header, and the page stream in fixed-size batches.

use crate::image::{self, FileId, Image, ReadMode};
use crate::ptrace::Tracee;
use crate::wire::{self, Frame, Msg, WireError};
use std::io::{Read, Write};

/// Page data travels in batches of this many bytes (the last may be shorter).
pub const CHUNK: usize = 4 << 20;

/// Build the offer for a process about to move.
pub fn offer(pid: i32, home: u32, token: u64, assumed: f64, gang: (u64, u32)) -> Msg {
    let (vdso_hash, vdso_len) = image::local_vdso();
    Msg::Offer {
        pid,
        home,
        token,
        files: image::mapped_files(pid),
        vdso_hash,
        vdso_len,
        xsave: crate::sys::xsave_size(),
        assumed,
        gang,
    }
}

/// The receiver's answer: refuse a different kernel or FPU state size, else say
/// which files are identical here.
pub fn answer_offer(files: &[(String, FileId)], vdso_hash: u64, vdso_len: u64, xsave: u32) -> Msg {
    let (h, l) = image::local_vdso();
    if h != vdso_hash || l != vdso_len {
        return Msg::Refused {
            reason: "this node runs a different kernel (vdso differs); the process cannot run here".into(),
        };
    }
    if crate::sys::xsave_size() != xsave {
        return Msg::Refused {
            reason: format!(
                "this node's FPU state is {} bytes, the process's is {xsave}: different CPU features",
                crate::sys::xsave_size()
            ),
        };
    }
    let reopen = files.iter().map(|(p, id)| image::file_id(p).as_ref() == Some(id)).collect();
    Msg::OfferOk { reopen }
}

/// Send the image header and every page of `pid` it lists, then `PagesDone`.
pub fn send_image<W: Write>(w: &mut W, pid: i32, img: &Image, mode: ReadMode) -> Result<u64, WireError> {
    wire::send(w, &Msg::Image(Box::new(img.clone())))?;
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    for batch in image::batch_runs(img.runs(), CHUNK) {
        let n: usize = batch.iter().map(|r| r.1).sum();
        image::read_pages(pid, &batch, &mut buf[..n], mode)?;
        wire::send_data(w, &buf[..n])?;
        total += n as u64;
    }
    wire::send(w, &Msg::PagesDone)?;
    Ok(total)
}

/// Pre-copy: send the layout and pages of the running process `pid`, and
/// return the hash of every page as sent. A piece that cannot be read (the
/// process unmapped it meanwhile) is sent as zeroes; the final pass repairs it.
pub fn send_pre_image<W: Write>(
    w: &mut W,
    pid: i32,
    img: &Image,
    mode: ReadMode,
) -> Result<image::PageHashes, WireError> {
    wire::send(w, &Msg::PreImage(Box::new(img.clone())))?;
    let mut buf = vec![0u8; CHUNK];
    let mut hashes = image::PageHashes::with_capacity((img.data_bytes() / image::PAGE) as usize);
    for batch in image::batch_runs(img.runs(), CHUNK) {
        let n: usize = batch.iter().map(|r| r.1).sum();
        if image::read_pages(pid, &batch, &mut buf[..n], mode).is_err() {
            buf[..n].fill(0);
        }
        let mut off = 0;
        for &(a, l) in &batch {
            for (k, page) in buf[off..off + l].chunks(image::PAGE as usize).enumerate() {
                hashes.insert(a + k as u64 * image::PAGE, xxhash_rust::xxh3::xxh3_64(page));
            }
            off += l;
        }
        wire::send_data(w, &buf[..n])?;
    }
    wire::send(w, &Msg::PagesDone)?;
    Ok(hashes)
}

/// Receive the page stream for `img` and write it into the tracee.
pub fn recv_pages<R: Read>(r: &mut R, t: &Tracee, img: &Image) -> Result<u64, WireError> {
    recv_pages_keeping(r, t, img, &[])
}

/// [`recv_pages`] into a placeholder that kept `kept` regions: their pages
/// are written only where they differ (see `image::write_pages_keeping`).
pub fn recv_pages_keeping<R: Read>(r: &mut R, t: &Tracee, img: &Image, kept: &[(u64, u64)]) -> Result<u64, WireError> {
    let mut total = 0u64;
    for batch in image::batch_runs(img.runs(), CHUNK) {
        let n: usize = batch.iter().map(|r| r.1).sum();
        match wire::recv(r)? {
            Frame::Data(d) if d.len() == n => {
                image::write_pages_keeping(t.pid, &batch, &d, kept)?;
                total += n as u64;
            }
            Frame::Data(d) => {
                return Err(WireError::Malformed(format!("page batch of {} bytes, expected {n}", d.len())))
            }
            Frame::Msg(Msg::RestoreFailed { reason }) => return Err(WireError::Aborted(reason)),
            Frame::Msg(m) => return Err(WireError::Unexpected(format!("{m:?} inside the page stream"))),
        }
    }
    match wire::recv_msg(r)? {
        Msg::PagesDone => Ok(total),
        Msg::RestoreFailed { reason } => Err(WireError::Aborted(reason)),
        m => Err(WireError::Unexpected(format!("{m:?} instead of the end of the page stream"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_different_kernel_or_fpu_state_is_refused() {
        let (h, l) = image::local_vdso();
        let x = crate::sys::xsave_size();
        assert!(matches!(answer_offer(&[], h, l, x), Msg::OfferOk { .. }));
        match answer_offer(&[], h ^ 1, l, x) {
            Msg::Refused { reason } => assert!(reason.contains("different kernel")),
            m => panic!("{m:?}"),
        }
        match answer_offer(&[], h, l, x + 64) {
            Msg::Refused { reason } => assert!(reason.contains("FPU state")),
            m => panic!("{m:?}"),
        }
    }

    #[test]
    fn files_are_reopened_only_when_identical() {
        let exe = std::env::current_exe().unwrap().to_string_lossy().into_owned();
        let id = image::file_id(&exe).unwrap();
        let mut other = id.clone();
        other.mtime_ns += 1;
        let (h, l) = image::local_vdso();
        match answer_offer(&[(exe.clone(), id), (exe, other)], h, l, crate::sys::xsave_size()) {
            Msg::OfferOk { reopen } => assert_eq!(reopen, vec![true, false]),
            m => panic!("{m:?}"),
        }
    }
}
