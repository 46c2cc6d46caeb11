//! Gangs: processes under om that share memory move together, to the
//! same node, in one freeze. A gang's members each move on a controller
//! of their own; [`Sync`] holds them at the points where all must be
//! (every one pre-copied, every one frozen, every one rebuilt), and fails
//! them all when one fails, so that no member runs on one node while
//! another shares its memory on another.

use crate::procfs;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long a member waits at a meeting point for the others.
pub const WAIT: Duration = Duration::from_secs(30);

/// Why a member left its gang's move: its process ended on the way (the
/// others go on without it). Sent as a RestoreFailed reason ahead of a
/// member's image, so that where the gang arrives it waits for one less.
pub const ENDED: &str = "the process ended on its way";

/// A meeting point for a gang's members.
pub struct Sync {
    state: Mutex<State>,
    cv: Condvar,
}

#[derive(Default)]
struct State {
    /// How many members take part (less those whose process ended).
    size: usize,
    /// How many have arrived at each point.
    arrived: HashMap<u32, usize>,
    failed: Option<String>,
}

impl Sync {
    pub fn new(size: usize) -> Sync {
        Sync { state: Mutex::new(State { size, ..State::default() }), cv: Condvar::new() }
    }

    /// How many members take part (as when it was made, for the offers).
    pub fn size(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).size
    }

    /// The sender of a member's image counted `n` members as it sent it
    /// (fewer when one ended before it could be sent): meet with no more.
    pub fn shrink_to(&self, n: usize) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if n > 0 && n < st.size {
            st.size = n;
            self.cv.notify_all();
        }
    }

    /// A member's process ended on the way: the others meet without it.
    pub fn leave(&self) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.size = st.size.saturating_sub(1);
        self.cv.notify_all();
    }

    /// Arrive at meeting point `at` and wait until every member has (Ok),
    /// or one failed or [`WAIT`] passed (Err, with why; the gang fails).
    pub fn arrive(&self, at: u32) -> Result<(), String> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        *st.arrived.entry(at).or_default() += 1;
        self.cv.notify_all();
        let until = Instant::now() + WAIT;
        loop {
            if let Some(why) = &st.failed {
                return Err(why.clone());
            }
            if st.arrived.get(&at).copied().unwrap_or(0) >= st.size {
                return Ok(());
            }
            let now = Instant::now();
            if now >= until {
                let why = format!("the other processes of its gang did not follow within {} s", WAIT.as_secs());
                st.failed = Some(why.clone());
                self.cv.notify_all();
                return Err(why);
            }
            st = self.cv.wait_timeout(st, until - now).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// A member failed: every other one fails at its next meeting point.
    pub fn fail(&self, why: &str) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.failed.is_none() {
            st.failed = Some(why.to_string());
        }
        self.cv.notify_all();
    }

    pub fn failed(&self) -> Option<String> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).failed.clone()
    }
}

/// The shared memory objects `pid` maps that another process could map
/// too: (inode, path as maps shows it). A SysV segment's inode is its id.
pub fn objects(pid: i32) -> BTreeSet<(u64, String)> {
    procfs::maps(pid)
        .map(|maps| maps.iter().filter(|m| crate::image::is_shmem(m)).map(|m| (m.inode, m.path.clone())).collect())
        .unwrap_or_default()
}

/// The gang of `pid`: it and every process that `is_member` accepts and
/// that shares a shared memory object with it, directly or through
/// another such process, sorted. Processes `is_member` rejects are not
/// followed (om refuses the move if one shares memory with the gang).
pub fn of(pid: i32, is_member: &dyn Fn(i32) -> bool) -> Vec<i32> {
    let mut gang = vec![pid];
    let mut want = objects(pid);
    if want.is_empty() {
        return gang;
    }
    // Every other candidate's objects, read once.
    let candidates: Vec<(i32, BTreeSet<(u64, String)>)> = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|&n| n != pid && is_member(n))
                .map(|n| (n, objects(n)))
                .filter(|(_, o)| !o.is_empty())
                .collect()
        })
        .unwrap_or_default();
    loop {
        let found: Vec<&(i32, BTreeSet<(u64, String)>)> =
            candidates.iter().filter(|(n, o)| !gang.contains(n) && !o.is_disjoint(&want)).collect();
        if found.is_empty() {
            break;
        }
        for (n, o) in found {
            gang.push(*n);
            want.extend(o.iter().cloned());
        }
    }
    gang.sort_unstable();
    gang
}

/// Whether `pid`, a member of `gang`, sends the pages of the object with
/// inode `ino`: the lowest pid of the gang that maps it does; the others
/// map the object it fills.
pub fn owns(pid: i32, gang: &[i32], ino: u64) -> bool {
    !gang.iter().any(|&q| {
        q < pid && procfs::maps(q).is_ok_and(|m| m.iter().any(|l| l.inode == ino && crate::image::is_shmem(l)))
    })
}

/// A gang arriving on this node (from home, or coming home): where its
/// members' rebuilds wait for each other before any of them runs, and the
/// shared memory objects it maps, made once here (in omd) and given to
/// every member.
pub struct Arriving {
    pub sync: Sync,
    objects: Mutex<HashMap<u64, std::fs::File>>,
    /// Members not yet done arriving (running, or failed).
    left: std::sync::atomic::AtomicUsize,
}

type Gangs = Mutex<Option<HashMap<u64, std::sync::Arc<Arriving>>>>;
static ARRIVING: Gangs = Mutex::new(None);

/// One member's part in an arriving gang; dropped when its rebuild is over
/// (the last one forgets the gang and its objects: the processes map them).
pub struct Member {
    token: u64,
    pub gang: std::sync::Arc<Arriving>,
}

impl Member {
    /// Join the gang that `token` names (`size` members), made by the first.
    pub fn join(token: u64, size: u32) -> Member {
        let mut all = ARRIVING.lock().unwrap_or_else(|p| p.into_inner());
        let gang = all
            .get_or_insert_with(HashMap::new)
            .entry(token)
            .or_insert_with(|| {
                std::sync::Arc::new(Arriving {
                    sync: Sync::new(size as usize),
                    objects: Mutex::new(HashMap::new()),
                    left: std::sync::atomic::AtomicUsize::new(size as usize),
                })
            })
            .clone();
        Member { token, gang }
    }

    /// The gang's object for shared region `r` (None for another kind of
    /// region), made here the first time: a memfd of its name, or shared
    /// anonymous memory, of its size. Returned as a new open file.
    pub fn object(&self, r: &crate::image::Region) -> std::io::Result<Option<std::fs::File>> {
        self.object_or(r, || None)
    }

    /// [`Member::object`], taking the object `existing` gives when there is
    /// one. It is not emptied here: a member's pre-copy, laid out while the
    /// others run, leaves it be, and the owner's final image punches what
    /// it lacks as it fills it (so a member that ends on its way, or comes
    /// late, changes nothing).
    pub fn object_or(
        &self,
        r: &crate::image::Region,
        existing: impl FnOnce() -> Option<std::fs::File>,
    ) -> std::io::Result<Option<std::fs::File>> {
        let crate::image::RegionKind::Shared { id, size, memfd, .. } = &r.kind else { return Ok(None) };
        let mut objects = self.gang.objects.lock().unwrap_or_else(|p| p.into_inner());
        if !objects.contains_key(id) {
            let f = match (existing(), memfd) {
                (Some(f), _) => f,
                (None, Some(name)) => std::fs::File::from(crate::sys::memfd(name)?),
                (None, None) => crate::sys::shmem_anon(*size)?,
            };
            f.set_len(*size)?;
            objects.insert(*id, f);
        }
        objects.get(id).map(|f| f.try_clone()).transpose()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering::SeqCst;
        if self.gang.left.fetch_sub(1, SeqCst) == 1 {
            let mut all = ARRIVING.lock().unwrap_or_else(|p| p.into_inner());
            all.as_mut().map(|m| m.remove(&self.token));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_meeting_point_lets_all_through_or_fails_them_all() {
        let s = std::sync::Arc::new(Sync::new(3));
        let hs: Vec<_> = (0..3)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || s.arrive(1))
            })
            .collect();
        for h in hs {
            assert_eq!(h.join().ok(), Some(Ok(())));
        }
        let s2 = s.clone();
        let h = std::thread::spawn(move || s2.arrive(2));
        std::thread::sleep(Duration::from_millis(50));
        s.fail("member 7 could not be frozen");
        assert_eq!(h.join().ok(), Some(Err("member 7 could not be frozen".to_string())));
        assert!(s.arrive(3).is_err());
    }
}
