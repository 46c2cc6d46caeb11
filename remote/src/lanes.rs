//! Serving a guest with several threads: one supervisor per thread (its
//! lane), each on its thread's own listener, so a call that waits at home
//! holds up only its own thread. The lanes share the link to the deputy:
//! requests carry the thread's home tid and are written whole under the
//! write lock; a router thread reads every answer and hands it to the lane
//! that waits for it (by request id). Other messages (the answers of a move
//! home) go to whichever lane takes the process home.
//!
//! Going home: one lane claims the move and holds the others (`hold`, set
//! under the write lock, so no request follows the GoingHome message). Each
//! other lane parks, leaving the notification it holds, if any, for the
//! mover, which answers them all with a restart code once the leader was
//! asked to stop (the threads then wait in their calls again, where a stop
//! reaches them). A deputy call a lane waits in ends with EINTR, since the
//! deputy wakes its workers when the guest leaves.

use crossbeam::channel::{Receiver, Sender};
use om_runtime::image::FileId;
use om_runtime::link::Link;
use om_runtime::wire::{self, Frame, Msg, SysRet};
use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

/// An answer from the deputy for one lane.
pub(crate) enum Reply {
    /// A call's answer, with its output when it came as a data frame.
    Sys(SysRet, Vec<u8>),
    Fd(Option<(String, FileId)>),
}

/// What a parked lane finds when it may go on.
pub(crate) enum Parked {
    /// The process went home (or ended): the lane ends.
    Done,
    /// The notification it left was answered (with a restart code).
    Answered,
    /// The move failed before it was answered: the lane serves it itself.
    Unanswered,
}

#[derive(Default)]
struct Park {
    /// Lanes parked now.
    count: usize,
    /// Notifications the parked lanes hold: (listener, id, guest tid).
    held: Vec<(RawFd, u64, i32)>,
}

/// What the lanes of one guest share.
pub(crate) struct Shared {
    waiting: Mutex<HashMap<u64, Sender<Reply>>>,
    /// Messages that answer no call (a move home's), in order.
    pub(crate) others: Receiver<Msg>,
    next_id: AtomicU64,
    /// A lane is taking the process home; the others park.
    pub(crate) hold: AtomicBool,
    mover: AtomicBool,
    /// The process went home: every lane ends.
    pub(crate) gone: AtomicBool,
    /// Lanes still serving (a lane whose thread ended leaves).
    pub(crate) live: AtomicUsize,
    park: Mutex<Park>,
    moved: Condvar,
}

impl Shared {
    /// Shared state for `lanes` lanes, and the router thread reading `reader`.
    pub(crate) fn start(
        lanes: usize,
        reader: std::io::BufReader<Link>,
        gpid: i32,
    ) -> std::io::Result<std::sync::Arc<Shared>> {
        let (tx, rx) = crossbeam::channel::unbounded();
        let s = std::sync::Arc::new(Shared {
            waiting: Mutex::new(HashMap::new()),
            others: rx,
            next_id: AtomicU64::new(1 << 32),
            hold: AtomicBool::new(false),
            mover: AtomicBool::new(false),
            gone: AtomicBool::new(false),
            live: AtomicUsize::new(lanes),
            park: Mutex::new(Park::default()),
            moved: Condvar::new(),
        });
        let r = s.clone();
        std::thread::Builder::new().name(format!("router-{gpid}")).spawn(move || r.route(reader, tx))?;
        Ok(s)
    }

    /// A fresh request id, with the channel its answer will come on.
    pub(crate) fn expect(&self) -> (u64, Receiver<Reply>) {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = crossbeam::channel::bounded(1);
        self.waiting.lock().unwrap_or_else(|p| p.into_inner()).insert(id, tx);
        (id, rx)
    }

    /// The request `id` was not sent after all.
    pub(crate) fn forget(&self, id: u64) {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    }

    /// Read the link: answers to their lanes, the rest in order to `others`.
    /// When the link ends, every waiting lane learns it (its channel closes).
    fn route(&self, mut rd: std::io::BufReader<Link>, others: Sender<Msg>) {
        loop {
            let (id, reply) = match wire::recv(&mut rd) {
                Ok(Frame::Msg(Msg::SysRet(r))) => {
                    let data = if r.more {
                        match wire::recv(&mut rd) {
                            Ok(Frame::Data(d)) => d,
                            _ => break,
                        }
                    } else {
                        Vec::new()
                    };
                    (r.id, Reply::Sys(r, data))
                }
                Ok(Frame::Msg(Msg::FdIdentRet { id, file })) => (id, Reply::Fd(file)),
                Ok(Frame::Msg(m)) => {
                    let _ = others.send(m);
                    continue;
                }
                Ok(Frame::Data(d)) => {
                    tracing::warn!(bytes = d.len(), "stray data frame from home");
                    continue;
                }
                Err(_) => break,
            };
            match self.waiting.lock().unwrap_or_else(|p| p.into_inner()).remove(&id) {
                Some(tx) => {
                    let _ = tx.send(reply);
                }
                None => tracing::warn!(id, "an answer nobody waits for"),
            }
        }
        self.waiting.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Claim the move home for this lane. False: another lane has it.
    pub(crate) fn claim(&self, write_lock: &Mutex<()>) -> bool {
        if self.mover.compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst).is_err() {
            return false;
        }
        let _g = write_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.hold.store(true, Ordering::SeqCst);
        true
    }

    /// The move is over: `home` says whether the process is home.
    pub(crate) fn release(&self, home: bool) {
        let _p = self.park.lock().unwrap_or_else(|p| p.into_inner());
        if home {
            self.gone.store(true, Ordering::SeqCst);
        } else {
            self.hold.store(false, Ordering::SeqCst);
            self.mover.store(false, Ordering::SeqCst);
        }
        self.moved.notify_all();
    }

    /// Park this lane until the move is over, leaving notification
    /// `pending` (on listener `lfd`) for the mover to answer. `ended`: the
    /// guest ended meanwhile.
    pub(crate) fn park(&self, (lfd, tid): (RawFd, i32), pending: Option<u64>, ended: &dyn Fn() -> bool) -> Parked {
        let mut p = self.park.lock().unwrap_or_else(|p| p.into_inner());
        p.count += 1;
        if let Some(id) = pending {
            p.held.push((lfd, id, tid));
        }
        self.moved.notify_all();
        while self.hold.load(Ordering::SeqCst) && !self.gone.load(Ordering::SeqCst) && !ended() {
            p = self.moved.wait_timeout(p, std::time::Duration::from_millis(50)).unwrap_or_else(|e| e.into_inner()).0;
        }
        p.count -= 1;
        let unanswered = pending.is_some_and(|id| {
            let at = p.held.iter().position(|h| *h == (lfd, id, tid));
            at.map(|i| p.held.swap_remove(i)).is_some()
        });
        if self.gone.load(Ordering::SeqCst) || ended() {
            Parked::Done
        } else if unanswered {
            Parked::Unanswered
        } else {
            Parked::Answered
        }
    }

    /// For the mover: wait until every other lane still serving is parked
    /// (`wake` wakes them again every 20 ms). False: the guest ended meanwhile.
    pub(crate) fn wait_parked(&self, wake: &dyn Fn(), ended: &dyn Fn() -> bool) -> bool {
        let mut p = self.park.lock().unwrap_or_else(|p| p.into_inner());
        while p.count + 1 < self.live.load(Ordering::SeqCst) {
            if ended() {
                return false;
            }
            wake();
            p = self.moved.wait_timeout(p, std::time::Duration::from_millis(20)).unwrap_or_else(|e| e.into_inner()).0;
        }
        true
    }

    /// For the mover, once thread `tid` was asked to stop: answer the
    /// notifications parked lanes hold for it with `code` (a restart).
    pub(crate) fn answer_held(&self, tid: i32, code: i64) {
        let mut p = self.park.lock().unwrap_or_else(|p| p.into_inner());
        p.held.retain(|&(lfd, id, t)| {
            if t == tid {
                let _ = om_runtime::sys::seccomp_send(lfd, id, code, false);
            }
            t != tid
        });
    }

    /// A lane stopped serving (its thread ended, or the guest did).
    pub(crate) fn leave(&self) {
        let _p = self.park.lock().unwrap_or_else(|p| p.into_inner());
        self.live.fetch_sub(1, Ordering::SeqCst);
        self.moved.notify_all();
    }
}
