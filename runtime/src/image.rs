//! The process image: what om captures from a frozen process at home and
//! rebuilds in another process (a fresh guest, or the parked placeholder).
//!
//! The image header travels as one validated rkyv frame; page contents follow
//! as raw data frames, in the order of [`Image::runs`].

use crate::procfs::{self, MapLine};
use crate::ptrace::{Result, TraceError, Tracee};
use crate::sys::{self, Regs};
use rkyv::{Archive, Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;

pub const PAGE: u64 = 4096;
/// Scratch area mapped in a target for injected calls: code at 0, data after.
pub const SCRATCH_LEN: u64 = 4 * PAGE;
/// `syscall; int3`, then a parking loop at offset 16: `mov eax, 34 (pause); syscall; jmp -9`.
const SCRATCH_CODE: [u8; 25] =
    [0x0f, 0x05, 0xcc, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xb8, 0x22, 0, 0, 0, 0x0f, 0x05, 0xeb, 0xf7];
pub const PARK_OFFSET: u64 = 16;
const TASK_SIZE: u64 = 0x7fff_ffff_f000;

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FileId {
    pub size: u64,
    pub mtime_ns: i64,
    pub hash: u64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum RegionKind {
    Anon,
    Heap,
    Stack,
    /// Reopened from `path` at the destination (verified identical); only the
    /// pages that are no longer file pages travel.
    File {
        path: String,
        offset: u64,
    },
    /// A shared mapping of a file on a cluster-consistent path, which this
    /// process alone maps: mapped shared from the same file at the
    /// destination (opened for writing when `maywrite`). No pages travel:
    /// the file holds them, written back at the capture.
    SharedFile {
        path: String,
        offset: u64,
        maywrite: bool,
    },
    /// A shared memory object no other process uses (shared anonymous
    /// memory, or a memfd with no fd open on it), made again at the
    /// destination with the same size and name and mapped at the same
    /// offset; every region that maps the same object (same `id`) maps the
    /// one made again, so a later fork shares it as at home. Its pages
    /// with data travel (tmpfs SEEK_DATA), mapped in this process or not.
    Shared {
        /// The object's inode where it was captured.
        id: u64,
        size: u64,
        offset: u64,
        /// A memfd's name (None: shared anonymous memory).
        memfd: Option<String>,
        seals: u32,
        /// A SysV segment's id at home. Away it is shared anonymous memory
        /// (every SysV call runs at home); at home the placeholder keeps
        /// the segment attached, so its key and id keep answering, and the
        /// pages are written back into it on the way home.
        sysv: Option<i32>,
        /// This image carries the object's pages: false for the members of
        /// a gang that map an object another member fills ([`keep_owned`]).
        owner: bool,
        /// The fds the process holds on the object at home (kept there by
        /// the deputy while it is away; a call on one goes home, and the
        /// way home writes the pages back into that object).
        fds: Vec<i32>,
        /// The object's inode at home (0: unknown), to find it there again
        /// while a deputy holds an fd on it.
        home: u64,
    },
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone)]
pub struct Region {
    pub start: u64,
    pub end: u64,
    pub prot: u32,
    pub kind: RegionKind,
    /// Runs of pages (first page index within the region, count) whose contents travel.
    pub runs: Vec<(u64, u64)>,
    /// Runs of guard pages (MADV_GUARD_INSTALL), reinstalled after the pages are written.
    pub guards: Vec<(u64, u64)>,
    /// madvise and mlock attributes (`ATTR_*`), from /proc/PID/smaps VmFlags.
    pub attrs: u32,
}

/// Region attributes that travel: (VmFlags name, bit, madvise advice or
/// one of the mlock forms below).
const ATTRS: [(&str, u32, i64); 6] = [
    ("dc", 1, libc::MADV_DONTFORK as i64),
    ("wf", 2, libc::MADV_WIPEONFORK as i64),
    ("hg", 4, libc::MADV_HUGEPAGE as i64),
    ("nh", 8, libc::MADV_NOHUGEPAGE as i64),
    ("dd", 16, libc::MADV_DONTDUMP as i64),
    ("lo", 32, MLOCK),
];
const MLOCK: i64 = -1;
/// "lf": locked on fault (mlock2 MLOCK_ONFAULT), with "lo".
const ATTR_ONFAULT: u32 = 64;
/// "nr": mapped with MAP_NORESERVE.
const ATTR_NORESERVE: u32 = 128;
/// "lo", as in `ATTRS`.
const ATTR_LOCKED: u32 = 32;
/// "hg", as in `ATTRS`.
const ATTR_HUGEPAGE: u32 = 4;
/// "mw": may be made writable (a shared mapping of a file opened for
/// writing, even if mapped read-only). Only read, never set again.
const ATTR_MAYWRITE: u32 = 256;

/// The paths declared cluster-consistent on this node (om.toml
/// `consistent_paths`): the same files at the same paths on every node.
static CONSISTENT: Mutex<Vec<std::path::PathBuf>> = Mutex::new(Vec::new());

/// Set this node's cluster-consistent paths (omd does, from its config).
pub fn set_consistent_paths(paths: Vec<std::path::PathBuf>) {
    if let Ok(mut c) = CONSISTENT.lock() {
        *c = paths;
    }
}

/// Whether `path` lies under one of this node's cluster-consistent paths.
pub fn is_consistent(path: &str) -> bool {
    let p = std::path::Path::new(path);
    CONSISTENT.lock().is_ok_and(|c| c.iter().any(|root| p.starts_with(root)))
}

/// VmFlags of each region of `pid`, by start address, as `ATTRS` bits.
fn region_attrs(pid: i32) -> HashMap<u64, u32> {
    let mut out = HashMap::new();
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) else { return out };
    let mut start = None;
    for l in text.lines() {
        if let Some(v) = l.strip_prefix("VmFlags:") {
            let mut bits = 0;
            for f in v.split_whitespace() {
                bits |= ATTRS.iter().find(|a| a.0 == f).map_or(0, |a| a.1);
                if f == "lf" {
                    bits |= ATTR_ONFAULT;
                }
                if f == "nr" {
                    bits |= ATTR_NORESERVE;
                }
                if f == "mw" {
                    bits |= ATTR_MAYWRITE;
                }
            }
            if let Some(s) = start.take() {
                out.insert(s, bits);
            }
        } else if let Some((range, _)) = l.split_once(' ') {
            if let Some((a, _)) = range.split_once('-') {
                if !range.ends_with(':') {
                    if let Ok(a) = u64::from_str_radix(a, 16) {
                        start = Some(a);
                    }
                }
            }
        }
    }
    out
}

/// Set a region's attributes again (after its pages are written).
fn restore_attrs(t: &mut Tracee, r: &Region) -> Result<()> {
    let len = r.end - r.start;
    for &(name, bit, how) in &ATTRS {
        if r.attrs & bit == 0 {
            continue;
        }
        let res = if how == MLOCK {
            let onfault = if r.attrs & ATTR_ONFAULT != 0 { 1 } else { 0 };
            t.syscall(libc::SYS_mlock2, [r.start, len, onfault, 0, 0, 0])?
        } else {
            t.syscall(libc::SYS_madvise, [r.start, len, how as u64, 0, 0, 0])?
        };
        if res < 0 {
            tracing::warn!(
                pid = t.pid,
                start = r.start,
                name,
                errno = -res,
                "a memory attribute could not be set again"
            );
        }
    }
    Ok(())
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Default)]
pub struct MmFields {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct SigAction {
    pub sig: i32,
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct Creds {
    pub uids: [u32; 3],
    pub gids: [u32; 3],
    pub groups: Vec<u32>,
}

impl Creds {
    /// The ids a /proc status file (of a process or a thread) lists.
    pub fn from_status(status: &str) -> Creds {
        let sf = |k: &str| procfs::status_field_in(status, k).unwrap_or_default();
        let ids = |k: &str| -> [u32; 3] {
            let v: Vec<u32> = sf(k).split_whitespace().filter_map(|x| x.parse().ok()).collect();
            [v.first().copied().unwrap_or(0), v.get(1).copied().unwrap_or(0), v.get(2).copied().unwrap_or(0)]
        };
        Creds {
            uids: ids("Uid"),
            gids: ids("Gid"),
            groups: sf("Groups").split_whitespace().filter_map(|x| x.parse().ok()).collect(),
        }
    }
}

/// A thread that runs with other ids than the leader (credentials are per
/// thread): its home tid and its ids.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ThreadCreds {
    pub tid: i32,
    pub creds: Creds,
}

/// Per-process settings made with prctl and membarrier.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcFlags {
    // Kept in the process wherever it runs: set again at each rebuild.
    pub thp_disable: u64,
    pub child_subreaper: u64,
    pub timerslack: u64,
    /// As PR_MCE_KILL_GET answers: 0 late, 1 early, 2 the system default.
    pub mce_kill: u64,
    /// PR_GET_TSC (0 when it could not be read).
    pub tsc: u64,
    /// The MEMBARRIER_CMD_REGISTER_* commands in effect, or'ed.
    pub membarrier: u64,
    /// mlockall's MCL_FUTURE (with MCL_ONFAULT) in effect, or 0.
    pub lock_future: u64,
    // Part of the process's identity: answered by the supervisor while
    // away (the guest runs with no_new_privs and another uid), never set in
    // the guest; the placeholder at home keeps them.
    pub dumpable: u64,
    pub no_new_privs: u64,
    pub keepcaps: u64,
    pub securebits: u64,
    pub pdeathsig: u64,
}

impl ProcFlags {
    /// These settings, with the identity part taken from `home`.
    pub fn with_identity_of(mut self, home: &ProcFlags) -> ProcFlags {
        self.dumpable = home.dumpable;
        self.no_new_privs = home.no_new_privs;
        self.keepcaps = home.keepcaps;
        self.securebits = home.securebits;
        self.pdeathsig = home.pdeathsig;
        self
    }
}

/// membarrier commands: (private expedited command, its registration).
const MEMBARRIER_KINDS: [(u64, u64); 3] = [(1 << 3, 1 << 4), (1 << 5, 1 << 6), (1 << 7, 1 << 8)];

/// Read the process's prctl settings and membarrier registrations by calls
/// injected into it (`out` is scratch memory for calls that write an int).
/// In a guest (under om's seccomp filter) the identity part is left out: the
/// filter would send those calls to the supervisor that is capturing, and the
/// supervisor has home's values anyway.
fn capture_flags(t: &mut Tracee, out: u64, guest: bool) -> Result<ProcFlags> {
    let get = |t: &mut Tracee, op: i32| -> Result<u64> {
        let r = t.syscall(libc::SYS_prctl, [op as u64, 0, 0, 0, 0, 0])?;
        Ok(r.max(0) as u64)
    };
    let get_into = |t: &mut Tracee, op: i32| -> Result<u64> {
        t.poke(out, &[0; 4])?;
        if t.syscall(libc::SYS_prctl, [op as u64, out, 0, 0, 0, 0])? < 0 {
            return Ok(0);
        }
        let b = t.peek(out, 4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64)
    };
    let mut membarrier = 0;
    for (cmd, register) in MEMBARRIER_KINDS {
        // A private expedited barrier succeeds only once registered.
        if t.syscall(libc::SYS_membarrier, [cmd, 0, 0, 0, 0, 0])? == 0 {
            membarrier |= register;
        }
    }
    let kept = ProcFlags {
        thp_disable: get(t, libc::PR_GET_THP_DISABLE)?,
        child_subreaper: get_into(t, libc::PR_GET_CHILD_SUBREAPER)?,
        timerslack: get(t, libc::PR_GET_TIMERSLACK)?,
        mce_kill: get(t, libc::PR_MCE_KILL_GET)?,
        tsc: get_into(t, libc::PR_GET_TSC)?,
        membarrier,
        ..ProcFlags::default()
    };
    if guest {
        return Ok(kept);
    }
    Ok(ProcFlags {
        dumpable: get(t, libc::PR_GET_DUMPABLE)?,
        no_new_privs: get(t, libc::PR_GET_NO_NEW_PRIVS)?,
        keepcaps: get(t, libc::PR_GET_KEEPCAPS)?,
        securebits: get(t, libc::PR_GET_SECUREBITS)?,
        pdeathsig: get_into(t, libc::PR_GET_PDEATHSIG)?,
        ..kept
    })
}

/// Queue the image's pending signals again, with their siginfo: the
/// process's shared queue by the leader with rt_sigqueueinfo, each thread's
/// own by that thread with rt_tgsigqueueinfo to itself.
/// `threads` are the rebuilt threads in image order, `data` scratch memory.
/// Signals are blocked meanwhile, so none is delivered to a tracer stop and
/// lost; each thread's own mask is set last. Call it last before letting the
/// process go.
pub fn queue_pending(threads: &mut [Tracee], img: &Image, data: u64) -> Result<()> {
    for t in threads.iter() {
        t.set_sigmask(!0)?;
    }
    let tgid = threads[0].pid;
    let valid = |info: &Vec<u8>| -> Option<i32> {
        let sig = info.get(..4).map_or(0, |b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        (info.len() == 128 && (1..=64).contains(&sig) && sig != libc::SIGKILL && sig != libc::SIGSTOP).then_some(sig)
    };
    // The process's queue by the leader; each thread's own by that thread
    // (the kernel takes another sender's siginfo only from the thread the
    // signal is for, or from the leader for its process).
    for (i, (t, th)) in threads.iter_mut().zip(&img.threads).enumerate() {
        let tid = t.pid;
        let own = th.queued.iter().map(move |q| (Some(tid), q));
        let shared = img.queued.iter().filter(|_| i == 0).map(|q| (None, q));
        for (to, info) in shared.chain(own) {
            let Some(sig) = valid(info) else { continue };
            let r = match to {
                None => t.queue_signal(None, sig, info, data)?,
                Some(_) => t.queue_to_own_thread(tgid, sig, info, data)?,
            };
            if r < 0 {
                tracing::warn!(pid = tgid, tid = t.pid, sig, errno = -r, "a pending signal could not be queued again");
            }
        }
    }
    for (t, th) in threads.iter().zip(&img.threads) {
        t.set_sigmask(th.sigmask)?;
    }
    Ok(())
}

/// Take every signal queued for the stopped thread `t`, whole (siginfo_t,
/// 128 bytes each): its own queue, and for the leader the process's shared
/// one too (rt_sigtimedwait injected with a zero timeout, using 160 bytes
/// of scratch memory at `at`). A parked placeholder must not take signals
/// that moved with the image a second time.
pub fn take_queued(t: &mut Tracee, at: u64) -> Result<Vec<Vec<u8>>> {
    let all: u64 = !((1 << (libc::SIGKILL - 1)) | (1 << (libc::SIGSTOP - 1)));
    let mut args = all.to_le_bytes().to_vec();
    args.extend_from_slice(&[0u8; 16]);
    t.poke(at, &args)?;
    let mut out = Vec::new();
    for _ in 0..1 << 16 {
        if t.syscall(libc::SYS_rt_sigtimedwait, [at, at + 32, at + 8, 8, 0, 0])? <= 0 {
            break;
        }
        out.push(t.peek(at + 32, 128)?);
    }
    Ok(out)
}

/// The signals of `taken` (each with what it was taken from) that are not
/// among those `img` carries (each carried one matches one taken one,
/// whole): they arrived after the capture.
pub fn arrived_since<T>(img: &Image, taken: Vec<(T, Vec<u8>)>) -> Vec<(T, Vec<u8>)> {
    let mut carried: Vec<&Vec<u8>> = img.queued.iter().chain(img.threads.iter().flat_map(|t| &t.queued)).collect();
    taken
        .into_iter()
        .filter(|(_, s)| match carried.iter().position(|c| *c == s) {
            Some(i) => {
                carried.swap_remove(i);
                false
            }
            None => true,
        })
        .collect()
}

/// Set the settings the process keeps wherever it runs (not its identity).
fn restore_flags(t: &mut Tracee, f: &ProcFlags) -> Result<()> {
    let pid = t.pid;
    let set = |t: &mut Tracee, what: &'static str, args: [u64; 6]| -> Result<()> {
        let r = t.syscall(libc::SYS_prctl, args)?;
        if r < 0 {
            tracing::warn!(pid, what, errno = -r, "a process setting could not be restored");
        }
        Ok(())
    };
    set(t, "thp_disable", [libc::PR_SET_THP_DISABLE as u64, f.thp_disable, 0, 0, 0, 0])?;
    set(t, "child_subreaper", [libc::PR_SET_CHILD_SUBREAPER as u64, f.child_subreaper, 0, 0, 0, 0])?;
    if f.timerslack > 0 {
        set(t, "timerslack", [libc::PR_SET_TIMERSLACK as u64, f.timerslack, 0, 0, 0, 0])?;
    }
    let mce = match f.mce_kill {
        0 | 1 => [libc::PR_MCE_KILL as u64, libc::PR_MCE_KILL_SET as u64, f.mce_kill, 0, 0, 0],
        _ => [libc::PR_MCE_KILL as u64, libc::PR_MCE_KILL_CLEAR as u64, 0, 0, 0, 0],
    };
    set(t, "mce_kill", mce)?;
    if f.tsc != 0 {
        set(t, "tsc", [libc::PR_SET_TSC as u64, f.tsc, 0, 0, 0, 0])?;
    }
    if f.lock_future != 0 {
        let r = t.syscall(libc::SYS_mlockall, [f.lock_future, 0, 0, 0, 0, 0])?;
        if r < 0 {
            tracing::warn!(pid, errno = -r, "mlockall(MCL_FUTURE) could not be restored");
        }
    }
    for (_, register) in MEMBARRIER_KINDS {
        if f.membarrier & register != 0 {
            let r = t.syscall(libc::SYS_membarrier, [register, 0, 0, 0, 0, 0])?;
            if r < 0 {
                tracing::warn!(pid, register, errno = -r, "a membarrier registration could not be restored");
            }
        }
    }
    Ok(())
}

/// What each thread keeps of its own: registers, signal state, and the
/// addresses the kernel writes to for it.
#[derive(Archive, Serialize, Deserialize, Clone, Debug)]
pub struct ThreadState {
    /// Its thread id at home (the process's pid for the leader).
    pub tid: i32,
    pub regs: [u64; 27],
    pub xstate: Vec<u8>,
    pub sigmask: u64,
    pub rseq: (u64, u32, u32),
    pub robust: (u64, u64),
    /// sigaltstack: (ss_sp, ss_size, ss_flags as the kernel reported them).
    pub altstack: (u64, u64, i32),
    /// set_tid_address (clear_child_tid): zeroed and woken when it exits.
    pub clear_tid: u64,
    pub comm: String,
    /// Signals queued for this thread alone, whole (siginfo_t, 128 bytes).
    pub queued: Vec<Vec<u8>>,
}

impl ThreadState {
    pub fn regs(&self) -> Regs {
        regs_from_array(&self.regs)
    }
}

#[derive(Archive, Serialize, Deserialize, Clone)]
pub struct Image {
    pub pid: i32,
    pub pgid: i32,
    pub sid: i32,
    /// Every thread, the leader first.
    pub threads: Vec<ThreadState>,
    pub mm: MmFields,
    pub auxv: Vec<u8>,
    pub exe: String,
    pub exe_reopen: bool,
    pub cwd: String,
    pub umask: u32,
    pub comm: String,
    pub rlimits: Vec<(u64, u64)>,
    pub actions: Vec<SigAction>,
    pub ignored: u64,
    pub pending: u64,
    /// The signals queued for the whole process, whole (siginfo_t, 128
    /// bytes each; each thread's own are in [`ThreadState::queued`]). Queued
    /// again by the process itself at each rebuild ([`queue_pending`]), so
    /// senders, codes and values, and each queued instance of a real-time
    /// signal, arrive as they were.
    pub queued: Vec<Vec<u8>>,
    /// Interval and POSIX timers, stopped at capture ([`crate::timers`]).
    pub timers: crate::timers::Timers,
    pub creds: Creds,
    /// The threads whose ids differ from the leader's.
    pub thread_creds: Vec<ThreadCreds>,
    pub flags: ProcFlags,
    /// [vvar] start and the size of the vdso group, and a hash of the vdso text.
    pub vdso: (u64, u64, u64),
    pub regions: Vec<Region>,
    pub fds: Vec<(i32, bool)>,
    /// In a gang's move, how many members take part as this one is sent
    /// (fewer than its offer said when one ended on the way); 0: alone.
    pub gang_size: u32,
}

// Logs and errors name an image and its size, never its contents.
impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Image {{ pid: {}, regions: {}, page data: {} bytes }}",
            self.pid,
            self.regions.len(),
            self.data_bytes()
        )
    }
}

impl Image {
    /// Every (address, length) piece of page data, in stream order.
    pub fn runs(&self) -> impl Iterator<Item = (u64, usize)> + '_ {
        self.regions
            .iter()
            .flat_map(|r| r.runs.iter().map(move |&(first, n)| (r.start + first * PAGE, (n * PAGE) as usize)))
    }

    pub fn data_bytes(&self) -> u64 {
        self.runs().map(|(_, l)| l as u64).sum()
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        rkyv::to_bytes::<rkyv::rancor::Error>(self).map(|v| v.to_vec()).unwrap_or_default()
    }

    /// The leader's state (every image has one).
    pub fn leader(&self) -> &ThreadState {
        &self.threads[0]
    }
}

pub use sys::{regs_from_array, regs_to_array};

/// Why a process cannot move (openMosix's `cantmove`), or None. `gang`
/// lists the processes under om that move with it (see [`crate::gang`]):
/// memory shared with them does not hold it back; memory shared with any
/// other process does, and the reason names that process.
pub fn cant_move(pid: i32, gang: &[i32]) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    if procfs::status_field_in(&status, "State").is_some_and(|s| s.starts_with('T') || s.starts_with('t')) {
        return Some("it is stopped; continue it (SIGCONT) first".into());
    }
    cant_move_frozen(pid, gang)
}

/// Why the threads of `pid` cannot move together, or None. Credentials
/// are per thread: a thread may run with other ids and capabilities than
/// the leader, and its calls home must run with them. The deputy takes the
/// leader's, and switches a worker to such a thread's only downwards: the
/// leader must be root with CAP_SETUID and CAP_SETGID, and the thread hold
/// no capability the leader lacks (with the same bounding and ambient sets
/// and no_new_privs). Also refused: a leader that has ended while others run.
fn threads_differ(pid: i32) -> Option<String> {
    let leader = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    if procfs::status_field_in(&leader, "State").is_some_and(|s| s.starts_with('Z')) {
        return Some("its main thread has exited while other threads run".into());
    }
    let caps = |st: &str| {
        ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs"]
            .map(|k| procfs::hex_mask(&procfs::status_field_in(st, k).unwrap_or_default()))
    };
    let (lids, lcaps) = (Creds::from_status(&leader), caps(&leader));
    // CAP_SETGID (6) and CAP_SETUID (7).
    const SETID: u64 = 1 << 6 | 1 << 7;
    let can_switch = lids.uids[1] == 0 && lcaps[2] & SETID == SETID;
    for tid in crate::ptrace::thread_ids(pid).into_iter().filter(|&t| t != pid) {
        let Ok(st) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")) else { continue };
        let (ids, c) = (Creds::from_status(&st), caps(&st));
        if ids == lids && c == lcaps {
            continue;
        }
        if !can_switch {
            return Some(format!(
                "its thread {tid} runs with other credentials than the main thread, which the deputy can serve \
                 only when the main thread is root with CAP_SETUID and CAP_SETGID"
            ));
        }
        if c[0] & !lcaps[0] != 0 || c[1] & !lcaps[1] != 0 || c[3..] != lcaps[3..] {
            return Some(format!(
                "its thread {tid} has capabilities (or a bounding set, ambient set or no_new_privs) \
                 the main thread has not"
            ));
        }
    }
    None
}

/// The same checks, for a process om itself holds stopped (the state is ours).
pub fn cant_move_frozen(pid: i32, gang: &[i32]) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let threads: u32 = procfs::status_field_in(&status, "Threads").and_then(|t| t.parse().ok()).unwrap_or(1);
    if threads > 1 {
        if let Some(why) = threads_differ(pid) {
            return Some(why);
        }
    }
    if procfs::status_field_in(&status, "Seccomp").is_some_and(|s| s != "0") {
        return Some("it installed its own seccomp filter".into());
    }
    if let Some(why) = crate::timers::cant_move(pid, threads as usize) {
        return Some(why);
    }
    if let Some(why) = shares_with_another(pid) {
        return Some(why);
    }
    if let Some(lock) = posix_lock_of(pid) {
        return Some(format!(
            "it holds a POSIX record lock ({lock}), which would be dropped while it is away; \
             it can move once it releases it (or uses flock or OFD locks)"
        ));
    }
    let maps = procfs::maps(pid).ok()?;
    let attrs = if maps.iter().any(|m| m.shared) { region_attrs(pid) } else { HashMap::new() };
    for m in &maps {
        if is_shared_file(m, &attrs) {
            if let Err(why) = shared_file_ok(pid, m, gang) {
                return Some(why);
            }
            continue;
        }
        if m.path.starts_with("/[aio]") {
            return Some(format!(
                "it has an aio context (io_setup) at {:#x}, whose ring the kernel shares with it; om does not \
                 move one (it can move once io_destroy ends it)",
                m.start
            ));
        }
        if m.path.contains("[io_uring]") {
            return Some(format!(
                "it uses io_uring (its rings at {:#x} are shared with the kernel), which om does not move",
                m.start
            ));
        }
        if !m.shared && m.inode != 0 && m.path.ends_with(" (deleted)") {
            return Some(format!(
                "it maps a deleted file privately at {:#x} ({}); its unwritten pages must keep showing the file, \
                 which no other node has",
                m.start, m.path
            ));
        }
        if m.path.starts_with("/SYSV") {
            if let Some(why) = sysv_cant_move(pid, m, &maps, gang) {
                return Some(why);
            }
        }
        if is_shmem(m) {
            if let Err(why) = shared_object(pid, m, gang) {
                return Some(why);
            }
            continue;
        }
        if m.shared && m.write {
            let what = "a shared writable mapping";
            // The JVM maps its perf counters shared from /tmp; the flag
            // that keeps them private is the fix a user needs.
            let hint = if m.path.contains("/hsperfdata_") {
                "; a JVM can move when started with -XX:+PerfDisableSharedMem"
            } else {
                ""
            };
            return Some(format!(
                "it has {what} at {:#x} ({}){hint}",
                m.start,
                if m.path.is_empty() { "anon" } else { &m.path }
            ));
        }
    }
    None
}

/// A process that shares `pid`'s memory, fd table or fs (cwd, umask) without
/// being a thread of it (clone with CLONE_VM, CLONE_FILES or CLONE_FS but not
/// CLONE_THREAD): its parent and children are checked with kcmp.
fn shares_with_another(pid: i32) -> Option<String> {
    let ppid = procfs::stat(pid).ok()?.field(3) as i32;
    let mut others = procfs::children(pid);
    if ppid > 1 {
        others.push(ppid);
    }
    for other in others {
        for (kind, what, flag) in [
            (1, "its memory", "CLONE_VM"),
            (2, "its file descriptor table", "CLONE_FILES"),
            (3, "its cwd and umask", "CLONE_FS"),
        ] {
            if sys::kcmp_shared(pid, other, kind) == Some(true) {
                return Some(format!(
                    "it shares {what} with process {other} ({flag}), which would no longer see its changes"
                ));
            }
        }
    }
    None
}

/// Whether a mapping is a shared mapping of a file that is or may become
/// writable ("mw"): its writes must reach the file, so it moves only as a
/// shared mapping of the same file (`RegionKind::SharedFile`).
fn is_shared_file(m: &MapLine, attrs: &HashMap<u64, u32>) -> bool {
    m.shared
        && m.path.starts_with('/')
        && !is_shmem(m)
        && !m.path.starts_with("/SYSV")
        && !m.path.starts_with("/[aio]")
        && (m.write || attrs.get(&m.start).is_some_and(|a| a & ATTR_MAYWRITE != 0))
}

/// Whether shared writable file mapping `m` of `pid` can move: its file is
/// on a cluster-consistent path, not deleted, and no other process maps it.
fn shared_file_ok(pid: i32, m: &MapLine, gang: &[i32]) -> std::result::Result<(), String> {
    let at = format!("a shared writable mapping of {} at {:#x}", m.path, m.start);
    if m.path.ends_with(" (deleted)") {
        return Err(format!("it has {at}; the file is deleted, so no other node can map it"));
    }
    if !is_consistent(&m.path) {
        // The JVM maps its perf counters shared from /tmp; the flag that
        // keeps them private is the fix a user needs.
        let hint = if m.path.contains("/hsperfdata_") {
            "; a JVM can move when started with -XX:+PerfDisableSharedMem"
        } else {
            ""
        };
        return Err(format!(
            "it has {at}, which is not on a cluster-consistent path (om.toml consistent_paths), so its \
             writes could not reach the same file from another node{hint}"
        ));
    }
    if let Some(other) = other_mapper(pid, m, gang) {
        let comm = procfs::stat(other).map(|s| s.comm).unwrap_or_default();
        return Err(format!("it has {at}, which process {other} ({comm}) maps too{}", not_under_om(gang)));
    }
    Ok(())
}

/// Another process mapping the same file as `m` (same inode and path).
/// om's own copies of a process are not counted (see [`om_own`]).
fn other_mapper(pid: i32, m: &MapLine, gang: &[i32]) -> Option<i32> {
    first_other(pid, gang, true, |n| {
        let maps = procfs::maps(n).ok()?;
        maps.iter().any(|o| o.inode == m.inode && o.path == m.path).then_some(n)
    })
}

/// The first answer `f` gives for a process other than `pid`, the members
/// of `gang` and omd itself (and, with `skip_om`, om's own copies of a
/// process, see [`om_own`]: asked only of a process `f` answers for).
fn first_other<T>(pid: i32, gang: &[i32], skip_om: bool, mut f: impl FnMut(i32) -> Option<T>) -> Option<T> {
    let me = sys::getpid();
    let omd = std::fs::read_link("/proc/self/exe").ok();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|p| {
        let n = p.file_name().to_str()?.parse::<i32>().ok()?;
        if n == pid || n == me || gang.contains(&n) {
            return None;
        }
        let found = f(n)?;
        (!skip_om || !omd.as_deref().is_some_and(|omd| om_own(n, omd))).then_some(found)
    })
}

/// Whether process `n` is one of om's own copies of a process moving: a
/// guest being built (a child of an omd) or a placeholder at home (traced
/// by an omd), as they show on one machine that runs several nodes.
fn om_own(n: i32, omd: &std::path::Path) -> bool {
    let Ok(st) = std::fs::read_to_string(format!("/proc/{n}/status")) else { return false };
    ["PPid", "TracerPid"].iter().any(|k| {
        let p: i32 = procfs::status_field_in(&st, k).and_then(|v| v.parse().ok()).unwrap_or(0);
        p > 1 && std::fs::read_link(format!("/proc/{p}/exe")).is_ok_and(|e| e == omd)
    })
}

/// Whether a mapping is of a shared memory object om can make again at
/// the destination: shared anonymous memory, or a memfd mapped shared.
pub fn is_shmem(m: &MapLine) -> bool {
    m.shared
        && (m.path.starts_with("/dev/zero")
            || m.path.starts_with("/memfd:")
            || m.path.starts_with("/SYSV")
            || m.path.ends_with(" (deleted)") && !m.path.starts_with("/[aio]")
            || m.path.is_empty())
}

/// The attach count (nattch) of SysV segment `shmid`, from /proc/sysvipc/shm.
fn sysv_nattch(shmid: u64) -> Option<u64> {
    let t = std::fs::read_to_string("/proc/sysvipc/shm").ok()?;
    t.lines().skip(1).find_map(|l| {
        // key shmid perms size cpid lpid nattch ...
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1)?.parse::<u64>().ok()? == shmid).then(|| f.get(6)?.parse().ok())?
    })
}

/// Why SysV segment mapping `m` of `pid` cannot move, or None: it moves
/// when this process holds every attach of it.
fn sysv_cant_move(pid: i32, m: &MapLine, maps: &[MapLine], gang: &[i32]) -> Option<String> {
    let attaches = |maps: &[MapLine]| maps.iter().filter(|o| o.path.starts_with("/SYSV") && o.inode == m.inode).count();
    let mut mine = attaches(maps) as u64;
    for &g in gang.iter().filter(|&&g| g != pid) {
        mine += procfs::maps(g).map(|o| attaches(&o)).unwrap_or(0) as u64;
    }
    let Some(nattch) = sysv_nattch(m.inode) else {
        return Some(format!(
            "it has SysV shared memory (shmid {}) at {:#x} that /proc/sysvipc/shm does not list",
            m.inode, m.start
        ));
    };
    if nattch == mine {
        return None;
    }
    let other = first_other(pid, gang, false, |n| {
        let o = procfs::maps(n).ok()?;
        o.iter().any(|x| x.path.starts_with("/SYSV") && x.inode == m.inode).then_some(n)
    });
    Some(match other {
        Some(o) => format!(
            "it shares SysV shared memory (shmid {}) at {:#x} with process {o} ({}), which has it attached too{}",
            m.inode,
            m.start,
            procfs::stat(o).map(|s| s.comm).unwrap_or_default(),
            not_under_om(gang)
        ),
        None => format!(
            "it has SysV shared memory (shmid {}) at {:#x} attached {nattch} times, {mine} of them by itself and its gang",
            m.inode, m.start
        ),
    })
}

/// The end of a refusal for memory shared with a process outside the gang.
fn not_under_om(gang: &[i32]) -> &'static str {
    if gang.is_empty() {
        " and would no longer see its writes"
    } else {
        ", and it is not under om or is locked (processes under om that share memory move together as a gang; \
         start it with om-exec, or unlock it)"
    }
}

/// A shared memory object a process maps, opened through /proc/PID/map_files.
pub struct SharedObject {
    /// The fds the process holds on it.
    pub fds: Vec<i32>,
    pub file: std::fs::File,
    pub id: u64,
    pub size: u64,
    pub seals: u32,
    pub memfd: Option<String>,
}

/// tmpfs's statfs magic: shared anonymous memory and memfds live there
/// (a hugetlbfs memfd does not, and is refused).
const TMPFS_MAGIC: i64 = 0x0102_1994;
const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;

/// Open the shared memory object mapping `m` of `pid` maps, if it can
/// move: no other process maps it or holds an fd on it, and `pid` holds
/// none either (its fds stay at home while the mapping moves). Otherwise
/// the reason, naming the other process.
pub fn shared_object(pid: i32, m: &MapLine, gang: &[i32]) -> std::result::Result<SharedObject, String> {
    let o = open_object(pid, m)?;
    // A SysV segment's attaches are counted by the kernel (sysv_cant_move).
    let other = if m.path.starts_with("/SYSV") { None } else { other_user(pid, o.id, &m.path, gang) };
    if let Some((other, how)) = other {
        let comm = procfs::stat(other).map(|s| s.comm).unwrap_or_default();
        let at = object_at(m);
        return Err(format!("it shares {at} with process {other} ({comm}), which {how}{}", not_under_om(gang)));
    }
    Ok(o)
}

/// How a refusal names shared memory mapping `m`.
fn object_at(m: &MapLine) -> String {
    let what = if m.path.starts_with("/memfd:") {
        "a memfd mapped shared"
    } else if m.path.starts_with("/SYSV") {
        "SysV shared memory"
    } else if m.path.starts_with("/dev/zero") || m.path.is_empty() {
        "shared anonymous memory"
    } else {
        "a deleted file mapped shared"
    };
    format!("{what} at {:#x} ({})", m.start, if m.path.is_empty() { "anon" } else { &m.path })
}

/// Open the shared memory object mapping `m` of `pid` maps, through
/// /proc/PID/map_files, if it is memory om can make again (tmpfs).
fn open_object(pid: i32, m: &MapLine) -> std::result::Result<SharedObject, String> {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::io::AsRawFd;
    let at = object_at(m);
    let path = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
    let file = std::fs::File::open(&path).map_err(|e| {
        format!(
            "it has {at}, which om reads through {path}, and that failed ({e}); omd needs \
             CAP_CHECKPOINT_RESTORE (or root) to move shared memory"
        )
    })?;
    let md = file.metadata().map_err(|e| format!("it has {at}, which om could not stat ({e})"))?;
    match sys::fs_magic(file.as_raw_fd()).ok() {
        Some(TMPFS_MAGIC) => (),
        Some(HUGETLBFS_MAGIC) => return Err(format!("it has {at} on huge pages (hugetlbfs), which om does not move")),
        _ => {
            return Err(format!(
                "it has a shared writable mapping of {} at {:#x}; the file is deleted, so no other node can map it",
                m.path, m.start
            ))
        }
    }
    // A deleted tmpfs file (a POSIX shm object or temporary file unlinked
    // once mapped) is made again as a memfd of the same name.
    let memfd = if m.path.starts_with("/dev/zero") || m.path.starts_with("/SYSV") || m.path.is_empty() {
        None
    } else {
        let name = m.path.strip_prefix("/memfd:").unwrap_or_else(|| m.path.rsplit('/').next().unwrap_or("om"));
        Some(name.trim_end_matches(" (deleted)").to_string())
    };
    let seals = if memfd.is_some() { sys::seals(file.as_raw_fd()) } else { 0 };
    let fds = if m.path.starts_with("/SYSV") { Vec::new() } else { fds_on(pid, md.ino(), &m.path) };
    Ok(SharedObject { id: md.ino(), size: md.size(), seals, memfd, file, fds })
}

/// The fds `pid` holds on the object with inode `ino` (`path` in maps).
fn fds_on(pid: i32, ino: u64, path: &str) -> Vec<i32> {
    use std::os::unix::fs::MetadataExt;
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return Vec::new() };
    let mut out: Vec<i32> = dir
        .flatten()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == path))
        .filter(|e| std::fs::metadata(e.path()).is_ok_and(|md| md.ino() == ino))
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    out.sort_unstable();
    out
}

/// Another process that maps the shared memory object with inode `ino`
/// (shown as `path` in maps), or a process (`pid` itself included) that
/// holds an fd on it: (pid, how). omd's own fds are not counted.
fn other_user(pid: i32, ino: u64, path: &str, gang: &[i32]) -> Option<(i32, String)> {
    use std::os::unix::fs::MetadataExt;
    // Its own fds and its gang's stay at home with the deputy, whose calls
    // on them run at home (see `HomeRefs`); om's own processes (a deputy
    // holding them) do not count either.
    first_other(pid, gang, true, |n| {
        if procfs::maps(n).is_ok_and(|maps| maps.iter().any(|o| o.shared && o.inode == ino && o.path == path)) {
            return Some((n, "maps it too".into()));
        }
        std::fs::read_dir(format!("/proc/{n}/fd")).ok()?.flatten().find_map(|fd| {
            let link = std::fs::read_link(fd.path()).ok()?;
            (link.as_os_str() == path && std::fs::metadata(fd.path()).is_ok_and(|md| md.ino() == ino))
                .then(|| (n, format!("holds fd {} on it", fd.file_name().to_string_lossy())))
        })
    })
}

/// A POSIX record lock `pid` holds, as /proc/locks shows it (type, file's
/// device:inode, range), or None.
fn posix_lock_of(pid: i32) -> Option<String> {
    // Each fd's fdinfo lists the locks taken through it ("lock:" lines, as
    // in /proc/locks). /proc/locks itself is not read: reading it takes a
    // system-wide write lock that waits for an RCU grace period (about
    // 8 ms here), inside the freeze. A POSIX lock of the process is always
    // on a file it has open (closing any fd on the file drops it).
    let rd = std::fs::read_dir(format!("/proc/{pid}/fdinfo")).ok()?;
    rd.flatten().find_map(|e| {
        let info = std::fs::read_to_string(e.path()).ok()?;
        info.lines().find_map(|l| posix_lock_in(l.strip_prefix("lock:")?, pid))
    })
}

/// The POSIX lock of `pid` a /proc/locks-style line describes, if it is one:
/// "1: POSIX  ADVISORY  WRITE 1234 00:1f:5678 10 29" ("->" marks a waiter).
fn posix_lock_in(l: &str, pid: i32) -> Option<String> {
    let f: Vec<&str> = l.split_whitespace().collect();
    let at = f.iter().position(|w| *w == "POSIX")?;
    if f.get(1) == Some(&"->") || f.get(at + 3)?.parse::<i32>().ok()? != pid {
        return None;
    }
    Some(format!("{} on {} bytes {}-{}", f.get(at + 2)?, f.get(at + 4)?, f.get(at + 5)?, f.get(at + 6)?))
}

fn is_special(path: &str) -> bool {
    matches!(path, "[vvar]" | "[vvar_vclock]" | "[vdso]" | "[vsyscall]")
}

fn prot_of(m: &MapLine) -> u32 {
    (if m.read { libc::PROT_READ } else { 0 }
        | if m.write { libc::PROT_WRITE } else { 0 }
        | if m.exec { libc::PROT_EXEC } else { 0 }) as u32
}

/// (device, inode, mtime) -> identity, so each mapped file is hashed once.
type FileIdCache = HashMap<(u64, u64, i64), FileId>;
static FILE_IDS: Mutex<Option<FileIdCache>> = Mutex::new(None);

/// Identity of a file for "same file at the destination" checks: size, mtime
/// and a content hash (cached per inode and mtime).
pub fn file_id(path: &str) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(path).ok()?;
    if !md.is_file() {
        return None;
    }
    let mtime_ns = md.mtime() * 1_000_000_000 + md.mtime_nsec();
    let key = (md.dev(), md.ino(), mtime_ns);
    if let Some(id) = FILE_IDS.lock().ok()?.as_ref().and_then(|m| m.get(&key).cloned()) {
        return Some(id);
    }
    let id = FileId { size: md.size(), mtime_ns, hash: sampled_hash(path, md.size()).ok()? };
    FILE_IDS.lock().ok()?.get_or_insert_with(HashMap::new).insert(key, id.clone());
    Some(id)
}

/// Identity of the regular file open at `fd` in this thread's fd table, and
/// its path, or None for anything else.
pub fn fd_file_id(fd: i32) -> Option<(String, FileId)> {
    use std::os::unix::fs::MetadataExt;
    let path = std::fs::read_link(format!("/proc/thread-self/fd/{fd}")).ok()?.to_string_lossy().into_owned();
    let file = std::fs::File::open(format!("/proc/thread-self/fd/{fd}")).ok()?;
    let md = file.metadata().ok()?;
    if !md.is_file() || path.ends_with(" (deleted)") {
        return None;
    }
    let mtime_ns = md.mtime() * 1_000_000_000 + md.mtime_nsec();
    let hash = sampled_hash(&format!("/proc/thread-self/fd/{fd}"), md.size()).ok()?;
    Some((path, FileId { size: md.size(), mtime_ns, hash }))
}

/// Hash of the first and last 64 KiB and 32 evenly spaced 4 KiB blocks: with
/// the size and the nanosecond mtime, this tells a copy of the same file from
/// another file without reading all of it (libraries are tens of MB).
fn sampled_hash(path: &str, size: u64) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path)?;
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&size.to_le_bytes());
    let mut piece = |off: u64, len: u64| -> std::io::Result<()> {
        let len = len.min(size.saturating_sub(off)) as usize;
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, off)?;
        h.update(&buf);
        Ok(())
    };
    if size <= 256 << 10 {
        piece(0, size)?;
    } else {
        piece(0, 64 << 10)?;
        for k in 1..=32u64 {
            piece(size / 33 * k / 4096 * 4096, 4096)?;
        }
        piece(size - (64 << 10), 64 << 10)?;
    }
    Ok(h.digest())
}

/// The files a process maps privately (candidates for reopening at the destination).
pub fn mapped_files(pid: i32) -> Vec<(String, FileId)> {
    let mut out: Vec<(String, FileId)> = Vec::new();
    let Ok(maps) = procfs::maps(pid) else {
        return out;
    };
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok().map(|p| p.to_string_lossy().into_owned());
    for p in maps.iter().filter(|m| m.path.starts_with('/') && !m.shared).map(|m| m.path.clone()).chain(exe) {
        if p.ends_with(" (deleted)") || out.iter().any(|(q, _)| *q == p) {
            continue;
        }
        if let Some(id) = file_id(&p) {
            out.push((p, id));
        }
    }
    out
}

/// Hash of this host's vdso text, to refuse a move to a node with another kernel.
pub fn local_vdso() -> (u64, u64) {
    let Ok(maps) = procfs::maps(sys::getpid()) else {
        return (0, 0);
    };
    let Some(v) = maps.iter().find(|m| m.path == "[vdso]") else {
        return (0, 0);
    };
    let len = (v.end - v.start) as usize;
    (xxhash_rust::xxh3::xxh3_64(&sys::own_mapping(v.start, len)), len as u64)
}

fn find_syscall_insn(t: &Tracee, maps: &[MapLine]) -> Result<u64> {
    let v = maps.iter().find(|m| m.path == "[vdso]").ok_or(TraceError::Injected {
        pid: t.pid,
        name: "find vdso",
        errno: 2,
    })?;
    let bytes = t.peek(v.start, (v.end - v.start) as usize)?;
    bytes.windows(2).position(|w| w == [0x0f, 0x05]).map(|i| v.start + i as u64).ok_or(TraceError::Injected {
        pid: t.pid,
        name: "find syscall in vdso",
        errno: 2,
    })
}

/// Map a scratch area with injection code in the tracee, at `hint` (fixed, not
/// replacing) or anywhere when `hint` is 0. Switches injection to it.
pub fn map_scratch(t: &mut Tracee, hint: u64) -> Result<u64> {
    if t.syscall_ip == 0 {
        let maps = procfs::maps(t.pid).map_err(|e| TraceError::Io { pid: t.pid, what: "maps", source: e })?;
        t.syscall_ip = find_syscall_insn(t, &maps)?;
    }
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | if hint != 0 { libc::MAP_FIXED_NOREPLACE } else { 0 };
    let p = t.syscall_ok(
        "mmap scratch",
        libc::SYS_mmap,
        [hint, SCRATCH_LEN, (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u64, flags as u64, u64::MAX, 0],
    )?;
    t.poke(p, &SCRATCH_CODE)?;
    t.syscall_ip = p;
    Ok(p)
}

/// ([vvar] start, size of the vvar/vdso group, hash of the vdso text).
fn vdso_of(pid: i32, maps: &[MapLine]) -> std::io::Result<(u64, u64, u64)> {
    use std::os::unix::fs::FileExt;
    let group = maps.iter().filter(|m| is_special(&m.path) && m.path != "[vsyscall]");
    let (lo, hi) = group.fold((u64::MAX, 0), |(lo, hi), m| (lo.min(m.start), hi.max(m.end)));
    let vvar_start = maps.iter().find(|m| m.path == "[vvar]").map_or(lo, |m| m.start);
    let hash = match maps.iter().find(|m| m.path == "[vdso]") {
        Some(v) => {
            let mut b = vec![0u8; (v.end - v.start) as usize];
            std::fs::File::open(format!("/proc/{pid}/mem"))?.read_exact_at(&mut b, v.start)?;
            xxhash_rust::xxh3::xxh3_64(&b)
        }
        None => 0,
    };
    Ok((vvar_start, hi.saturating_sub(lo), hash))
}

/// The layout and pages of a process that keeps running (for pre-copy): only
/// regions, runs and the vdso are filled in.
pub fn pre_image(pid: i32, reopen: &dyn Fn(&str) -> bool) -> std::io::Result<Image> {
    let maps = procfs::maps(pid)?;
    Ok(Image {
        pid,
        pgid: 0,
        sid: 0,
        threads: Vec::new(),
        mm: MmFields::default(),
        auxv: Vec::new(),
        exe: String::new(),
        exe_reopen: false,
        cwd: String::new(),
        umask: 0,
        comm: String::new(),
        rlimits: Vec::new(),
        actions: Vec::new(),
        ignored: 0,
        pending: 0,
        queued: Vec::new(),
        timers: Default::default(),
        creds: Creds::default(),
        thread_creds: Vec::new(),
        flags: ProcFlags::default(),
        vdso: vdso_of(pid, &maps)?,
        regions: capture_regions(pid, &maps, 0, &region_attrs(pid), reopen)?,
        fds: Vec::new(),
        gang_size: 0,
    })
}

/// Hash of each page sent in a pre-copy, by address.
pub type PageHashes = HashMap<u64, u64>;

pub fn page_indices(runs: &[(u64, u64)]) -> impl Iterator<Item = u64> + '_ {
    runs.iter().flat_map(|&(f, n)| f..f + n)
}

pub fn runs_of(mut idx: Vec<u64>) -> Vec<(u64, u64)> {
    idx.sort_unstable();
    idx.dedup();
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for i in idx {
        match runs.last_mut() {
            Some((f, n)) if *f + *n == i => *n += 1,
            _ => runs.push((i, 1)),
        }
    }
    runs
}

/// After a pre-copy, keep in the regions `which` of `img` (each unchanged
/// since the pre-copy `pre`) only the pages whose content hash differs from
/// what was sent (a page that vanished reads as zeroes, or as its file
/// page, and travels too). Returns the pages left out.
pub fn prune_by_hash(
    pid: i32,
    img: &mut Image,
    which: &[usize],
    pre: &Image,
    sent: &PageHashes,
    mode: ReadMode,
) -> std::io::Result<u64> {
    let mut skipped = 0u64;
    let mut buf = vec![0u8; 4 << 20];
    for &i in which {
        let Some(r) = img.regions.get_mut(i) else { continue };
        let Some(q) = pre.regions.iter().find(|q| same_region(r, q)) else { continue };
        if r.prot & libc::PROT_READ as u32 == 0 && r.runs.is_empty() && q.runs.is_empty() {
            continue;
        }
        let cand = runs_of(page_indices(&r.runs).chain(page_indices(&q.runs)).collect());
        let pieces = cand.iter().map(|&(f, n)| (r.start + f * PAGE, (n * PAGE) as usize));
        let mut keep = Vec::new();
        for batch in batch_runs(pieces, buf.len()) {
            let n: usize = batch.iter().map(|b| b.1).sum();
            read_pages(pid, &batch, &mut buf[..n], mode)?;
            let mut off = 0;
            for &(a, l) in &batch {
                for k in 0..(l as u64 / PAGE) {
                    let page = &buf[off + (k * PAGE) as usize..off + ((k + 1) * PAGE) as usize];
                    let addr = a + k * PAGE;
                    if sent.get(&addr) == Some(&xxhash_rust::xxh3::xxh3_64(page)) {
                        skipped += 1;
                    } else {
                        keep.push((addr - r.start) / PAGE);
                    }
                }
                off += l;
            }
        }
        r.runs = runs_of(keep);
    }
    Ok(skipped)
}

/// Everything captured from a frozen process except page contents.
pub struct Captured {
    pub image: Image,
    /// The scratch area left mapped in the process (for parking, or removal on rollback).
    pub scratch: u64,
}

/// Capture a stopped process: `threads` holds every thread stopped, the
/// leader first ([`crate::ptrace::seize_all`]). `reopen` says which files
/// the destination has identical (by path); other file mappings travel as
/// anonymous memory.
pub fn capture(threads: &mut [Tracee], reopen: &dyn Fn(&str) -> bool) -> Result<Captured> {
    let (t, others) = threads.split_first_mut().expect("a process has a leader");
    let pid = t.pid;
    let ioe = |what: &'static str| move |e: std::io::Error| TraceError::Io { pid, what, source: e };
    let maps = procfs::maps(pid).map_err(ioe("maps"))?;
    let scratch = map_scratch(t, 0)?;
    // The regions' flags come from /proc/PID/smaps, whose read walks every
    // page (about 15 ms a GiB): read meanwhile, by a thread of its own.
    let attrs_job = std::thread::Builder::new().name("smaps".into()).spawn(move || region_attrs(pid));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(ioe("status"))?;
    let st = procfs::stat(pid).map_err(ioe("stat"))?;
    let sf = |k: &str| procfs::status_field_in(&status, k).unwrap_or_default();

    let brk = t.syscall_ok("brk", libc::SYS_brk, [0; 6])?;
    let caught = procfs::hex_mask(&sf("SigCgt"));
    let mut actions = Vec::new();
    for sig in 1..=64i32 {
        if caught & (1u64 << (sig - 1)) == 0 {
            continue;
        }
        let out = scratch + 2048;
        t.syscall_ok("rt_sigaction", libc::SYS_rt_sigaction, [sig as u64, 0, out, 8, 0, 0])?;
        let b = t.peek(out, 32)?;
        let w = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
        actions.push(SigAction { sig, handler: w(0), flags: w(1), restorer: w(2), mask: w(3) });
    }

    let creds = Creds::from_status(&status);
    let thread_creds: Vec<ThreadCreds> = others
        .iter()
        .filter_map(|o| {
            let st = std::fs::read_to_string(format!("/proc/{pid}/task/{}/status", o.pid)).ok()?;
            let c = Creds::from_status(&st);
            (c != creds).then_some(ThreadCreds { tid: o.pid, creds: c })
        })
        .collect();
    // From /proc: prlimit on another user's process needs CAP_SYS_RESOURCE.
    let rlimits = procfs::limits(pid).map_err(ioe("limits"))?;
    let guest = sf("Seccomp") == "2";
    let mut flags = capture_flags(t, scratch + 3584, guest)?;
    let mut states = vec![capture_thread(t, scratch + 3840)?];
    for o in others.iter_mut() {
        o.syscall_ip = scratch;
        states.push(capture_thread(o, scratch + 3840)?);
    }

    let (vvar_start, vdso_len, vdso_hash) = vdso_of(pid, &maps).map_err(ioe("vdso"))?;

    let attrs = match attrs_job {
        Ok(job) => job.join().unwrap_or_else(|_| region_attrs(pid)),
        Err(_) => region_attrs(pid),
    };
    // mlockall(MCL_FUTURE) shows only in what is mapped after it: the scratch area.
    flags.lock_future = match attrs.get(&scratch).copied().unwrap_or(0) {
        a if a & ATTR_ONFAULT != 0 => (libc::MCL_FUTURE | libc::MCL_ONFAULT) as u64,
        a if a & ATTR_LOCKED != 0 => libc::MCL_FUTURE as u64,
        _ => 0,
    };
    let regions = capture_regions(pid, &maps, scratch, &attrs, reopen).map_err(ioe("pagemap"))?;
    // Last: from here a failure is the caller's, whose rollback arms them again.
    let tids: Vec<i32> = std::iter::once(pid).chain(others.iter().map(|o| o.pid)).collect();
    let timers = crate::timers::capture(t, &tids, scratch + 3072)?;
    let exe =
        std::fs::read_link(format!("/proc/{pid}/exe")).map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
    let image = Image {
        pid,
        pgid: st.field(5) as i32,
        sid: st.field(6) as i32,
        threads: states,
        mm: MmFields {
            start_code: st.field(26),
            end_code: st.field(27),
            start_stack: st.field(28),
            start_data: st.field(45),
            end_data: st.field(46),
            start_brk: st.field(47),
            brk,
            arg_start: st.field(48),
            arg_end: st.field(49),
            env_start: st.field(50),
            env_end: st.field(51),
        },
        auxv: std::fs::read(format!("/proc/{pid}/auxv")).map_err(ioe("auxv"))?,
        exe_reopen: reopen(&exe),
        exe,
        cwd: std::fs::read_link(format!("/proc/{pid}/cwd"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "/".into()),
        umask: u32::from_str_radix(&sf("Umask"), 8).unwrap_or(0o022),
        comm: st.comm.clone(),
        rlimits,
        actions,
        ignored: procfs::hex_mask(&sf("SigIgn")),
        pending: procfs::hex_mask(&sf("SigPnd")) | procfs::hex_mask(&sf("ShdPnd")),
        queued: t.queued_signals(true)?,
        timers,
        creds,
        thread_creds,
        flags,
        vdso: (vvar_start, vdso_len, vdso_hash),
        regions,
        fds: procfs::fds(pid).map_err(ioe("fds"))?,
        gang_size: 0,
    };
    Ok(Captured { image, scratch })
}

/// One stopped thread's own state, with calls injected into it (through
/// its `syscall_ip`) using the scratch memory at `at` (64 bytes).
fn capture_thread(t: &mut Tracee, at: u64) -> Result<ThreadState> {
    let tid = t.pid;
    let ioe = |what: &'static str| move |e: std::io::Error| TraceError::Io { pid: tid, what, source: e };
    t.syscall_ok("sigaltstack", libc::SYS_sigaltstack, [0, at, 0, 0, 0, 0])?;
    let b = t.peek(at, 24)?;
    let w = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
    let altstack = (w(0), w(16), i32::from_le_bytes(b[8..12].try_into().unwrap_or([0; 4])));
    const PR_GET_TID_ADDRESS: u64 = 40;
    t.syscall_ok("prctl(PR_GET_TID_ADDRESS)", libc::SYS_prctl, [PR_GET_TID_ADDRESS, at + 32, 0, 0, 0, 0])?;
    let clear_tid = u64::from_le_bytes(t.peek(at + 32, 8)?.try_into().unwrap_or([0; 8]));
    let comm = std::fs::read_to_string(format!("/proc/{tid}/comm")).map_err(ioe("comm"))?;
    Ok(ThreadState {
        tid,
        regs: regs_to_array(&t.saved),
        xstate: t.xstate()?,
        sigmask: t.sigmask()?,
        rseq: t.rseq(),
        robust: sys::get_robust_list(tid).unwrap_or((0, 0)),
        altstack,
        clear_tid,
        comm: comm.trim_end_matches('\n').to_string(),
        queued: t.queued_signals(false)?,
    })
}

fn capture_regions(
    pid: i32,
    maps: &[MapLine],
    scratch: u64,
    attrs: &HashMap<u64, u32>,
    reopen: &dyn Fn(&str) -> bool,
) -> std::io::Result<Vec<Region>> {
    capture_regions_by(pid, maps, scratch, attrs, reopen, true)
}

/// [`capture_regions`], with the kernel's page ranges (`scan`) or page by page.
fn capture_regions_by(
    pid: i32,
    maps: &[MapLine],
    scratch: u64,
    attrs: &HashMap<u64, u32>,
    reopen: &dyn Fn(&str) -> bool,
    scan: bool,
) -> std::io::Result<Vec<Region>> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    let pagemap = std::fs::File::open(format!("/proc/{pid}/pagemap"))?;
    let mut out = Vec::new();
    // Pagemap is read in slices of this many entries, so a huge reservation
    // (PROT_NONE address space kept by a JIT or an allocator) costs no huge buffer.
    const SLICE: u64 = 1 << 16;
    let mut raw = vec![0u8; (SLICE * 8) as usize];
    for m in maps {
        if is_special(&m.path) || m.start == scratch {
            continue;
        }
        let npages = (m.end - m.start) / PAGE;
        if is_shmem(m) {
            out.push(shared_region(pid, m, attrs)?);
            continue;
        }
        if is_shared_file(m, attrs) {
            // Its dirty pages go to the file, which the destination maps.
            let f = std::fs::File::open(format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end))?;
            f.sync_data()?;
            let a = attrs.get(&m.start).copied().unwrap_or(0);
            out.push(Region {
                start: m.start,
                end: m.end,
                prot: prot_of(m),
                kind: RegionKind::SharedFile {
                    path: m.path.clone(),
                    offset: m.offset,
                    maywrite: a & ATTR_MAYWRITE != 0 || m.write,
                },
                runs: Vec::new(),
                guards: Vec::new(),
                attrs: a,
            });
            continue;
        }
        let kind = match m.path.as_str() {
            "[heap]" => RegionKind::Heap,
            "[stack]" => RegionKind::Stack,
            p if p.starts_with('/') && !p.ends_with(" (deleted)") && !p.starts_with("/memfd:") && reopen(p) => {
                RegionKind::File { path: p.to_string(), offset: m.offset }
            }
            _ => RegionKind::Anon,
        };
        // Every page with content travels, whatever the region's protection
        // now: a PROT_NONE region may hold data written before it was
        // protected (allocators, garbage collectors and JITs do this).
        let file_backed_copy = m.path.starts_with('/') && !matches!(kind, RegionKind::File { .. });
        // Pages come in order: their runs are built as they come.
        let mut want: Vec<(u64, u64)> = Vec::new();
        let mut guard: Vec<(u64, u64)> = Vec::new();
        let add = |runs: &mut Vec<(u64, u64)>, i: u64, n: u64| match runs.last_mut() {
            Some((f, k)) if *f + *k == i => *k += n,
            _ => runs.push((i, n)),
        };
        // The fast way: the kernel's ranges of present, swapped and guard
        // pages (PAGEMAP_SCAN); else page by page below.
        let mut scanned = false;
        if scan && !file_backed_copy {
            let mut ranges = Vec::new();
            let want_cats = sys::PAGE_IS_PRESENT | sys::PAGE_IS_SWAPPED | sys::PAGE_IS_GUARD;
            let ret = want_cats | sys::PAGE_IS_FILE;
            if sys::pagemap_ranges(pagemap.as_raw_fd(), m.start, m.end, want_cats, ret, &mut ranges).is_ok() {
                for (a, l, c) in ranges {
                    let (f, n) = ((a - m.start) / PAGE, l / PAGE);
                    let (present, swapped) = (c & sys::PAGE_IS_PRESENT != 0, c & sys::PAGE_IS_SWAPPED != 0);
                    if c & sys::PAGE_IS_GUARD != 0 {
                        add(&mut guard, f, n);
                        continue;
                    }
                    let travels = match kind {
                        RegionKind::File { .. } => present && c & sys::PAGE_IS_FILE == 0,
                        _ => present || swapped,
                    };
                    if travels {
                        add(&mut want, f, n);
                    }
                }
                scanned = true;
            }
        }
        let mut first = 0u64;
        while !scanned && first < npages {
            let n = SLICE.min(npages - first);
            let raw = &mut raw[..(n * 8) as usize];
            pagemap.read_exact_at(raw, (m.start / PAGE + first) * 8)?;
            for (k, e) in raw.chunks_exact(8).enumerate() {
                let i = first + k as u64;
                let e = u64::from_le_bytes(e.try_into().unwrap_or([0; 8]));
                let present = e & (1 << 63) != 0;
                let swapped = e & (1 << 62) != 0;
                let file_page = e & (1 << 61) != 0;
                if e & PM_GUARD_REGION != 0 {
                    add(&mut guard, i, 1);
                    continue;
                }
                let travels = match kind {
                    // A reopened file: only pages that became private copies.
                    RegionKind::File { .. } => present && !file_page,
                    // A file we cannot reopen there: all of it.
                    _ if file_backed_copy => true,
                    _ => present || swapped,
                };
                if travels {
                    add(&mut want, i, 1);
                }
            }
            first += n;
        }
        out.push(Region {
            start: m.start,
            end: m.end,
            prot: prot_of(m),
            kind,
            runs: want,
            guards: guard,
            attrs: attrs.get(&m.start).copied().unwrap_or(0),
        });
    }
    Ok(out)
}

/// A region mapping a shared memory object: every page of it that holds
/// data travels, whether this process has touched it or not.
fn shared_region(pid: i32, m: &MapLine, attrs: &HashMap<u64, u32>) -> std::io::Result<Region> {
    use std::os::unix::io::AsRawFd;
    let o = open_object(pid, m).map_err(std::io::Error::other)?;
    let len = m.end - m.start;
    let sysv = m.path.starts_with("/SYSV").then_some(m.inode as i32);
    // A SysV segment's file cannot seek for data: all of it travels.
    let data = if sysv.is_some() {
        vec![(m.offset, m.offset + len)]
    } else {
        sys::data_ranges(o.file.as_raw_fd(), m.offset, m.offset + len)?
    };
    let want = data.iter().flat_map(|&(a, b)| (a - m.offset) / PAGE..(b - m.offset).div_ceil(PAGE)).collect();
    let mut guards = Vec::new();
    {
        use std::os::unix::fs::FileExt;
        let pm = std::fs::File::open(format!("/proc/{pid}/pagemap"))?;
        let mut raw = vec![0u8; (len / PAGE).min(1 << 16) as usize * 8];
        let mut first = 0u64;
        while first < len / PAGE {
            let n = (len / PAGE - first).min(1 << 16);
            let raw = &mut raw[..(n * 8) as usize];
            pm.read_exact_at(raw, (m.start / PAGE + first) * 8)?;
            for (k, e) in raw.chunks_exact(8).enumerate() {
                if u64::from_le_bytes(e.try_into().unwrap_or([0; 8])) & PM_GUARD_REGION != 0 {
                    guards.push(first + k as u64);
                }
            }
            first += n;
        }
    }
    Ok(Region {
        start: m.start,
        end: m.end,
        prot: prot_of(m),
        kind: RegionKind::Shared {
            id: o.id,
            size: o.size,
            offset: m.offset,
            memfd: o.memfd,
            seals: o.seals,
            sysv,
            owner: true,
            fds: o.fds,
            // At a guest, `HomeRefs::mark` names home's inode instead.
            home: o.id,
        },
        runs: runs_of(want),
        guards: runs_of(guards),
        attrs: attrs.get(&m.start).copied().unwrap_or(0),
    })
}

/// In the image of gang member `pid` (of `gang`), keep the pages of only
/// the shared memory objects it owns ([`crate::gang::owns`]): the owner's
/// pages fill the one object every member maps where the gang arrives.
/// A sealed memfd shared in a gang is refused (its seals would be lost).
/// Only in an image read once every member is frozen (a final image): the
/// owner's pages then hold what every member sees.
pub fn keep_owned(img: &mut Image, pid: i32, gang: &[i32]) -> std::result::Result<(), String> {
    keep_shared_where(img, |id, sysv| crate::gang::owns(pid, gang, sysv.map_or(id, |s| s as u64)))
}

/// In a gang member's pre-copy: no shared memory object's pages. Members'
/// pre-copies are laid out one by one while the others still run (and one
/// may end before its freeze and never send more), so none of them may
/// write an object the gang shares, or empty it: the owner's final image,
/// read once every member is frozen, fills it ([`keep_owned`]).
pub fn keep_no_shared(img: &mut Image) -> std::result::Result<(), String> {
    keep_shared_where(img, |_, _| false)
}

fn keep_shared_where(img: &mut Image, keep: impl Fn(u64, Option<i32>) -> bool) -> std::result::Result<(), String> {
    for r in img.regions.iter_mut() {
        let RegionKind::Shared { id, seals, sysv, owner, .. } = &mut r.kind else { continue };
        if *seals != 0 && *seals != libc::F_SEAL_SEAL as u32 {
            return Err(format!("it shares a sealed memfd at {:#x} with its gang, which om does not move", r.start));
        }
        if !keep(*id, *sysv) {
            *owner = false;
            r.runs.clear();
        }
    }
    Ok(())
}

/// What a guest's shared memory objects are at home: by the object's
/// inode here, the SysV segment it is there (if one) and the fds the
/// process holds on it there (kept by the deputy). Read from the guest's
/// layout once `img` is rebuilt in it; a capture names them again
/// ([`HomeRefs::mark`]), so the memory goes home as that segment, or into
/// the object those fds hold.
#[derive(Clone, Debug, Default)]
pub struct HomeRefs(Vec<(u64, Option<i32>, Vec<i32>, u64)>);

impl HomeRefs {
    pub fn of(pid: i32, img: &Image) -> HomeRefs {
        let Ok(maps) = procfs::maps(pid) else { return HomeRefs::default() };
        HomeRefs(
            img.regions
                .iter()
                .filter_map(|r| match &r.kind {
                    RegionKind::Shared { sysv, fds, home, .. } if sysv.is_some() || *home != 0 => maps
                        .iter()
                        .find(|m| m.start == r.start && is_shmem(m))
                        .map(|m| (m.inode, *sysv, fds.clone(), *home)),
                    _ => None,
                })
                .collect(),
        )
    }

    /// Name the home objects again in an image the guest's layout gave.
    pub fn mark(&self, img: &mut Image) {
        for r in img.regions.iter_mut() {
            if let RegionKind::Shared { id, sysv, fds, home, .. } = &mut r.kind {
                match self.0.iter().find(|(ino, _, _, _)| ino == id) {
                    Some((_, s, f, h)) => {
                        *sysv = *s;
                        fds.clone_from(f);
                        *home = *h;
                    }
                    // Made away: home has no such object.
                    None => *home = 0,
                }
            }
        }
    }

    /// Whether home fd `fd` is one on memory that moved with the process
    /// (its calls must run at home, where that memory is again).
    pub fn holds(&self, fd: i32) -> bool {
        self.0.iter().any(|(_, _, f, _)| f.contains(&fd))
    }

    /// Home fd `fd` was closed.
    pub fn closed(&mut self, fd: i32) {
        for (_, _, f, _) in self.0.iter_mut() {
            f.retain(|&x| x != fd);
        }
    }
}

/// Pagemap bit of a guard page (MADV_GUARD_INSTALL, Linux 6.13+).
const PM_GUARD_REGION: u64 = 1 << 58;
/// madvise advice that installs guard pages.
const MADV_GUARD_INSTALL: u64 = 102;

/// How a process's pages are read.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ReadMode {
    /// It may share pages copy-on-write (a process at home shares them with
    /// its parent and children): through /proc/PID/mem, which does not pin
    /// them. process_vm_readv pins each page, and the kernel first gives the
    /// process a private copy of a shared one: the memory would double.
    Unpinned,
    /// It shares none (a guest): process_vm_readv, faster.
    Pinned,
}

/// Read page data of `pid` for a batch of runs into `buf` (which must be
/// large enough), whatever the pages' protection.
pub fn read_pages(pid: i32, runs: &[(u64, usize)], buf: &mut [u8], mode: ReadMode) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    if mode == ReadMode::Pinned {
        return read_pages_pinned(pid, runs, buf);
    }
    // Pages mapped by this process alone (or not at all) are pinned safely:
    // only present pages shared with another process go through /proc/PID/mem.
    let mem = std::fs::File::open(format!("/proc/{pid}/mem"))?;
    let pagemap = std::fs::File::open(format!("/proc/{pid}/pagemap"))?;
    let mut entries = Vec::new();
    let mut off = 0usize;
    for &(a, l) in runs {
        if a % PAGE != 0 || l % PAGE as usize != 0 {
            mem.read_exact_at(&mut buf[off..off + l], a)?;
            off += l;
            continue;
        }
        let n = l / PAGE as usize;
        entries.resize(n * 8, 0);
        pagemap.read_exact_at(&mut entries, a / PAGE * 8)?;
        let shared = |k: usize| {
            let e = u64::from_le_bytes(entries[k * 8..k * 8 + 8].try_into().unwrap_or([0; 8]));
            e >> 63 & 1 == 1 && e >> 56 & 1 == 0
        };
        let mut k = 0;
        while k < n {
            let kind = shared(k);
            let first = k;
            while k < n && shared(k) == kind {
                k += 1;
            }
            let (at, len) = (a + first as u64 * PAGE, (k - first) * PAGE as usize);
            let piece = &mut buf[off + first * PAGE as usize..off + first * PAGE as usize + len];
            if kind {
                mem.read_exact_at(piece, at)?;
            } else {
                read_pages_pinned(pid, &[(at, len)], piece)?;
            }
        }
        off += l;
    }
    Ok(())
}

/// process_vm_readv; whatever it cannot read (pages without PROT_READ) is
/// read through /proc/PID/mem, which ignores protection.
fn read_pages_pinned(pid: i32, runs: &[(u64, usize)], buf: &mut [u8]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut mem: Option<std::fs::File> = None;
    let mut left: Vec<(u64, usize)> = runs.to_vec();
    let mut off = 0usize;
    let mut i = 0usize;
    while i < left.len() {
        let total: usize = left[i..].iter().map(|r| r.1).sum();
        let n = sys::process_vm_readv(pid, &mut buf[off..off + total], &left[i..]).unwrap_or(0);
        // Skip what was read (it stops at the first piece it cannot read).
        let mut k = n;
        while k > 0 {
            let take = k.min(left[i].1);
            off += take;
            k -= take;
            left[i].0 += take as u64;
            left[i].1 -= take;
            if left[i].1 == 0 {
                i += 1;
            }
        }
        if i < left.len() {
            let (a, l) = left[i];
            let f = match &mem {
                Some(f) => f,
                None => mem.insert(std::fs::File::open(format!("/proc/{pid}/mem"))?),
            };
            // Read up to the end of this page through /proc/PID/mem, then try the fast path again.
            let piece = l.min((PAGE - a % PAGE) as usize);
            f.read_exact_at(&mut buf[off..off + piece], a)?;
            off += piece;
            left[i].0 += piece as u64;
            left[i].1 -= piece;
            if left[i].1 == 0 {
                i += 1;
            }
        }
    }
    Ok(())
}

/// Write page data for a batch of runs into `pid` (pages must be writable).
pub fn write_pages(pid: i32, runs: &[(u64, usize)], data: &[u8]) -> std::io::Result<()> {
    let mut done = 0;
    let mut runs_left: Vec<(u64, usize)> = runs.to_vec();
    while done < data.len() {
        let n = sys::process_vm_writev(pid, &data[done..], &runs_left)?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::WriteZero, "process_vm_writev wrote nothing"));
        }
        done += n;
        // Drop what was written from the front of the run list.
        let mut k = n;
        while k > 0 && !runs_left.is_empty() {
            if runs_left[0].1 <= k {
                k -= runs_left[0].1;
                runs_left.remove(0);
            } else {
                runs_left[0].0 += k as u64;
                runs_left[0].1 -= k;
                k = 0;
            }
        }
    }
    Ok(())
}

/// [`write_pages`], leaving alone the pages inside `kept` regions that
/// already hold the same bytes (so pages shared copy-on-write stay
/// shared). Returns how many were left alone.
pub fn write_pages_keeping(pid: i32, runs: &[(u64, usize)], data: &[u8], kept: &[(u64, u64)]) -> std::io::Result<u64> {
    let inside = |a: u64| kept.iter().any(|&(s, e)| a >= s && a < e);
    if !runs.iter().any(|r| inside(r.0)) {
        return write_pages(pid, runs, data).map(|_| 0);
    }
    let (mut to_write, mut bytes, mut same) = (Vec::new(), Vec::new(), 0u64);
    let mut cur = Vec::new();
    let mut off = 0usize;
    for &(a, l) in runs {
        let piece = &data[off..off + l];
        off += l;
        if !inside(a) || a % PAGE != 0 || l % PAGE as usize != 0 {
            to_write.push((a, l));
            bytes.extend_from_slice(piece);
            continue;
        }
        cur.resize(l, 0);
        read_pages(pid, &[(a, l)], &mut cur, ReadMode::Unpinned)?;
        for (k, (now, new)) in cur.chunks(PAGE as usize).zip(piece.chunks(PAGE as usize)).enumerate() {
            if now == new {
                same += 1;
                continue;
            }
            let at = a + k as u64 * PAGE;
            match to_write.last_mut() {
                Some((s, n)) if *s + *n as u64 == at => *n += PAGE as usize,
                _ => to_write.push((at, PAGE as usize)),
            }
            bytes.extend_from_slice(new);
        }
    }
    write_pages(pid, &to_write, &bytes)?;
    Ok(same)
}

/// Batches runs into chunks of at most `max_bytes` and 1024 pieces.
pub fn batch_runs(runs: impl Iterator<Item = (u64, usize)>, max_bytes: usize) -> Vec<Vec<(u64, usize)>> {
    let mut out = Vec::new();
    let mut cur: Vec<(u64, usize)> = Vec::new();
    let mut size = 0;
    for (mut a, mut l) in runs {
        while l > 0 {
            let take = l.min(max_bytes - size);
            cur.push((a, take));
            size += take;
            a += take as u64;
            l -= take;
            if size == max_bytes || cur.len() == 1024 {
                out.push(std::mem::take(&mut cur));
                size = 0;
            }
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Where the rebuilt process comes from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Target {
    /// A fresh process that has not run (a guest on a remote node).
    Fresh,
    /// The parked placeholder at home: vdso kept, mm fields still its own.
    Parked,
}

/// State between the layout phase and the finishing phase of a restore.
pub struct Restore {
    pub scratch: u64,
    file_fds: Vec<(String, u64)>,
    /// Regions mapped writable only so their pages could be written: (start, len, prot).
    made_writable: Vec<(u64, u64, u32)>,
    /// Regions a placeholder kept from before the move (they share pages
    /// copy-on-write with its children): (start, end). Pages are written
    /// into them only where they differ ([`write_pages_keeping`]).
    pub kept: Vec<(u64, u64)>,
    /// The shared memory objects made again, by their id in the image.
    shared: Vec<SharedMade>,
}

/// A shared memory object made again in the target: a memfd (its fd
/// there), or shared anonymous memory (a mapping of all of it at an
/// address no region uses, which each region duplicates with mremap).
#[derive(Clone, Copy, Debug)]
struct SharedMade {
    id: u64,
    fd: Option<u64>,
    /// (address, size) of the whole object's mapping, for shared anonymous memory.
    whole: (u64, u64),
    seals: u32,
}

fn free_in(ranges: &[(u64, u64)], lo: u64, len: u64) -> bool {
    ranges.iter().all(|&(s, e)| lo + len <= s || lo >= e)
}

/// Pick a scratch address free in both the image and the target's current layout.
fn pick_scratch(img: &Image, current: &[MapLine]) -> u64 {
    pick_free(&used_ranges(img, current), SCRATCH_LEN).unwrap_or(0x2000_0000)
}

/// The address ranges an image and a target's current layout use.
fn used_ranges(img: &Image, current: &[MapLine]) -> Vec<(u64, u64)> {
    let mut used: Vec<(u64, u64)> = img.regions.iter().map(|r| (r.start, r.end)).collect();
    used.push((img.vdso.0, img.vdso.0 + img.vdso.1));
    used.extend(current.iter().map(|m| (m.start, m.end)));
    used
}

/// A `len`-byte range free of every one in `used`, on a 64 GiB step down
/// from high in the address space (well away from where mmap places things).
fn pick_free(used: &[(u64, u64)], len: u64) -> Option<u64> {
    let mut a = 0x7e00_0000_0000u64;
    while a > 0x1000_0000 {
        if free_in(used, a, len) {
            return Some(a);
        }
        a -= 0x10_0000_0000;
    }
    None
}

/// Opens a mapped file for a target that may not open it itself (an
/// execute-only program of an ordinary user coming home) and installs the fd
/// in it: (tracee, scratch area, path) -> the fd number in the target.
pub type FileOpener = dyn Fn(&mut Tracee, u64, &str) -> Result<u64>;

/// Gives the target an fd on the shared memory object a region maps when
/// the object is one a gang shares (made once where the gang arrives):
/// (tracee, scratch area, region) -> the fd number in the target, or None
/// to make the object in the target itself.
pub type ObjectSource<'a> = dyn Fn(&mut Tracee, u64, &Region) -> Result<Option<u64>> + 'a;

/// Phase 1 of a restore: clear the target's layout and map every region of
/// the image, writable where pages will be written. `opener` is asked for a
/// file the target cannot open itself.
pub fn restore_layout(
    t: &mut Tracee,
    img: &Image,
    target: Target,
    parked_scratch: u64,
    opener: Option<&FileOpener>,
    objects: Option<&ObjectSource<'_>>,
) -> Result<Restore> {
    let pid = t.pid;
    let ioe = |what: &'static str| move |e: std::io::Error| TraceError::Io { pid, what, source: e };
    if target == Target::Parked {
        // The placeholder keeps its mlockall(MCL_FUTURE) from before the
        // move: the regions are laid out unlocked, locked again one by one
        // as the image says, and MCL_FUTURE set last (`restore_flags`).
        t.syscall(libc::SYS_munlockall, [0; 6])?;
    }
    let current = procfs::maps(pid).map_err(ioe("maps"))?;
    let image_ranges: Vec<(u64, u64)> = img.regions.iter().map(|r| (r.start, r.end)).collect();
    let scratch =
        if target == Target::Parked && parked_scratch != 0 && free_in(&image_ranges, parked_scratch, SCRATCH_LEN) {
            t.syscall_ip = parked_scratch;
            parked_scratch
        } else {
            let old = t.syscall_ip;
            let p = map_scratch(t, pick_scratch(img, &current))?;
            if target == Target::Parked && parked_scratch != 0 && old == parked_scratch {
                t.syscall_ok("munmap old scratch", libc::SYS_munmap, [parked_scratch, SCRATCH_LEN, 0, 0, 0, 0])?;
            }
            p
        };

    // Unmap everything except the scratch and (when it is already where the image wants it) the vdso.
    let cur_vdso = current
        .iter()
        .filter(|m| is_special(&m.path) && m.path != "[vsyscall]")
        .fold((u64::MAX, 0u64), |(lo, hi), m| (lo.min(m.start), hi.max(m.end)));
    let keep_vdso = cur_vdso.0 == img.vdso.0 && cur_vdso.1 - cur_vdso.0 == img.vdso.1;
    // The vdso is left out of the range unmaps and handled on its own below.
    let mut keep = vec![(scratch, scratch + SCRATCH_LEN)];
    if cur_vdso.0 != u64::MAX {
        keep.push(cur_vdso);
    }
    // At home: regions the placeholder kept (see [`park`]) that the image
    // still has as they were stay, with the pages they share with children.
    let kept: Vec<(u64, u64)> = if target == Target::Parked {
        img.regions.iter().filter(|r| current.iter().any(|m| still_there(r, m))).map(|r| (r.start, r.end)).collect()
    } else {
        Vec::new()
    };
    keep.extend(kept.iter().copied());
    keep.sort();
    let mut lo = 0x1000u64;
    for &(s, e) in &keep {
        if s > lo {
            t.syscall_ok("munmap", libc::SYS_munmap, [lo, s - lo, 0, 0, 0, 0])?;
        }
        lo = e;
    }
    if lo < TASK_SIZE {
        t.syscall_ok("munmap", libc::SYS_munmap, [lo, TASK_SIZE - lo, 0, 0, 0, 0])?;
    }
    if !keep_vdso && cur_vdso.0 != u64::MAX {
        // A kernel built with CONFIG_MSEAL_SYSTEM_MAPPINGS refuses to unmap the vdso.
        let r = t.syscall(libc::SYS_munmap, [cur_vdso.0, cur_vdso.1 - cur_vdso.0, 0, 0, 0, 0])?;
        if r == -(libc::EPERM as i64) {
            return Err(TraceError::Injected {
                pid,
                name: "unmapping the vdso (this kernel seals it: CONFIG_MSEAL_SYSTEM_MAPPINGS; om cannot rebuild processes on this node)",
                errno: libc::EPERM as i64,
            });
        }
    }
    if !keep_vdso {
        const ARCH_MAP_VDSO_64: u64 = 0x2003;
        t.syscall_ok("arch_prctl(ARCH_MAP_VDSO_64)", libc::SYS_arch_prctl, [ARCH_MAP_VDSO_64, img.vdso.0, 0, 0, 0, 0])?;
    }

    let path_at = scratch + 1024;
    let mut file_fds: Vec<(String, u64)> = Vec::new();
    // A pre-copy image has no mm fields: brk is moved in the final pass.
    if target == Target::Parked && img.mm.brk != 0 {
        move_brk(t, img)?;
    }
    let mut made_writable = Vec::new();
    let mut shared = Vec::new();
    let mut used = used_ranges(img, &current);
    used.push((scratch, scratch + SCRATCH_LEN));
    for r in &img.regions {
        if !kept.contains(&(r.start, r.end)) {
            let mut m = Mapper {
                home: target == Target::Parked,
                file_fds: &mut file_fds,
                path_at,
                made_writable: &mut made_writable,
                opener,
                objects,
            };
            m.map(t, r, &mut shared, &mut used)?;
            continue;
        }
        // Kept: what the image does not hold goes (zero, or the file's
        // page), as in a region mapped afresh; the rest is compared as it
        // is written.
        if is_sysv(r) && r.prot & libc::PROT_WRITE as u32 == 0 {
            // Attached read-only, it cannot have changed away.
            continue;
        }
        if matches!(r.kind, RegionKind::Shared { owner: false, .. }) {
            // Another member of its gang writes the segment's pages.
            continue;
        }
        // In a SysV segment a page the image lacks is a hole punched in it.
        let advice = if is_sysv(r) { libc::MADV_REMOVE } else { libc::MADV_DONTNEED };
        advise_gaps(t, r, advice)?;
        if r.prot & libc::PROT_WRITE as u32 == 0 {
            make_writable(t, r, &mut made_writable)?;
        }
    }
    Ok(Restore { scratch, file_fds, made_writable, kept, shared })
}

/// What mapping regions in a target needs: the files opened there, the
/// scratch address for paths, the regions made writable, and the opener.
struct Mapper<'a> {
    /// The target is the placeholder at home.
    home: bool,
    file_fds: &'a mut Vec<(String, u64)>,
    path_at: u64,
    made_writable: &'a mut Vec<(u64, u64, u32)>,
    opener: Option<&'a FileOpener>,
    objects: Option<&'a ObjectSource<'a>>,
}

impl Mapper<'_> {
    /// Map one region of an image in the target, writable if pages will be
    /// written. A shared memory object is made the first time a region of
    /// it is mapped (`shared`); a whole shared anonymous object is mapped
    /// where nothing in `used` is.
    fn map(
        &mut self,
        t: &mut Tracee,
        r: &Region,
        shared: &mut Vec<SharedMade>,
        used: &mut Vec<(u64, u64)>,
    ) -> Result<()> {
        if let RegionKind::Shared { id, size, offset, memfd, seals, sysv, .. } = &r.kind {
            if sysv.is_some() && self.home {
                return Err(TraceError::Injected {
                    pid: t.pid,
                    name: "SysV segment no longer attached at home",
                    errno: libc::EIDRM as i64,
                });
            }
            let len = r.end - r.start;
            let prot = (r.prot | if r.runs.is_empty() { 0 } else { libc::PROT_WRITE as u32 }) as u64;
            if prot != r.prot as u64 {
                self.made_writable.push((r.start, len, r.prot));
            }
            let made = match shared.iter().find(|s| s.id == *id) {
                Some(s) => *s,
                None => {
                    let given = match self.objects {
                        Some(src) => src(t, self.path_at, r)?,
                        None => None,
                    };
                    let s = match given {
                        // A gang's object: its seals are refused before a move.
                        Some(fd) => SharedMade { id: *id, fd: Some(fd), whole: (0, 0), seals: 0 },
                        None => make_shared(t, *id, *size, memfd.as_deref(), *seals, self.path_at, used)?,
                    };
                    shared.push(s);
                    s
                }
            };
            map_shared(t, r.start, len, prot, *offset, &made)?;
            // An object given (home's, or a gang's) holds what others left.
            if made.fd.is_some() && fills_object(r) {
                punch_holes(t, r, self.made_writable)?;
            }
            return Ok(());
        }
        map_region(t, r, self.file_fds, self.path_at, self.made_writable, self.opener)
    }
}

/// Make a shared memory object again in the target: a memfd of `size`
/// bytes named `memfd` (with sealing allowed unless its only seal is
/// F_SEAL_SEAL, as for a memfd made without MFD_ALLOW_SEALING; the seals
/// are added once its pages are written), or shared anonymous memory of
/// `size` bytes mapped whole where nothing in `used` is.
fn make_shared(
    t: &mut Tracee,
    id: u64,
    size: u64,
    memfd: Option<&str>,
    seals: u32,
    path_at: u64,
    used: &mut Vec<(u64, u64)>,
) -> Result<SharedMade> {
    let size = size.div_ceil(PAGE) * PAGE;
    let Some(name) = memfd else {
        let len = size.max(PAGE);
        let Some(at) = pick_free(used, len) else {
            return Err(TraceError::Injected {
                pid: t.pid,
                name: "room for shared memory",
                errno: libc::ENOMEM as i64,
            });
        };
        let flags = libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE | libc::MAP_NORESERVE;
        let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
        t.syscall_ok("mmap shared memory", libc::SYS_mmap, [at, len, prot, flags as u64, u64::MAX, 0])?;
        used.push((at, at + len));
        return Ok(SharedMade { id, fd: None, whole: (at, len), seals: 0 });
    };
    let mut c: Vec<u8> = name.bytes().take(249).collect();
    c.push(0);
    t.poke(path_at, &c)?;
    let allow = if seals == libc::F_SEAL_SEAL as u32 { 0 } else { libc::MFD_ALLOW_SEALING };
    let fd = t.syscall_ok(
        "memfd_create",
        libc::SYS_memfd_create,
        [path_at, (libc::MFD_CLOEXEC | allow) as u64, 0, 0, 0, 0],
    )?;
    t.syscall_ok("ftruncate memfd", libc::SYS_ftruncate, [fd, size, 0, 0, 0, 0])?;
    Ok(SharedMade { id, fd: Some(fd), whole: (0, 0), seals })
}

/// Map `len` bytes at `offset` of a shared memory object made again at `start`.
fn map_shared(t: &mut Tracee, start: u64, len: u64, prot: u64, offset: u64, s: &SharedMade) -> Result<()> {
    match s.fd {
        Some(fd) => {
            let flags = (libc::MAP_SHARED | libc::MAP_FIXED) as u64;
            t.syscall_ok("mmap memfd", libc::SYS_mmap, [start, len, prot, flags, fd, offset]).map(drop)
        }
        None => {
            // mremap of a shared mapping with old size 0 maps the same
            // pages again: this region becomes the object's [offset, offset+len).
            let flags = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
            t.syscall_ok("mremap shared memory", libc::SYS_mremap, [s.whole.0 + offset, 0, len, flags, start, 0])?;
            t.syscall_ok("mprotect shared memory", libc::SYS_mprotect, [start, len, prot, 0, 0, 0]).map(drop)
        }
    }
}

/// Map one region of an image in the target, writable if pages will be written.
fn map_region(
    t: &mut Tracee,
    r: &Region,
    file_fds: &mut Vec<(String, u64)>,
    path_at: u64,
    made_writable: &mut Vec<(u64, u64, u32)>,
    opener: Option<&FileOpener>,
) -> Result<()> {
    let len = r.end - r.start;
    let writable = if r.runs.is_empty() { 0 } else { libc::PROT_WRITE as u32 };
    let prot = (r.prot | writable) as u64;
    if writable != 0 && r.prot & libc::PROT_WRITE as u32 == 0 {
        made_writable.push((r.start, len, r.prot));
    }
    match &r.kind {
        RegionKind::Shared { .. } => unreachable!("shared regions are mapped by Mapper::map"),
        RegionKind::SharedFile { path, offset, maywrite } => {
            if !is_consistent(path) {
                return Err(TraceError::Injected {
                    pid: t.pid,
                    name: "a shared writable file mapping whose path is not cluster-consistent on this node",
                    errno: libc::EXDEV as i64,
                });
            }
            let mut c = path.as_bytes().to_vec();
            c.push(0);
            t.poke(path_at, &c)?;
            let mode = if *maywrite { libc::O_RDWR } else { libc::O_RDONLY };
            let args = [libc::AT_FDCWD as u64, path_at, (mode | libc::O_CLOEXEC) as u64, 0, 0, 0];
            let fd = t.syscall_ok("open shared mapped file", libc::SYS_openat, args)?;
            let flags = (libc::MAP_SHARED | libc::MAP_FIXED) as u64;
            let r = t.syscall(libc::SYS_mmap, [r.start, len, prot, flags, fd, *offset])?;
            t.syscall(libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
            if r < 0 {
                return Err(TraceError::Injected { pid: t.pid, name: "mmap shared file", errno: -r });
            }
        }
        RegionKind::File { path, offset } => {
            let fd = match file_fds.iter().find(|(p, _)| p == path) {
                Some((_, fd)) => *fd,
                None => {
                    let mut c = path.as_bytes().to_vec();
                    c.push(0);
                    t.poke(path_at, &c)?;
                    let args = [libc::AT_FDCWD as u64, path_at, (libc::O_RDONLY | libc::O_CLOEXEC) as u64, 0, 0, 0];
                    let r = t.syscall(libc::SYS_openat, args)?;
                    let fd = match (r, opener) {
                        (r, _) if r >= 0 => r as u64,
                        // Execute-only (mode 0111): the process may map it but not open it.
                        (r, Some(open)) if r == -(libc::EACCES as i64) => open(t, path_at & !(PAGE - 1), path)?,
                        (r, _) => return Err(TraceError::Injected { pid: t.pid, name: "open mapped file", errno: -r }),
                    };
                    file_fds.push((path.clone(), fd));
                    fd
                }
            };
            t.syscall_ok(
                "mmap file",
                libc::SYS_mmap,
                [r.start, len, prot, (libc::MAP_PRIVATE | libc::MAP_FIXED) as u64, fd, *offset],
            )?;
        }
        kind => {
            let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED;
            if *kind == RegionKind::Stack {
                flags |= libc::MAP_GROWSDOWN;
            }
            // As it was made; and a reservation of address space over 1 GiB
            // (a JIT's, an allocator's) is never charged while it is
            // written here.
            if r.attrs & ATTR_NORESERVE != 0 || (r.prot == 0 && len > 1 << 30) {
                flags |= libc::MAP_NORESERVE;
            }
            t.syscall_ok("mmap", libc::SYS_mmap, [r.start, len, prot, flags as u64, u64::MAX, 0])?;
            // MADV_HUGEPAGE would make writing the image cheaper, but it
            // cannot be undone: only where the process had asked for it
            // (restore_attrs sets it too).
            if r.attrs & ATTR_HUGEPAGE != 0 && !r.runs.is_empty() {
                let _ = t.syscall(libc::SYS_madvise, [r.start, len, libc::MADV_HUGEPAGE as u64, 0, 0, 0]);
            }
        }
    }
    Ok(())
}

/// The placeholder runs unprivileged, so its brk cannot be set by
/// PR_SET_MM_MAP: move it with brk itself (down to start_brk, then up), which
/// only works while nothing is mapped where the heap goes.
fn move_brk(t: &mut Tracee, img: &Image) -> Result<()> {
    t.syscall(libc::SYS_brk, [img.mm.start_brk, 0, 0, 0, 0, 0])?;
    let got = t.syscall(libc::SYS_brk, [img.mm.brk, 0, 0, 0, 0, 0])? as u64;
    if got != img.mm.brk {
        return Err(TraceError::Injected { pid: t.pid, name: "brk", errno: libc::ENOMEM as i64 });
    }
    Ok(())
}

/// Make region `r`, kept in place, writable while its pages are written
/// (if any travel), and note it in `made` to be protected again.
fn make_writable(t: &mut Tracee, r: &Region, made: &mut Vec<(u64, u64, u32)>) -> Result<()> {
    if r.runs.is_empty() {
        return Ok(());
    }
    let len = r.end - r.start;
    t.syscall_ok("mprotect", libc::SYS_mprotect, [r.start, len, (r.prot | libc::PROT_WRITE as u32) as u64, 0, 0, 0])?;
    made.push((r.start, len, r.prot));
    Ok(())
}

/// Whether a region may stay in a parked placeholder: private anonymous or
/// file memory, not locked (MADV_DONTNEED fails there) and without guards.
fn keepable(r: &Region) -> bool {
    matches!(r.kind, RegionKind::Anon | RegionKind::File { .. }) && r.attrs & ATTR_LOCKED == 0 && r.guards.is_empty()
        || is_sysv(r)
}

/// A region that is a SysV segment at home: the placeholder keeps it attached.
fn is_sysv(r: &Region) -> bool {
    matches!(r.kind, RegionKind::Shared { sysv: Some(_), .. })
}

/// Whether image region `r` is mapping `m` of a placeholder, as it was kept.
fn still_there(r: &Region, m: &MapLine) -> bool {
    let kind_same = match &r.kind {
        RegionKind::Anon => m.inode == 0 && (m.path.is_empty() || m.path.starts_with("[anon:")),
        RegionKind::File { path, offset } => m.path == *path && m.offset == *offset,
        RegionKind::Shared { sysv: Some(id), offset, .. } => {
            return m.path.starts_with("/SYSV")
                && m.inode == *id as u64
                && m.offset == *offset
                && m.start == r.start
                && m.end == r.end;
        }
        _ => false,
    };
    keepable(r) && kind_same && !m.shared && m.start == r.start && m.end == r.end && prot_of(m) == r.prot
}

/// Same mapping in two images (a region pre-copied can be kept). The heap
/// never counts as the same: it is rebuilt after brk moves (see [`move_brk`]),
/// so it always travels whole.
pub fn same_region(a: &Region, b: &Region) -> bool {
    a.start == b.start
        && a.end == b.end
        && a.prot == b.prot
        && same_kind(&a.kind, &b.kind)
        && a.guards == b.guards
        && a.kind != RegionKind::Heap
}

/// Same kind of mapping; whether an image fills a shared object
/// (`owner`) does not change the mapping (a gang's pre-copy never does).
fn same_kind(a: &RegionKind, b: &RegionKind) -> bool {
    let unowned = |k: &RegionKind| {
        let mut k = k.clone();
        if let RegionKind::Shared { owner, .. } = &mut k {
            *owner = false;
        }
        k
    };
    match (a, b) {
        (RegionKind::Shared { .. }, RegionKind::Shared { .. }) => unowned(a) == unowned(b),
        _ => a == b,
    }
}

/// Whether image region `r` fills a shared memory object (its pages are
/// the object's, and what it lacks is a hole there).
fn fills_object(r: &Region) -> bool {
    matches!(r.kind, RegionKind::Shared { owner: true, .. })
}

/// Region `r` fills a shared memory object that may hold other pages (the
/// object at home, or a gang's, laid out by members that do not fill it):
/// each page the image lacks becomes a hole, as where it was read. A SysV
/// segment attached read-only cannot be written, nor have changed away.
fn punch_holes(t: &mut Tracee, r: &Region, made: &mut Vec<(u64, u64, u32)>) -> Result<()> {
    if is_sysv(r) && r.prot & libc::PROT_WRITE as u32 == 0 {
        return Ok(());
    }
    let len = r.end - r.start;
    if r.prot & libc::PROT_WRITE as u32 == 0 && !made.iter().any(|&(s, l, _)| s == r.start && l == len) {
        t.syscall_ok(
            "mprotect",
            libc::SYS_mprotect,
            [r.start, len, (r.prot | libc::PROT_WRITE as u32) as u64, 0, 0, 0],
        )?;
        made.push((r.start, len, r.prot));
    }
    advise_gaps(t, r, libc::MADV_REMOVE)
}

/// madvise(`advice`) each run of pages of region `r` its image lacks.
fn advise_gaps(t: &mut Tracee, r: &Region, advice: i32) -> Result<()> {
    let npages = (r.end - r.start) / PAGE;
    let mut at = 0u64;
    for &(first, n) in r.runs.iter().chain(std::iter::once(&(npages, 0))) {
        if first > at {
            t.syscall_ok(
                "madvise",
                libc::SYS_madvise,
                [r.start + at * PAGE, (first - at) * PAGE, advice as u64, 0, 0, 0],
            )?;
        }
        at = first + n;
    }
    Ok(())
}

/// Phase 1 again, after a pre-copy: the target already holds `pre`'s layout
/// and pages. Keep the regions that did not change, drop the ones that went
/// away, map the new ones.
pub fn restore_layout_again(
    t: &mut Tracee,
    img: &Image,
    pre: &Image,
    rs: Restore,
    target: Target,
    opener: Option<&FileOpener>,
    objects: Option<&ObjectSource<'_>>,
) -> Result<Restore> {
    let Restore { scratch, mut file_fds, made_writable, mut kept, mut shared } = rs;
    kept.retain(|&(s, e)| {
        img.regions.iter().any(|r| r.start == s && r.end == e && pre.regions.iter().any(|q| same_region(r, q)))
    });
    t.syscall_ip = scratch;
    if img.regions.iter().any(|r| r.start < scratch + SCRATCH_LEN && scratch < r.end) {
        return Err(TraceError::Injected {
            pid: t.pid,
            name: "scratch area now used by the process",
            errno: libc::EEXIST as i64,
        });
    }
    for q in &pre.regions {
        if !img.regions.iter().any(|r| same_region(r, q)) {
            t.syscall_ok("munmap", libc::SYS_munmap, [q.start, q.end - q.start, 0, 0, 0, 0])?;
        }
    }
    if target == Target::Parked {
        move_brk(t, img)?;
    }
    // Regions kept keep their writable state from the first pass.
    let mut still_writable: Vec<(u64, u64, u32)> = made_writable
        .into_iter()
        .filter(|&(s, l, _)| img.regions.iter().any(|r| r.start == s && r.end - r.start == l))
        .collect();
    let path_at = scratch + 1024;
    let current = procfs::maps(t.pid).map_err(|e| TraceError::Io { pid: t.pid, what: "maps", source: e })?;
    let mut used = used_ranges(img, &current);
    used.push((scratch, scratch + SCRATCH_LEN));
    // A whole shared anonymous object from the first pass must not lie
    // where the final image has a region.
    if shared
        .iter()
        .any(|s| s.whole.1 != 0 && img.regions.iter().any(|r| r.start < s.whole.0 + s.whole.1 && s.whole.0 < r.end))
    {
        return Err(TraceError::Injected {
            pid: t.pid,
            name: "shared memory area now used by the process",
            errno: libc::EEXIST as i64,
        });
    }
    for r in &img.regions {
        match pre.regions.iter().find(|q| same_region(r, q)) {
            Some(q) => {
                let was_writable = q.prot & libc::PROT_WRITE as u32 != 0 || !q.runs.is_empty();
                if !was_writable {
                    make_writable(t, r, &mut still_writable)?;
                }
                // A gang member's pre-copy left its object as it was: the
                // final image fills it.
                if fills_object(r) && !fills_object(q) {
                    punch_holes(t, r, &mut still_writable)?;
                }
            }
            None => {
                let mut m = Mapper {
                    home: target == Target::Parked,
                    file_fds: &mut file_fds,
                    path_at,
                    made_writable: &mut still_writable,
                    opener,
                    objects,
                };
                m.map(t, r, &mut shared, &mut used)?
            }
        }
    }
    Ok(Restore { scratch, file_fds, made_writable: still_writable, kept, shared })
}

/// Add the seals of each memfd made again, now that its pages are
/// written. F_SEAL_WRITE needs no writable shared mapping of it: its
/// regions are unmapped, the seals added, and the regions mapped again
/// with their own protection (the kernel then leaves them unable to
/// become writable, as at home).
fn seal_shared(t: &mut Tracee, img: &Image, rs: &Restore) -> Result<()> {
    for s in &rs.shared {
        let (Some(fd), seals) = (s.fd, s.seals & !(libc::F_SEAL_SEAL as u32)) else { continue };
        let add = if s.seals == libc::F_SEAL_SEAL as u32 { 0 } else { s.seals };
        if add == 0 {
            continue;
        }
        let mine = || {
            img.regions.iter().filter_map(|r| match r.kind {
                RegionKind::Shared { id, offset, .. } if id == s.id => Some((r, offset)),
                _ => None,
            })
        };
        let write = seals & libc::F_SEAL_WRITE as u32 != 0;
        if write {
            for (r, _) in mine() {
                t.syscall_ok("munmap memfd", libc::SYS_munmap, [r.start, r.end - r.start, 0, 0, 0, 0])?;
            }
        }
        t.syscall_ok("fcntl(F_ADD_SEALS)", libc::SYS_fcntl, [fd, libc::F_ADD_SEALS as u64, add as u64, 0, 0, 0])?;
        if write {
            for (r, offset) in mine() {
                map_shared(t, r.start, r.end - r.start, r.prot as u64, offset, s)?;
            }
        }
    }
    Ok(())
}

/// Phase 3 of a restore (after the pages are written): protections, mm fields,
/// rseq, robust list, signals, limits, cwd, umask, name, registers.
/// The scratch area stays mapped; the caller removes it with [`unmap_scratch`].
pub fn restore_finish(t: &mut Tracee, img: &Image, target: Target, rs: &Restore, cwd: Option<&str>) -> Result<()> {
    let pid = t.pid;
    let data = rs.scratch + 1024;
    seal_shared(t, img, rs)?;
    for &(start, len, prot) in &rs.made_writable {
        t.syscall_ok("mprotect", libc::SYS_mprotect, [start, len, prot as u64, 0, 0, 0])?;
    }
    // Guard pages last: they replace whatever is mapped there.
    for r in &img.regions {
        for &(first, n) in &r.guards {
            t.syscall_ok(
                "madvise(MADV_GUARD_INSTALL)",
                libc::SYS_madvise,
                [r.start + first * PAGE, n * PAGE, MADV_GUARD_INSTALL, 0, 0, 0],
            )?;
        }
        restore_attrs(t, r)?;
    }
    if target == Target::Fresh {
        let exe_fd = if img.exe_reopen {
            let mut c = img.exe.as_bytes().to_vec();
            c.push(0);
            t.poke(data, &c)?;
            t.syscall_ok(
                "open exe",
                libc::SYS_openat,
                [libc::AT_FDCWD as u64, data, (libc::O_RDONLY | libc::O_CLOEXEC) as u64, 0, 0, 0],
            )?
        } else {
            u32::MAX as u64
        };
        let m = &img.mm;
        let auxv_at = data + 256;
        let mut map = Vec::with_capacity(104);
        for v in [
            m.start_code,
            m.end_code,
            m.start_data,
            m.end_data,
            m.start_brk,
            m.brk,
            m.start_stack,
            m.arg_start,
            m.arg_end,
            m.env_start,
            m.env_end,
            auxv_at,
        ] {
            map.extend_from_slice(&v.to_le_bytes());
        }
        map.extend_from_slice(&(img.auxv.len() as u32).to_le_bytes());
        map.extend_from_slice(&(exe_fd as u32).to_le_bytes());
        t.poke(data, &map)?;
        t.poke(auxv_at, &img.auxv)?;
        const PR_SET_MM: u64 = 35;
        const PR_SET_MM_MAP: u64 = 14;
        t.syscall_ok(
            "prctl(PR_SET_MM_MAP)",
            libc::SYS_prctl,
            [PR_SET_MM, PR_SET_MM_MAP, data, map.len() as u64, 0, 0],
        )?;
        if exe_fd != u32::MAX as u64 {
            t.syscall(libc::SYS_close, [exe_fd, 0, 0, 0, 0, 0])?;
        }
    }
    for (_, fd) in &rs.file_fds {
        t.syscall(libc::SYS_close, [*fd, 0, 0, 0, 0, 0])?;
    }
    for s in &rs.shared {
        match s.fd {
            Some(fd) => t.syscall(libc::SYS_close, [fd, 0, 0, 0, 0, 0])?,
            None => t.syscall(libc::SYS_munmap, [s.whole.0, s.whole.1, 0, 0, 0, 0])?,
        };
    }
    // Signal actions: handlers, ignored ones, and defaults for the rest the target had changed.
    let cur = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let cur_set = procfs::hex_mask(&procfs::status_field_in(&cur, "SigCgt").unwrap_or_default())
        | procfs::hex_mask(&procfs::status_field_in(&cur, "SigIgn").unwrap_or_default());
    for sig in 1..=64i32 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        let bit = 1u64 << (sig - 1);
        let act = if let Some(a) = img.actions.iter().find(|a| a.sig == sig) {
            *a
        } else if img.ignored & bit != 0 {
            SigAction { sig, handler: 1, flags: 0, restorer: 0, mask: 0 }
        } else if cur_set & bit != 0 {
            SigAction { sig, handler: 0, flags: 0, restorer: 0, mask: 0 }
        } else {
            continue;
        };
        let mut b = Vec::with_capacity(32);
        for v in [act.handler, act.flags, act.restorer, act.mask] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        t.poke(data, &b)?;
        t.syscall_ok("rt_sigaction", libc::SYS_rt_sigaction, [sig as u64, data, 0, 8, 0, 0])?;
    }
    // Set by the process itself (prlimit64 on pid 0): root without
    // CAP_SYS_RESOURCE may not change another user's limits.
    for (res, &(cur, max)) in img.rlimits.iter().enumerate() {
        let mut b = cur.to_le_bytes().to_vec();
        b.extend_from_slice(&max.to_le_bytes());
        t.poke(data, &b)?;
        let r = t.syscall(libc::SYS_prlimit64, [0, res as u64, data, 0, 0, 0])?;
        if r < 0 {
            tracing::warn!(pid, res, errno = -r, "a resource limit could not be restored");
        }
    }
    restore_flags(t, &img.flags)?;
    t.syscall(libc::SYS_umask, [img.umask as u64, 0, 0, 0, 0, 0])?;
    if let Some(dir) = cwd {
        let mut c = dir.as_bytes().to_vec();
        c.push(0);
        t.poke(data, &c)?;
        t.syscall(libc::SYS_chdir, [data, 0, 0, 0, 0, 0])?;
    }
    restore_thread(t, img.leader(), data)
}

/// Give the stopped thread `t` the state `th` (its calls injected through
/// its `syscall_ip`, using scratch memory at `data`): rseq, robust list,
/// sigaltstack, clear_child_tid, name, then mask, xstate and registers.
pub fn restore_thread(t: &mut Tracee, th: &ThreadState, data: u64) -> Result<()> {
    let (rp, rl, rsig) = th.rseq;
    if rp != 0 {
        t.syscall_ok("rseq", libc::SYS_rseq, [rp, rl as u64, 0, rsig as u64, 0, 0])?;
    }
    t.syscall_ok("set_robust_list", libc::SYS_set_robust_list, [th.robust.0, th.robust.1, 0, 0, 0, 0])?;
    let (sp, size, ss_flags) = th.altstack;
    if ss_flags & libc::SS_DISABLE == 0 {
        // stack_t: ss_sp, ss_flags (int, padded), ss_size. SS_ONSTACK only
        // says the thread was running on it; SS_AUTODISARM stays.
        let mut b = sp.to_le_bytes().to_vec();
        b.extend_from_slice(&((ss_flags & !libc::SS_ONSTACK) as u64).to_le_bytes());
        b.extend_from_slice(&size.to_le_bytes());
        t.poke(data, &b)?;
        t.syscall_ok("sigaltstack", libc::SYS_sigaltstack, [data, 0, 0, 0, 0, 0])?;
    }
    t.syscall(libc::SYS_set_tid_address, [th.clear_tid, 0, 0, 0, 0, 0])?;
    let mut name = th.comm.as_bytes().to_vec();
    name.truncate(15);
    name.push(0);
    t.poke(data, &name)?;
    t.syscall(libc::SYS_prctl, [libc::PR_SET_NAME as u64, data, 0, 0, 0, 0])?;
    t.set_sigmask(th.sigmask)?;
    t.set_xstate(&th.xstate)?;
    t.saved = th.regs();
    Ok(())
}

/// The clone flags of a thread as glibc and Rust's std make them (TLS,
/// tid addresses and the stack come from the state restored after).
const THREAD_FLAGS: u64 = (libc::CLONE_VM
    | libc::CLONE_FS
    | libc::CLONE_FILES
    | libc::CLONE_SIGHAND
    | libc::CLONE_THREAD
    | libc::CLONE_SYSVSEM) as u64;

/// In a fresh rebuild, create the image's other threads: each by a clone
/// injected into the leader `t` (which must trace clones, see
/// [`Tracee::adopt_traceme_child`]), then given its state. Returns them
/// stopped, in image order.
pub fn spawn_threads(t: &mut Tracee, img: &Image, data: u64) -> Result<Vec<Tracee>> {
    let mut out = Vec::with_capacity(img.threads.len().saturating_sub(1));
    for th in img.threads.iter().skip(1) {
        let tid = t.syscall_ok("clone a thread", libc::SYS_clone, [THREAD_FLAGS, 0, 0, 0, 0, 0])? as i32;
        let mut n = Tracee::adopt_clone(tid, t.syscall_ip)?;
        restore_thread(&mut n, th, data)?;
        out.push(n);
    }
    Ok(out)
}

/// Remove the scratch area: the last injected call.
pub fn unmap_scratch(t: &mut Tracee, scratch: u64) -> Result<()> {
    t.syscall_ip = scratch;
    t.syscall_ok("munmap scratch", libc::SYS_munmap, [scratch, SCRATCH_LEN, 0, 0, 0, 0]).map(drop)
}

/// Turn a frozen process into the parked placeholder: no fds, no memory but the
/// scratch (with the parking loop) and the vdso; it then waits in `pause()`.
pub fn park(t: &mut Tracee, img: &Image, scratch: u64) -> Result<()> {
    t.syscall_ip = scratch;
    t.syscall_ok("close_range", libc::SYS_close_range, [0, u32::MAX as u64, 0, 0, 0, 0])?;
    let (rp, rl, rsig) = img.leader().rseq;
    if rp != 0 {
        t.syscall_ok("rseq unregister", libc::SYS_rseq, [rp, rl as u64, 1, rsig as u64, 0, 0])?;
    }
    t.syscall_ok("set_robust_list", libc::SYS_set_robust_list, [0, 24, 0, 0, 0, 0])?;
    // A region with pages shared copy-on-write with another process (its
    // children) stays, holding only those pages: they cost nothing more
    // here, and a return home keeps them shared where they did not change.
    for r in &img.regions {
        if is_sysv(r) {
            // Kept attached: its key and id answer at home while the
            // process is away, and the pages come back into it.
            continue;
        }
        let exclusive = if keepable(r) { exclusive_pages(t.pid, r) } else { None };
        match exclusive {
            Some(runs) => {
                for (first, n) in runs {
                    t.syscall_ok(
                        "madvise(MADV_DONTNEED)",
                        libc::SYS_madvise,
                        [r.start + first * PAGE, n * PAGE, libc::MADV_DONTNEED as u64, 0, 0, 0],
                    )?;
                }
            }
            None => {
                t.syscall_ok("munmap", libc::SYS_munmap, [r.start, r.end - r.start, 0, 0, 0, 0])?;
            }
        }
    }
    // The timers run on in the guest (they were stopped here at capture);
    // their ids must be free when it comes home.
    crate::timers::remove(t, &img.timers, scratch + 1024)?;
    // Signals the controller lets through (stops) must take their default
    // action here: the handlers' code is no longer mapped.
    let dfl = [0u8; 32];
    t.poke(scratch + 1024, &dfl)?;
    for a in &img.actions {
        t.syscall_ok("rt_sigaction", libc::SYS_rt_sigaction, [a.sig as u64, scratch + 1024, 0, 8, 0, 0])?;
    }
    t.set_sigmask(0)?;
    let mut regs = img.leader().regs();
    regs.rip = scratch + PARK_OFFSET;
    regs.orig_rax = u64::MAX;
    t.saved = regs;
    Ok(())
}

/// Park another thread of the placeholder (the leader's [`park`] did the
/// process-wide part): no rseq or robust list, an empty mask, in the
/// parking loop of the scratch area at `scratch`. The kernel must not
/// write into memory that is gone: a clear_child_tid address is dropped
/// too (its thread id stays taken here while the thread runs away).
pub fn park_thread(t: &mut Tracee, th: &ThreadState, scratch: u64) -> Result<()> {
    t.syscall_ip = scratch;
    let (rp, rl, rsig) = th.rseq;
    if rp != 0 {
        // Unregistered already after a failed rebuild (EINVAL).
        t.syscall(libc::SYS_rseq, [rp, rl as u64, 1, rsig as u64, 0, 0])?;
    }
    t.syscall_ok("set_robust_list", libc::SYS_set_robust_list, [0, 24, 0, 0, 0, 0])?;
    t.syscall(libc::SYS_set_tid_address, [0, 0, 0, 0, 0, 0])?;
    t.set_sigmask(0)?;
    let mut regs = th.regs();
    regs.rip = scratch + PARK_OFFSET;
    regs.orig_rax = u64::MAX;
    t.saved = regs;
    Ok(())
}

/// Runs (first page, count) of the pages of region `r` of `pid` that are
/// present and mapped by this process alone (or swapped), when some other
/// page is present and shared with another process; None when none is.
fn exclusive_pages(pid: i32, r: &Region) -> Option<Vec<(u64, u64)>> {
    use std::os::unix::fs::FileExt;
    let pagemap = std::fs::File::open(format!("/proc/{pid}/pagemap")).ok()?;
    let npages = (r.end - r.start) / PAGE;
    let mut raw = vec![0u8; (npages.min(1 << 16) * 8) as usize];
    let (mut alone, mut shared) = (Vec::new(), false);
    let mut done = 0u64;
    while done < npages {
        let n = (npages - done).min(1 << 16);
        let buf = &mut raw[..(n * 8) as usize];
        pagemap.read_exact_at(buf, (r.start / PAGE + done) * 8).ok()?;
        for (k, e) in buf.chunks_exact(8).enumerate() {
            let e = u64::from_le_bytes(e.try_into().unwrap_or([0; 8]));
            let (present, swapped, only_ours) = (e >> 63 & 1 == 1, e >> 62 & 1 == 1, e >> 56 & 1 == 1);
            if swapped || present && only_ours {
                alone.push(done + k as u64);
            } else if present {
                shared = true;
            }
        }
        done += n;
    }
    shared.then(|| runs_of(alone))
}

/// Make a placeholder that a failed return home left half rebuilt parked
/// again: no fds, no memory but the scratch area at `scratch` (with the
/// parking loop) and the vdso, no rseq, robust list or timers, default
/// actions for the signals `img` catches, an empty mask, and waiting in `pause()`.
pub fn repark(t: &mut Tracee, img: &Image, scratch: u64) -> Result<()> {
    let pid = t.pid;
    t.syscall_ip = scratch;
    t.poke(scratch, &SCRATCH_CODE)?;
    let maps = procfs::maps(pid).map_err(|e| TraceError::Io { pid, what: "maps", source: e })?;
    // SysV segments stay attached (see `park`).
    let mut keep: Vec<(u64, u64)> = maps
        .iter()
        .filter(|m| is_special(&m.path) && m.path != "[vsyscall]" || m.path.starts_with("/SYSV"))
        .map(|m| (m.start, m.end))
        .collect();
    keep.push((scratch, scratch + SCRATCH_LEN));
    keep.sort();
    let mut lo = 0x1000u64;
    for &(s, e) in &keep {
        if s > lo {
            t.syscall_ok("munmap", libc::SYS_munmap, [lo, s - lo, 0, 0, 0, 0])?;
        }
        lo = lo.max(e);
    }
    if lo < TASK_SIZE {
        t.syscall_ok("munmap", libc::SYS_munmap, [lo, TASK_SIZE - lo, 0, 0, 0, 0])?;
    }
    // A pre-copy's image has no threads: nothing was registered then.
    let (rp, rl, rsig) = img.threads.first().map_or((0, 0, 0), |l| l.rseq);
    if rp != 0 {
        // Registered by a rebuild that got that far, or not at all (EINVAL).
        t.syscall(libc::SYS_rseq, [rp, rl as u64, 1, rsig as u64, 0, 0])?;
    }
    t.syscall_ok("close_range", libc::SYS_close_range, [0, u32::MAX as u64, 0, 0, 0, 0])?;
    t.syscall_ok("set_robust_list", libc::SYS_set_robust_list, [0, 24, 0, 0, 0, 0])?;
    // Timers a rebuild may have created.
    crate::timers::remove(t, &img.timers, scratch + 1024)?;
    t.poke(scratch + 1024, &[0u8; 32])?;
    for a in &img.actions {
        t.syscall_ok("rt_sigaction", libc::SYS_rt_sigaction, [a.sig as u64, scratch + 1024, 0, 8, 0, 0])?;
    }
    t.set_sigmask(0)?;
    // The registers it was parked with, in the loop of this scratch area.
    t.saved.rip = scratch + PARK_OFFSET;
    t.saved.orig_rax = u64::MAX;
    Ok(())
}

/// Undo [`capture`]'s changes when a migration fails: arm the timers it
/// stopped again, and drop the scratch area.
pub fn rollback(t: &mut Tracee, scratch: u64, timers: &crate::timers::Timers) -> Result<()> {
    let keep = t.saved;
    t.syscall_ip = scratch;
    let r = crate::timers::rearm(t, timers, scratch + 1024).and_then(|_| unmap_scratch(t, scratch));
    t.saved = keep;
    r
}

#[cfg(test)]
mod tests {
    /// The kernel's page ranges (PAGEMAP_SCAN) give the same regions as
    /// pagemap page by page: for a Python child with touched and untouched
    /// anonymous pages, a swapped-in file mapping with one written page,
    /// and guard pages.
    #[test]
    fn page_ranges_from_the_kernel_match_pagemap_page_by_page() {
        use std::io::BufRead;
        let script = "import mmap, sys, time\n\
                      m = mmap.mmap(-1, 256 * 4096)\n\
                      for i in range(0, 256, 3): m[i * 4096] = 1\n\
                      _ = m[200 * 4096 + 5]\n\
                      try: m.madvise(102, 100 * 4096, 4 * 4096)\n\
                      except OSError: pass\n\
                      f = open(sys.argv[1], 'w+b'); f.write(bytes(16 * 4096)); f.flush()\n\
                      p = mmap.mmap(f.fileno(), 16 * 4096, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE)\n\
                      _ = p[0]; p[5 * 4096] = 1\n\
                      print('ready', flush=True)\n\
                      time.sleep(60)\n";
        let file = std::env::temp_dir().join(format!("om-page-ranges-{}", std::process::id()));
        let mut child = std::process::Command::new("python3")
            .args(["-c", script, file.to_str().expect("path")])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 is needed for this test (apt-get install python3)");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("ready");
        assert_eq!(line.trim(), "ready", "the Python child failed");
        let pid = child.id() as i32;
        let maps = procfs::maps(pid).expect("maps");
        let attrs = region_attrs(pid);
        let reopen = |p: &str| p.starts_with("/usr") || p.starts_with(file.to_str().unwrap_or("-"));
        let fast = capture_regions_by(pid, &maps, 0, &attrs, &reopen, true).expect("scan");
        let slow = capture_regions_by(pid, &maps, 0, &attrs, &reopen, false).expect("pagemap");
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_file(&file);
        assert_eq!(fast.len(), slow.len());
        let written =
            fast.iter().find(|r| matches!(&r.kind, RegionKind::File { path, .. } if path.contains("om-page-ranges")));
        assert_eq!(written.map(|r| r.runs.clone()), Some(vec![(5, 1)]), "the written page of the file mapping");
        for (a, b) in fast.iter().zip(&slow) {
            assert_eq!((a.start, &a.runs, &a.guards), (b.start, &b.runs, &b.guards), "{:?}", a.kind);
        }
        assert!(fast.iter().any(|r| !r.guards.is_empty()), "no guard pages seen (Linux 6.13+ has them)");
    }

    use super::*;

    #[test]
    fn runs_merge_sorted_unique_pages() {
        assert_eq!(runs_of(vec![5, 1, 2, 3, 3, 9, 10]), vec![(1, 3), (5, 1), (9, 2)]);
        assert!(runs_of(Vec::new()).is_empty());
        let back: Vec<u64> = page_indices(&[(1, 3), (9, 2)]).collect();
        assert_eq!(back, vec![1, 2, 3, 9, 10]);
    }

    #[test]
    fn batches_respect_size_and_split_runs() {
        let b = batch_runs([(0x1000u64, 10 * 4096usize), (0x100000, 4096)].into_iter(), 4 * 4096);
        assert_eq!(b.len(), 3);
        assert!(b.iter().all(|x| x.iter().map(|r| r.1).sum::<usize>() <= 4 * 4096));
        let total: usize = b.iter().flatten().map(|r| r.1).sum();
        assert_eq!(total, 11 * 4096);
    }

    #[test]
    fn same_region_needs_same_bounds_protection_and_kind() {
        let r = Region {
            start: 0x1000,
            end: 0x3000,
            prot: 3,
            kind: RegionKind::Anon,
            runs: vec![(0, 1)],
            guards: vec![],
            attrs: 0,
        };
        let mut q = r.clone();
        q.runs.clear();
        assert!(same_region(&r, &q));
        q.end = 0x4000;
        assert!(!same_region(&r, &q));
        let mut k = r.clone();
        k.kind = RegionKind::Heap;
        assert!(!same_region(&r, &k));
        assert!(!same_region(&k, &k), "the heap always travels whole");
    }
}
