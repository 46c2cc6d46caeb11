//! Frames on node links and the control socket.
//!
//! A frame is a 16-byte header (magic, kind, length, checksum of a message
//! payload) and a payload. A message payload is an rkyv archive of [`Msg`], validated
//! with bytecheck before any field is read. Data payloads are raw page or
//! buffer bytes. A reader never allocates more than [`MAX_FRAME`] for one frame.

use crate::image::{FileId, Image};
use rkyv::{Archive, Deserialize, Serialize};
use std::io::{self, Read, Write};

pub const MAGIC: u32 = 0x314d_4f21; // "!OM1"
pub const MAX_FRAME: usize = 64 << 20;
const KIND_MSG: u8 = 1;
const KIND_DATA: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection closed")]
    Closed,
    #[error("i/o error on link: {0}")]
    Io(#[from] io::Error),
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooBig(usize),
    #[error("unexpected message: {0}")]
    Unexpected(String),
    /// The sender gave up in the middle of a transfer (RestoreFailed in its place).
    #[error("the sender gave up: {0}")]
    Aborted(String),
}

/// Something that happened to a process under om, as `omctl events` tells
/// it: `kind` is "moved" (from node `from` to `to`), "home" (back from
/// `from`), "refused" (a move to `to`, with the `reason`) or "exited" (with
/// its exit `code`, or the `signal` that killed it).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ProcEvent {
    pub pid: i32,
    pub kind: String,
    pub from: u32,
    pub to: u32,
    pub reason: String,
    pub code: i32,
    pub signal: i32,
}

/// One process as `omctl ps` shows it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ProcInfo {
    pub pid: i32,
    pub home: u32,
    pub where_: u32,
    pub state: String,
    pub cmd: String,
    pub cant_move: String,
    /// Why the balancer leaves it where it is (or "moving").
    pub why: String,
    /// Share of a core it wants, and its resident memory.
    pub demand: f64,
    pub rss: u64,
    pub locked: bool,
    /// The other processes it shares memory with and moves with (its gang).
    pub gang: Vec<i32>,
}

/// One node as `omctl nodes` shows it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct NodeInfo {
    pub id: u32,
    pub addr: String,
    pub state: String,
    /// Runnable demand per core.
    pub load: f64,
    pub cpus: u32,
    pub speed: f64,
    pub mem_total: u64,
    pub mem_free: u64,
    pub guests: u32,
    pub max_guests: u32,
    pub accepts: bool,
    /// Milliseconds since this node last heard the figures.
    pub age_ms: u64,
}

/// A forwarded system call: argument values, and the input buffers of the
/// pointer arguments concatenated in argument order, with their lengths.
#[derive(Archive, Serialize, Deserialize, Clone, PartialEq)]
pub struct SysReq {
    pub id: u64,
    /// The calling thread's home tid: calls of one thread run in order,
    /// those of different threads side by side.
    pub lane: i32,
    pub nr: u32,
    pub args: [u64; 6],
    pub lens: [u32; 6],
    pub data: Vec<u8>,
}

/// The answer: the raw result (`-errno` on failure) and output buffers.
#[derive(Archive, Serialize, Deserialize, Clone, PartialEq)]
pub struct SysRet {
    pub id: u64,
    pub ret: i64,
    pub data: Vec<u8>,
    /// The output follows as a data frame (`data` is then empty).
    pub more: bool,
}

// Logs and errors name a call and its sizes, never its data.
impl std::fmt::Debug for SysReq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SysReq {{ id: {}, nr: {}, lens: {:?}, data: {} bytes }}",
            self.id,
            self.nr,
            self.lens,
            self.data.len()
        )
    }
}

impl std::fmt::Debug for SysRet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SysRet {{ id: {}, ret: {}, data: {} bytes }}", self.id, self.ret, self.data.len())
    }
}

/// Every message of om.
#[derive(Archive, Serialize, Deserialize, Debug, Clone)]
pub enum Msg {
    // ---- control socket (om-exec, omctl -> omd)
    Register {
        pid: i32,
        cmd: String,
        /// Never migrate it (om-exec --lock).
        lock: bool,
        /// Move it to this node as soon as it has started (om-exec --node).
        node: Option<u32>,
    },
    /// Pin a process where it is, or let it move again.
    Lock {
        pid: i32,
        on: bool,
    },
    /// Stop (or restart) taking guests on this node.
    Block {
        on: bool,
    },
    /// Send every guest on this node home (and take no more).
    Expel,
    /// Set this node's relative speed.
    Speed {
        speed: f64,
    },
    Ps,
    PsReply(Vec<ProcInfo>),
    /// Subscribe: after `Ok`, every [`ProcEvent`] of this node's processes.
    Events,
    Event(ProcEvent),
    Migrate {
        pid: i32,
        to: Option<u32>,
    },
    Nodes,
    NodesReply(Vec<NodeInfo>),
    Ok,
    Error {
        message: String,
    },

    // ---- node link: migration
    Hello {
        node: u32,
    },
    /// `token` names the second connection (`Attach`) that carries signals
    /// and requests from home to the guest's supervisor.
    Offer {
        pid: i32,
        home: u32,
        token: u64,
        files: Vec<(String, FileId)>,
        vdso_hash: u64,
        vdso_len: u64,
        xsave: u32,
        /// The load the sender believed this node had (the balancer's
        /// view); the node refuses when it is clearly busier. Negative: no check.
        assumed: f64,
        /// The gang it moves with ([`crate::gang`]): a token naming the
        /// gang's move and how many processes take part (0 and 1: alone).
        gang: (u64, u32),
    },
    Attach {
        token: u64,
    },
    OfferOk {
        reopen: Vec<bool>,
    },
    Refused {
        reason: String,
    },
    /// Layout and pages of the still-running process (pre-copy); an `Image`
    /// with only what changed follows at the freeze.
    PreImage(Box<Image>),
    Image(Box<Image>),
    PagesDone,
    /// Another pre-copy round: the pages written since they were sent,
    /// as (address, bytes) runs, followed by their data and `PagesDone`.
    PreDelta {
        runs: Vec<(u64, u64)>,
    },
    /// The pre-copy rounds are over (the final `Image` follows).
    PreDone,
    /// Home laid out a pre-copy sent on the control link: the process may
    /// freeze and send the rest (`GoingHome`, then its `Image`, on the call
    /// link).
    PreOk,
    Resumed {
        guest: i32,
    },
    RestoreFailed {
        reason: String,
    },

    // ---- node link: a migrated process (remote <-> deputy)
    Sys(SysReq),
    SysRet(SysRet),
    /// Which file does home fd `fd` refer to (for a private file mapping)?
    FdIdent {
        id: u64,
        fd: i32,
    },
    FdIdentRet {
        id: u64,
        file: Option<(String, FileId)>,
    },
    Signal {
        sig: i32,
        /// The signal's siginfo as home's kernel made it (128 bytes), or
        /// empty when unknown.
        info: Vec<u8>,
        /// The home tid of the thread it was sent to (tkill, tgkill), or 0
        /// for the whole process.
        tid: i32,
    },
    ComeHome,
    /// What the guest uses, from its host once a second: CPU run plus
    /// run-queue wait and run alone (ns since it started there), and
    /// resident bytes.
    Usage {
        cpu_ns: u64,
        run_ns: u64,
        rss: u64,
    },
    /// The guest stopped (job control) with this signal: stop the placeholder too.
    Stopped {
        sig: i32,
    },
    GoingHome {
        reason: String,
    },
    HomeOk,
    Exited {
        code: i32,
        signal: i32,
    },
    Kill,
    /// A signal is pending away for the thread of home tid `lane` (0: any
    /// thread): the deputy wakes that lane's worker out of a call it waits
    /// in, so the thread sees the signal as it would at home.
    Wake {
        lane: i32,
    },

    // ---- page link: post-copy (the destination runs the process while
    // its memory still arrives; see `lazy`)
    /// Destination -> source: the process waits for the page at `addr`.
    PageWant {
        addr: u64,
    },
    /// Source -> destination: `len` bytes of memory at `addr` (a data frame
    /// follows).
    LazyPages {
        addr: u64,
        len: u64,
    },
    /// Source -> destination: every page owed was sent.
    LazyDone,
    /// Destination -> source: every page owed arrived (the source may let
    /// its copy go).
    LazyOk,
}

/// Write one message frame.
pub fn send<W: Write>(w: &mut W, msg: &Msg) -> Result<(), WireError> {
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(msg).map_err(|e| WireError::Malformed(e.to_string()))?;
    write_frame(w, KIND_MSG, &bytes)
}

/// Write one raw data frame.
pub fn send_data<W: Write>(w: &mut W, data: &[u8]) -> Result<(), WireError> {
    write_frame(w, KIND_DATA, data)
}

pub fn checksum(data: &[u8]) -> u32 {
    // Cheap integrity check against torn or corrupt frames (links are also
    // authenticated; this is not a MAC).
    (xxhash_rust::xxh3::xxh3_64(data) & 0xffff_ffff) as u32
}

/// Messages carry a checksum of their bytes (they are decoded). Data frames
/// (pages, bulk call buffers) carry none: they are only copied, TCP checks
/// them, and the authenticated link records cover every byte; hashing
/// each megabyte twice cost about 15% of a forwarded write's time.
fn frame_checksum(kind: u8, data: &[u8]) -> u32 {
    if kind == KIND_MSG {
        checksum(data)
    } else {
        0
    }
}

fn write_frame<W: Write>(w: &mut W, kind: u8, data: &[u8]) -> Result<(), WireError> {
    if data.len() > MAX_FRAME {
        return Err(WireError::TooBig(data.len()));
    }
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    h[4] = kind;
    h[8..12].copy_from_slice(&(data.len() as u32).to_le_bytes());
    h[12..16].copy_from_slice(&frame_checksum(kind, data).to_le_bytes());
    let bufs = [io::IoSlice::new(&h), io::IoSlice::new(data)];
    write_all_vectored(w, &bufs, 16 + data.len())?;
    Ok(())
}

fn write_all_vectored<W: Write>(w: &mut W, bufs: &[io::IoSlice<'_>], total: usize) -> io::Result<()> {
    let n = w.write_vectored(bufs)?;
    if n == total {
        return Ok(());
    }
    // Slow path: finish piece by piece.
    let mut skip = n;
    for b in bufs {
        if skip >= b.len() {
            skip -= b.len();
            continue;
        }
        w.write_all(&b[skip..])?;
        skip = 0;
    }
    Ok(())
}

/// A frame as read: a validated message, or raw data.
pub enum Frame {
    Msg(Msg),
    Data(Vec<u8>),
}

/// Read one frame; the message payload is validated before it is used.
pub fn recv<R: Read>(r: &mut R) -> Result<Frame, WireError> {
    let mut buf = Vec::new();
    Ok(match recv_into(r, &mut buf)? {
        Some(m) => Frame::Msg(m),
        None => Frame::Data(buf),
    })
}

fn eof(e: io::Error) -> WireError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        WireError::Closed
    } else {
        WireError::Io(e)
    }
}

/// Read one frame; a data frame is read into `buf` (reused, no allocation
/// once it is large enough) and gives `None`, a message gives `Some`.
pub fn recv_into<R: Read>(r: &mut R, buf: &mut Vec<u8>) -> Result<Option<Msg>, WireError> {
    buf.clear();
    recv_append(r, buf)
}

/// Like [`recv_into`], but a data frame is appended to `buf` (for a buffer
/// that arrives in pieces).
pub fn recv_append<R: Read>(r: &mut R, buf: &mut Vec<u8>) -> Result<Option<Msg>, WireError> {
    let mut h = [0u8; 16];
    r.read_exact(&mut h).map_err(eof)?;
    let magic = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    if magic != MAGIC {
        return Err(WireError::Malformed(format!("bad magic {magic:#010x}")));
    }
    let len = u32::from_le_bytes([h[8], h[9], h[10], h[11]]) as usize;
    if len > MAX_FRAME {
        return Err(WireError::TooBig(len));
    }
    let sum = u32::from_le_bytes([h[12], h[13], h[14], h[15]]);
    match h[4] {
        KIND_DATA => {
            if sum != 0 {
                return Err(WireError::Malformed("data frame with a checksum field set".into()));
            }
            let at = buf.len();
            buf.resize(at + len, 0);
            r.read_exact(&mut buf[at..]).map_err(eof)?;
            Ok(None)
        }
        KIND_MSG => {
            let mut m = rkyv::util::AlignedVec::<16>::with_capacity(len);
            m.resize(len, 0);
            r.read_exact(&mut m).map_err(eof)?;
            if checksum(&m) != sum {
                return Err(WireError::Malformed("checksum mismatch".into()));
            }
            let m = rkyv::from_bytes::<Msg, rkyv::rancor::Error>(&m)
                .map_err(|e| WireError::Malformed(format!("invalid message: {e}")))?;
            check(&m)?;
            Ok(Some(m))
        }
        k => Err(WireError::Malformed(format!("unknown frame kind {k}"))),
    }
}

/// The most threads an image may have.
pub const MAX_THREADS: usize = 4096;

/// What bytecheck cannot say about a message: an image has a leader and
/// at most [`MAX_THREADS`] threads.
fn check(m: &Msg) -> Result<(), WireError> {
    if let Msg::Image(img) = m {
        if !(1..=MAX_THREADS).contains(&img.threads.len()) {
            return Err(WireError::Malformed(format!("an image with {} threads", img.threads.len())));
        }
        for tc in &img.thread_creds {
            if !img.threads.iter().any(|t| t.tid == tc.tid) || tc.creds.groups.len() > 65536 {
                return Err(WireError::Malformed(format!("credentials for thread {} of none", tc.tid)));
            }
        }
        if img.creds.groups.len() > 65536 {
            return Err(WireError::Malformed(format!("{} supplementary groups", img.creds.groups.len())));
        }
        crate::timers::check(&img.timers, img.threads.len())
            .map_err(|why| WireError::Malformed(format!("an image's timers: {why}")))?;
    }
    Ok(())
}

/// Read one frame that must be a message.
pub fn recv_msg<R: Read>(r: &mut R) -> Result<Msg, WireError> {
    match recv(r)? {
        Frame::Msg(m) => Ok(m),
        Frame::Data(d) => Err(WireError::Unexpected(format!("{} data bytes where a message was expected", d.len()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let mut buf = Vec::new();
        send(&mut buf, &Msg::Migrate { pid: 42, to: Some(3) }).unwrap();
        send_data(&mut buf, b"hello").unwrap();
        let mut r = &buf[..];
        match recv(&mut r).unwrap() {
            Frame::Msg(Msg::Migrate { pid, to }) => assert_eq!((pid, to), (42, Some(3))),
            _ => panic!("wrong frame"),
        }
        match recv(&mut r).unwrap() {
            Frame::Data(d) => assert_eq!(d, b"hello"),
            _ => panic!("wrong frame"),
        }
        assert!(matches!(recv(&mut r), Err(WireError::Closed)));
    }

    #[test]
    fn rejects_garbage_oversize_and_corruption() {
        let mut r: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert!(matches!(recv(&mut r), Err(WireError::Malformed(_))));

        let mut h = Vec::new();
        h.extend_from_slice(&MAGIC.to_le_bytes());
        h.extend_from_slice(&[1, 0, 0, 0]);
        h.extend_from_slice(&u32::MAX.to_le_bytes());
        h.extend_from_slice(&[0; 4]);
        assert!(matches!(recv(&mut &h[..]), Err(WireError::TooBig(_))));

        let mut buf = Vec::new();
        send(&mut buf, &Msg::Ps).unwrap();
        let last = buf.len() - 1;
        buf[last] ^= 0xff;
        assert!(matches!(recv(&mut &buf[..]), Err(WireError::Malformed(_))));
    }

    #[test]
    fn rejects_valid_checksum_invalid_archive() {
        // A frame whose checksum matches but whose bytes are not a Msg archive.
        let junk = vec![0xffu8; 64];
        let mut buf = Vec::new();
        write_frame(&mut buf, KIND_MSG, &junk).unwrap();
        assert!(matches!(recv(&mut &buf[..]), Err(WireError::Malformed(_))));
    }
}
