//! Moving an image over a link: the offer (which files the receiver can
//! reopen), the image header, and the page stream in fixed-size batches.

use crate::dirty::Dirty;
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
/// With OM_VERIFY_TRACKING in omd's environment: what each shared memory
/// region of `pid` holds now, logged where a move captures it and where it
/// is rebuilt, so a lost write shows which hop lost it.
pub fn log_shared(pid: i32, img: &Image, what: &str) {
    if std::env::var_os("OM_VERIFY_TRACKING").is_none() {
        return;
    }
    for r in &img.regions {
        let image::RegionKind::Shared { id, owner, .. } = &r.kind else { continue };
        let len = ((r.end - r.start) as usize).min(64 << 20);
        let mut buf = vec![0u8; len];
        let digest = image::read_pages(pid, &[(r.start, len)], &mut buf, ReadMode::Pinned)
            .map(|_| format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&buf)));
        tracing::info!(
            what,
            pid,
            start = format!("{:#x}", r.start),
            id,
            owner,
            runs = r.runs.len(),
            ?digest,
            "shared memory (OM_VERIFY_TRACKING)"
        );
    }
}

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

/// Pre-copy rounds after the first: at most this many.
const MAX_ROUNDS: u32 = 8;
/// Written bytes left for the freeze once a round finds no more than this.
const SMALL_ENOUGH: u64 = 1 << 20;

/// What a pre-copy sent, for the freeze to send only what changed since.
pub struct PreCopy {
    /// The layout and pages of the first round.
    pub image: Image,
    /// Hash of every page sent of the regions whose writes are not tracked.
    hashes: image::PageHashes,
    tracked: Option<Tracked>,
    /// The bytes of each round (the first first), and how long each took.
    pub round_bytes: Vec<u64>,
    pub round_ms: Vec<f64>,
}

/// Write tracking during a pre-copy.
struct Tracked {
    dirty: Dirty,
    /// The tracked regions (address, bytes).
    ranges: Vec<(u64, u64)>,
    /// Every tracked page sent, as sorted [start, end) address intervals.
    sent: Vec<(u64, u64)>,
    /// Runs written since they were sent, not sent again yet.
    owed: Vec<(u64, u64)>,
}

/// Regions whose writes are tracked: private writable memory, whose pages
/// the image carries one by one (shared memory travels by its object's
/// contents). A region that is not writable now can only be written after
/// an mprotect, which makes it another region at the freeze (sent whole);
/// and leaving it out keeps large reservations (PROT_NONE address space of
/// allocators and runtimes) free of write-protect markers, which would
/// cost page tables for all of it. The heap is left out too: it travels
/// whole at the freeze, and a tracked mapping does not merge with what is
/// mapped next to it, so brk would grow it as a mapping of its own.
fn tracked_region(r: &image::Region) -> bool {
    r.prot & libc::PROT_WRITE as u32 != 0
        && matches!(r.kind, image::RegionKind::Anon | image::RegionKind::Stack | image::RegionKind::File { .. })
}

impl PreCopy {
    /// Whether the writes were tracked (else the freeze compares hashes).
    pub fn tracked(&self) -> bool {
        self.tracked.is_some()
    }

    /// The write tracker, for a later pre-copy of the same process.
    pub fn into_dirty(self) -> Option<Dirty> {
        self.tracked.map(|t| t.dirty)
    }
}

/// Read the pages of `runs` of `pid` and send them in `CHUNK` batches,
/// then `PagesDone`; `each` sees every page sent (address, bytes). A page
/// that cannot be read (unmapped meanwhile) is sent as zeroes and listed in
/// the result (as [start, end) spans), with the bytes sent: it was not sent.
fn send_runs<W: Write>(
    w: &mut W,
    pid: i32,
    runs: impl Iterator<Item = (u64, usize)>,
    mode: ReadMode,
    each: &mut dyn FnMut(u64, &[u8]),
) -> Result<(u64, Vec<(u64, u64)>), WireError> {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    let mut unread = Vec::new();
    let page = image::PAGE as usize;
    for batch in image::batch_runs(runs, CHUNK) {
        let n: usize = batch.iter().map(|r| r.1).sum();
        if image::read_pages(pid, &batch, &mut buf[..n], mode).is_err() {
            // Page by page: only what cannot be read is left out.
            let mut off = 0;
            for &(a, l) in &batch {
                for k in 0..l.div_ceil(page) {
                    let len = page.min(l - k * page);
                    let at = a + (k * page) as u64;
                    let piece = &mut buf[off + k * page..off + k * page + len];
                    if image::read_pages(pid, &[(at, len)], piece, mode).is_err() {
                        piece.fill(0);
                        unread.push((at, at + len as u64));
                    }
                }
                off += l;
            }
        }
        let mut off = 0;
        for &(a, l) in &batch {
            for (k, page) in buf[off..off + l].chunks(image::PAGE as usize).enumerate() {
                each(a + k as u64 * image::PAGE, page);
            }
            off += l;
        }
        wire::send_data(w, &buf[..n])?;
        total += n as u64;
    }
    wire::send(w, &Msg::PagesDone)?;
    Ok((total, unread))
}

/// Pre-copy the running process `pid`: its layout and pages, then (with
/// write tracking) rounds of the pages written since, while they shrink,
/// then `PreDone`. The freeze then sends only what changed since
/// ([`prune`]).
pub fn send_precopy<W: Write>(
    w: &mut W,
    pid: i32,
    img: Image,
    mode: ReadMode,
    dirty: Option<Dirty>,
) -> Result<PreCopy, WireError> {
    let mut tracked = dirty.and_then(|mut d| {
        let ranges: Vec<(u64, u64)> =
            img.regions.iter().filter(|r| tracked_region(r)).map(|r| (r.start, r.end - r.start)).collect();
        d.arm(&ranges);
        // From here on, writes count.
        d.take(&ranges).ok()?;
        Some(Tracked { dirty: d, ranges, sent: Vec::new(), owed: Vec::new() })
    });
    let started = std::time::Instant::now();
    wire::send(w, &Msg::PreImage(Box::new(img.clone())))?;
    let mut hashes = image::PageHashes::new();
    let first = {
        // Pages of untracked regions are hashed as they are sent.
        let untracked: Vec<(u64, u64)> =
            img.regions.iter().filter(|r| tracked.is_none() || !tracked_region(r)).map(|r| (r.start, r.end)).collect();
        let verify = std::env::var_os("OM_VERIFY_TRACKING").is_some();
        let mut each = |a: u64, page: &[u8]| {
            if verify || untracked.iter().any(|&(s, e)| a >= s && a < e) {
                hashes.insert(a, xxhash_rust::xxh3::xxh3_64(page));
            }
        };
        send_runs(w, pid, img.runs(), mode, &mut each)?
    };
    let (first, unread) = first;
    if let Some(t) = &mut tracked {
        let runs: Vec<(u64, u64)> = img
            .regions
            .iter()
            .filter(|r| tracked_region(r))
            .flat_map(|r| {
                r.runs.iter().map(move |&(f, n)| (r.start + f * image::PAGE, r.start + (f + n) * image::PAGE))
            })
            .collect();
        // A page that could not be read was not sent (it reads as sent
        // but absent at the freeze, and travels then).
        t.sent = spans::minus(&spans::union(&runs, &[]), &spans::union(&unread, &[]));
    }
    let mut round_bytes = vec![first];
    let mut round_ms = vec![started.elapsed().as_secs_f64() * 1e3];
    if let Some(t) = &mut tracked {
        let mut prev = first;
        for _ in 0..MAX_ROUNDS {
            let started = std::time::Instant::now();
            let written = match t.dirty.take(&t.ranges) {
                Ok(d) => d,
                // Tracking failed: everything tracked is owed to the freeze.
                Err(_) => t.ranges.clone(),
            };
            let bytes: u64 = written.iter().map(|r| r.1).sum();
            // Small enough for the freeze, or no longer shrinking: left
            // for the freeze.
            if bytes <= SMALL_ENOUGH || bytes.saturating_mul(4) > prev.saturating_mul(3) {
                t.owed = written;
                break;
            }
            wire::send(w, &Msg::PreDelta { runs: written.clone() })?;
            let verify = std::env::var_os("OM_VERIFY_TRACKING").is_some();
            let (_, unread) =
                send_runs(w, pid, written.iter().map(|&(a, l)| (a, l as usize)), mode, &mut |a, page| {
                    if verify {
                        hashes.insert(a, xxhash_rust::xxh3::xxh3_64(page));
                    }
                })?;
            let spans: Vec<(u64, u64)> = written.iter().map(|&(a, l)| (a, a + l)).collect();
            t.sent = spans::minus(&spans::union(&t.sent, &spans), &spans::union(&unread, &[]));
            round_bytes.push(bytes);
            round_ms.push(started.elapsed().as_secs_f64() * 1e3);
            prev = bytes;
        }
    }
    wire::send(w, &Msg::PreDone)?;
    Ok(PreCopy { image: img, hashes, tracked, round_bytes, round_ms })
}

/// After a pre-copy, keep in `img` (captured at the freeze) only the pages
/// the destination does not already hold. In regions unchanged since the
/// pre-copy: with write tracking, a page travels again if it was written
/// since it was sent, vanished since (it reads as zeroes, or as its file
/// page), or was never sent; without, if its content hash differs. Changed
/// regions travel whole, as captured. Returns the pages left out.
pub fn prune(pid: i32, img: &mut Image, pre: &mut PreCopy, mode: ReadMode) -> std::io::Result<u64> {
    let written: Option<Vec<(u64, u64)>> = match &mut pre.tracked {
        Some(t) => {
            let mut runs = t.dirty.take(&t.ranges).unwrap_or_else(|_| t.ranges.clone());
            runs.append(&mut t.owed);
            let spans: Vec<(u64, u64)> = runs.iter().map(|&(a, l)| (a, a + l)).collect();
            Some(spans::union(&spans, &[]))
        }
        None => None,
    };
    let mut skipped = 0u64;
    let mut untracked = Vec::new();
    for (i, r) in img.regions.iter_mut().enumerate() {
        let Some(q) = pre.image.regions.iter().find(|q| image::same_region(r, q)) else { continue };
        let (Some(t), Some(written)) = (&pre.tracked, &written) else {
            untracked.push(i);
            continue;
        };
        if !tracked_region(q) {
            untracked.push(i);
            continue;
        }
        // Kept: written since sent, or present now but never sent, or sent
        // but gone since (it reads as zeroes, or as its file page).
        let (lo, hi) = (r.start, r.end);
        let present: Vec<(u64, u64)> =
            r.runs.iter().map(|&(f, n)| (lo + f * image::PAGE, lo + (f + n) * image::PAGE)).collect();
        let sent = spans::clip(&t.sent, lo, hi);
        let changed = spans::union(&spans::minus(&present, &sent), &spans::minus(&sent, &present));
        let keep = spans::union(&spans::clip(written, lo, hi), &changed);
        let had: u64 = spans::union(&present, &sent).iter().map(|s| s.1 - s.0).sum();
        let kept: u64 = keep.iter().map(|s| s.1 - s.0).sum();
        skipped += had.saturating_sub(kept) / image::PAGE;
        if std::env::var_os("OM_VERIFY_TRACKING").is_some() {
            let skipped_spans = spans::minus(&spans::union(&present, &sent), &keep);
            let mut buf = vec![0u8; image::PAGE as usize];
            for &(a, e) in &skipped_spans {
                for p in (a..e).step_by(image::PAGE as usize) {
                    if image::read_pages(pid, &[(p, image::PAGE as usize)], &mut buf, mode).is_ok()
                        && pre.hashes.get(&p) != Some(&xxhash_rust::xxh3::xxh3_64(&buf))
                    {
                        tracing::error!(
                            page = format!("{p:#x}"),
                            region = format!("{lo:#x}-{hi:#x}"),
                            kind = ?r.kind,
                            "tracking missed a write (OM_VERIFY_TRACKING)"
                        );
                    }
                }
            }
        }
        r.runs = keep.iter().map(|&(a, e)| ((a - lo) / image::PAGE, (e - a) / image::PAGE)).collect();
    }
    if !untracked.is_empty() {
        skipped += image::prune_by_hash(pid, img, &untracked, &pre.image, &pre.hashes, mode)?;
    }
    Ok(skipped)
}

/// Sets of addresses as sorted, disjoint [start, end) intervals.
mod spans {
    /// Sorted and merged.
    fn norm(mut v: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
        v.retain(|s| s.1 > s.0);
        v.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
        for (a, e) in v {
            match out.last_mut() {
                Some(l) if a <= l.1 => l.1 = l.1.max(e),
                _ => out.push((a, e)),
            }
        }
        out
    }

    pub fn union(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
        norm(a.iter().chain(b).copied().collect())
    }

    /// `a` less `b` (both sorted and disjoint).
    pub fn minus(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut j = 0;
        for &(mut s, e) in a {
            while j < b.len() && b[j].1 <= s {
                j += 1;
            }
            let mut k = j;
            while k < b.len() && b[k].0 < e {
                if b[k].0 > s {
                    out.push((s, b[k].0));
                }
                s = s.max(b[k].1);
                k += 1;
            }
            if s < e {
                out.push((s, e));
            }
        }
        out
    }

    /// The part of `a` (sorted and disjoint) inside [lo, hi).
    pub fn clip(a: &[(u64, u64)], lo: u64, hi: u64) -> Vec<(u64, u64)> {
        let from = a.partition_point(|s| s.1 <= lo);
        a[from..].iter().take_while(|s| s.0 < hi).map(|&(s, e)| (s.max(lo), e.min(hi))).collect()
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn interval_sets_add_take_and_clip_like_page_sets() {
            let a = union(&[(10, 20), (30, 40)], &[(15, 32), (50, 60)]);
            assert_eq!(a, vec![(10, 40), (50, 60)]);
            assert_eq!(minus(&a, &[(0, 12), (20, 25), (39, 55)]), vec![(12, 20), (25, 39), (55, 60)]);
            assert_eq!(minus(&[(0, 10)], &[]), vec![(0, 10)]);
            assert_eq!(minus(&[(0, 10)], &[(0, 10)]), vec![]);
            assert_eq!(clip(&a, 35, 55), vec![(35, 40), (50, 55)]);
            assert_eq!(clip(&a, 60, 70), vec![]);
        }
    }
}

/// Receive the further rounds of a pre-copy, after its first pages, up to
/// `PreDone`, and write them into the tracee (leaving `kept` pages that
/// already hold the same bytes). Every run must lie inside a region of
/// `pre` whose pages travel one by one.
pub fn recv_rounds<R: Read>(r: &mut R, t: &Tracee, pre: &Image, kept: &[(u64, u64)]) -> Result<u64, WireError> {
    let mut total = 0u64;
    loop {
        match wire::recv_msg(r)? {
            Msg::PreDone => return Ok(total),
            Msg::PreDelta { runs } => {
                check_delta(&runs, pre)?;
                let runs: Vec<(u64, usize)> = runs.iter().map(|&(a, l)| (a, l as usize)).collect();
                total += recv_runs(r, t, &runs, kept)?;
            }
            Msg::RestoreFailed { reason } => return Err(WireError::Aborted(reason)),
            m => return Err(WireError::Unexpected(format!("{m:?} in the pre-copy rounds"))),
        }
    }
}

/// A round's runs come from the sender: each must be page-aligned and lie
/// inside the regions of the first round's layout whose writes are tracked
/// (a run may span regions that touch), and all of them together be no
/// bigger than those regions.
fn check_delta(runs: &[(u64, u64)], pre: &Image) -> Result<(), WireError> {
    let regions: Vec<(u64, u64)> = pre.regions.iter().filter(|q| tracked_region(q)).map(|q| (q.start, q.end)).collect();
    let tracked = spans::union(&regions, &[]);
    let room: u64 = tracked.iter().map(|s| s.1 - s.0).sum();
    let mut total = 0u64;
    for &(a, l) in runs {
        let inside = a.checked_add(l).is_some_and(|e| tracked.iter().any(|&(s, t)| a >= s && e <= t));
        if l == 0 || a % image::PAGE != 0 || l % image::PAGE != 0 || !inside {
            return Err(WireError::Malformed(format!("pre-copy round run {a:#x}+{l:#x} outside the layout")));
        }
        total = total.saturating_add(l);
    }
    if total > room {
        return Err(WireError::Malformed(format!("pre-copy round of {total} bytes, more than the layout's {room}")));
    }
    Ok(())
}

/// Receive the page batches of `runs` (as [`send_runs`] sends them) and
/// write them into the tracee, then `PagesDone`.
fn recv_runs<R: Read>(r: &mut R, t: &Tracee, runs: &[(u64, usize)], kept: &[(u64, u64)]) -> Result<u64, WireError> {
    let mut total = 0u64;
    for batch in image::batch_runs(runs.iter().copied(), CHUNK) {
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

/// Receive the page stream for `img` and write it into the tracee.
pub fn recv_pages<R: Read>(r: &mut R, t: &Tracee, img: &Image) -> Result<u64, WireError> {
    recv_pages_keeping(r, t, img, &[])
}

/// [`recv_pages`] into a placeholder that kept `kept` regions: their pages
/// are written only where they differ (see `image::write_pages_keeping`).
pub fn recv_pages_keeping<R: Read>(r: &mut R, t: &Tracee, img: &Image, kept: &[(u64, u64)]) -> Result<u64, WireError> {
    let runs: Vec<(u64, usize)> = img.runs().collect();
    recv_runs(r, t, &runs, kept)
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
