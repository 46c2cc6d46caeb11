//! Authenticated, encrypted node links and gossip datagrams.
//!
//! Every TCP link between nodes starts with a Noise `NNpsk0` handshake keyed
//! by the cluster key (32 random bytes that every node of one cluster holds).
//! A peer without the key cannot finish it: it gets no frame through. After
//! the handshake each direction is a stream of records (`u16` length, AES-GCM
//! ciphertext of at most [`MAX_PLAIN`] bytes) under its own counter nonce, so
//! a record that is replayed, reordered or altered fails to decrypt and the
//! link is closed. [`Link`] is `Read + Write` over that record stream; its
//! clones share the cipher state, so one thread can read while another writes.
//!
//! Gossip datagrams are sealed one by one with the first message of the same
//! pattern ([`seal`] / [`open`]): a fresh ephemeral key per datagram, the
//! payload encrypted and authenticated with the cluster key.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use snow::{params::NoiseParams, Builder, HandshakeState};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const PATTERN: &str = "Noise_NNpsk0_25519_AESGCM_SHA256";
const LINK_PROLOGUE: &[u8] = b"om cluster link v1";
const GOSSIP_PROLOGUE: &[u8] = b"om cluster gossip v1";
const HELLO: &[u8] = b"om-link1";
const TAG: usize = 16;
/// Largest Noise message, and so the largest record on a link.
const MAX_RECORD: usize = 65535;
/// Plaintext bytes carried by one record.
pub const MAX_PLAIN: usize = MAX_RECORD - TAG;
/// How long a peer may take to complete the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the cluster key {path}: {source}; create one with `omctl keygen {path}` and copy it to every node (mode 0600)")]
    Read { path: String, source: io::Error },
    #[error("cluster key {path} can be read by others (mode {mode:o}); run `chmod 600 {path}`")]
    Exposed { path: String, mode: u32 },
    #[error(
        "cluster key {path} is not 64 hex digits; make a new one with `omctl keygen FILE` and copy it to every node"
    )]
    Format { path: String },
    #[error("cannot write the cluster key {path}: {source}")]
    Write { path: String, source: io::Error },
    #[error(
        "{path} already exists; remove it first if you really want a new cluster key (every node needs the same one)"
    )]
    Exists { path: String },
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{addr} is unreachable: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("peer {addr} failed the cluster-key handshake: {why} (does it hold this cluster's key?)")]
    Auth { addr: String, why: String },
    #[error("handshake with {addr}: {source}")]
    Io { addr: String, source: io::Error },
}

/// The cluster key: every node of one cluster holds the same 32 bytes.
#[derive(Clone)]
pub struct ClusterKey([u8; 32]);

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

impl ClusterKey {
    /// Load a key file, refusing one that others can read.
    pub fn load(path: &Path) -> Result<ClusterKey, KeyError> {
        use std::os::unix::fs::MetadataExt;
        let p = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|source| KeyError::Read { path: p.clone(), source })?;
        if meta.mode() & 0o077 != 0 {
            return Err(KeyError::Exposed { path: p, mode: meta.mode() & 0o7777 });
        }
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read { path: p.clone(), source })?;
        Self::parse(text.trim()).ok_or(KeyError::Format { path: p })
    }

    fn parse(hex: &str) -> Option<ClusterKey> {
        if hex.len() != 64 {
            return None;
        }
        let mut k = [0u8; 32];
        for (i, b) in k.iter_mut().enumerate() {
            *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(ClusterKey(k))
    }

    /// A new random key.
    pub fn generate() -> io::Result<ClusterKey> {
        let mut k = [0u8; 32];
        crate::sys::getrandom(&mut k)?;
        Ok(ClusterKey(k))
    }

    /// Write a new key to `path` with mode 0600; never overwrites.
    pub fn create(path: &Path) -> Result<ClusterKey, KeyError> {
        use std::os::unix::fs::OpenOptionsExt;
        let p = path.display().to_string();
        let key = Self::generate().map_err(|source| KeyError::Write { path: p.clone(), source })?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| KeyError::Write { path: p.clone(), source })?;
        }
        let mut f =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|source| {
                if source.kind() == io::ErrorKind::AlreadyExists {
                    KeyError::Exists { path: p.clone() }
                } else {
                    KeyError::Write { path: p.clone(), source }
                }
            })?;
        let hex: String = key.0.iter().map(|b| format!("{b:02x}")).collect();
        f.write_all(format!("{hex}\n").as_bytes()).map_err(|source| KeyError::Write { path: p, source })?;
        Ok(key)
    }

    /// The default key file.
    pub fn default_path() -> PathBuf {
        PathBuf::from("/etc/om/cluster.key")
    }
}

fn params() -> NoiseParams {
    PATTERN.parse().expect("a valid Noise pattern name")
}

fn builder<'a>(key: &'a ClusterKey, prologue: &'a [u8]) -> Builder<'a> {
    Builder::new(params()).psk(0, &key.0).and_then(|b| b.prologue(prologue)).expect("psk 0 and a prologue are valid")
}

fn auth(addr: &str, why: impl std::fmt::Display) -> LinkError {
    LinkError::Auth { addr: addr.to_string(), why: why.to_string() }
}

fn write_hs(sock: &mut TcpStream, msg: &[u8]) -> io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(|_| io::Error::other("handshake message too long"))?;
    let mut out = Vec::with_capacity(2 + msg.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    sock.write_all(&out)
}

fn read_hs(sock: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    sock.read_exact(&mut len)?;
    let mut m = vec![0u8; usize::from(u16::from_be_bytes(len))];
    sock.read_exact(&mut m)?;
    Ok(m)
}

fn hello(node: u32) -> Vec<u8> {
    let mut p = HELLO.to_vec();
    p.extend_from_slice(&node.to_le_bytes());
    p
}

fn peer_node(payload: &[u8]) -> Option<u32> {
    let id = payload.strip_prefix(HELLO)?;
    Some(u32::from_le_bytes(id.try_into().ok()?))
}

/// Socket options every node link gets: no Nagle delay, and a dead peer
/// noticed within about 4 s even when nothing is being sent.
pub fn tune(sock: &TcpStream) {
    let _ = sock.set_nodelay(true);
    crate::sys::keepalive(sock.as_raw_fd(), 1, 1, 3, 4000);
}

/// One end of an authenticated node link.
pub struct Link {
    sock: TcpStream,
    st: Arc<Cipher>,
}

/// The cipher state of one link, shared by all its handles: the two
/// directions' keys from the Noise handshake's split, each used with
/// AES-256-GCM under a counter nonce (the Noise transport format).
pub struct Cipher {
    keys: SessionKeys,
    tx_key: LessSafeKey,
    rx_key: LessSafeKey,
    tx: Mutex<Tx>,
    rx: Mutex<Rx>,
    peer: u32,
}

/// Everything needed to carry on one link in another process (a deputy):
/// the session's keys (never the cluster key), its nonces, and plaintext
/// already decrypted but not yet read.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionKeys {
    pub tx_key: [u8; 32],
    pub rx_key: [u8; 32],
    pub peer: u32,
}

/// Where a link's two counters stand, and plaintext read but not consumed.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionPos {
    pub tx_nonce: u64,
    pub rx_nonce: u64,
    pub pending: Vec<u8>,
}

fn noise_nonce(n: u64) -> Nonce {
    let mut b = [0u8; 12];
    b[4..].copy_from_slice(&n.to_be_bytes());
    Nonce::assume_unique_for_key(b)
}

impl Cipher {
    /// A cipher from exported keys, at the given position.
    pub fn from_session(keys: &SessionKeys, pos: &SessionPos) -> io::Result<Arc<Cipher>> {
        let k = |b: &[u8; 32]| {
            UnboundKey::new(&AES_256_GCM, b).map(LessSafeKey::new).map_err(|_| io::Error::other("bad session key"))
        };
        let c = Cipher {
            keys: keys.clone(),
            tx_key: k(&keys.tx_key)?,
            rx_key: k(&keys.rx_key)?,
            tx: Mutex::default(),
            rx: Mutex::default(),
            peer: keys.peer,
        };
        c.set_pos(pos);
        Ok(Arc::new(c))
    }

    /// The session's keys, to hand this link to a deputy process.
    pub fn session_keys(&self) -> SessionKeys {
        self.keys.clone()
    }

    /// Where the counters stand now (and any plaintext not yet read).
    pub fn pos(&self) -> SessionPos {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        let rx = self.rx.lock().unwrap_or_else(|p| p.into_inner());
        SessionPos { tx_nonce: tx.nonce, rx_nonce: rx.nonce, pending: rx.plain[rx.pos.min(rx.plain.len())..].to_vec() }
    }

    /// Carry on from where another process left this link.
    pub fn set_pos(&self, pos: &SessionPos) {
        let mut tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        let mut rx = self.rx.lock().unwrap_or_else(|p| p.into_inner());
        tx.nonce = pos.tx_nonce;
        rx.nonce = pos.rx_nonce;
        rx.plain = pos.pending.clone();
        rx.pos = 0;
    }
}

#[derive(Default)]
struct Tx {
    nonce: u64,
    plain: Vec<u8>,
    out: Vec<u8>,
}

#[derive(Default)]
struct Rx {
    nonce: u64,
    plain: Vec<u8>,
    pos: usize,
    cipher: Vec<u8>,
    broken: bool,
}

impl Link {
    /// Connect to a node and authenticate with the cluster key.
    pub fn connect(addr: SocketAddr, key: &ClusterKey, me: u32, timeout: Duration) -> Result<Link, LinkError> {
        let sock = TcpStream::connect_timeout(&addr, timeout).map_err(|source| LinkError::Connect { addr, source })?;
        Self::initiate(sock, key, me)
    }

    /// Authenticate an already connected socket as the initiator.
    pub fn initiate(mut sock: TcpStream, key: &ClusterKey, me: u32) -> Result<Link, LinkError> {
        let addr = sock.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "?".into());
        let ioe = |source| LinkError::Io { addr: addr.clone(), source };
        tune(&sock);
        let _ = sock.set_read_timeout(Some(HANDSHAKE_TIMEOUT));
        let mut hs = builder(key, LINK_PROLOGUE).build_initiator().map_err(|e| auth(&addr, e))?;
        let mut buf = vec![0u8; MAX_RECORD];
        let n = hs.write_message(&hello(me), &mut buf).map_err(|e| auth(&addr, e))?;
        write_hs(&mut sock, &buf[..n]).map_err(ioe)?;
        let reply = read_hs(&mut sock).map_err(|e| {
            if matches!(e.kind(), io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset) {
                auth(&addr, "it closed the link (it does not hold this cluster's key)")
            } else {
                ioe(e)
            }
        })?;
        let mut payload = vec![0u8; MAX_RECORD];
        let n = hs.read_message(&reply, &mut payload).map_err(|e| auth(&addr, format!("bad reply: {e}")))?;
        let peer = peer_node(&payload[..n]).ok_or_else(|| auth(&addr, "reply is not an om hello"))?;
        let _ = sock.set_read_timeout(None);
        Self::finish(sock, hs, peer, &addr)
    }

    /// Authenticate an accepted socket as the responder. A peer without the
    /// key fails here, having learnt nothing.
    pub fn accept(mut sock: TcpStream, key: &ClusterKey, me: u32) -> Result<Link, LinkError> {
        let addr = sock.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "?".into());
        let ioe = |source| LinkError::Io { addr: addr.clone(), source };
        tune(&sock);
        let _ = sock.set_read_timeout(Some(HANDSHAKE_TIMEOUT));
        let mut hs = builder(key, LINK_PROLOGUE).build_responder().map_err(|e| auth(&addr, e))?;
        let first = read_hs(&mut sock).map_err(ioe)?;
        let mut payload = vec![0u8; MAX_RECORD];
        let n = hs.read_message(&first, &mut payload).map_err(|_| auth(&addr, "its first message does not decrypt"))?;
        let peer = peer_node(&payload[..n]).ok_or_else(|| auth(&addr, "its first message is not an om hello"))?;
        let mut buf = vec![0u8; MAX_RECORD];
        let n = hs.write_message(&hello(me), &mut buf).map_err(|e| auth(&addr, e))?;
        write_hs(&mut sock, &buf[..n]).map_err(ioe)?;
        let _ = sock.set_read_timeout(None);
        Self::finish(sock, hs, peer, &addr)
    }

    fn finish(sock: TcpStream, mut hs: HandshakeState, peer: u32, addr: &str) -> Result<Link, LinkError> {
        if !hs.is_handshake_finished() {
            return Err(auth(addr, "handshake not finished"));
        }
        // The Noise split: the first key carries initiator to responder.
        let (k1, k2) = hs.dangerously_get_raw_split();
        let (tx_key, rx_key) = if hs.is_initiator() { (k1, k2) } else { (k2, k1) };
        let st = Cipher::from_session(&SessionKeys { tx_key, rx_key, peer }, &SessionPos::default())
            .map_err(|e| auth(addr, e))?;
        Ok(Link { sock, st })
    }

    /// The node id the peer gave in the handshake.
    pub fn peer_node(&self) -> u32 {
        self.st.peer
    }

    /// Another handle on the same link (a dup of the socket, same ciphers).
    pub fn try_clone(&self) -> io::Result<Link> {
        Ok(Link { sock: self.sock.try_clone()?, st: self.st.clone() })
    }

    /// The cipher state, to rebuild a handle from a raw fd elsewhere.
    pub fn cipher(&self) -> Arc<Cipher> {
        self.st.clone()
    }

    /// A handle over `fd`, a socket carrying the link whose cipher is `st`.
    pub fn from_fd(fd: OwnedFd, st: Arc<Cipher>) -> Link {
        Link { sock: TcpStream::from(fd), st }
    }

    pub fn set_read_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        self.sock.set_read_timeout(d)
    }

    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.sock.shutdown(how)
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.sock.peer_addr()
    }

    /// Milliseconds since the peer last sent anything (keepalive ACKs count).
    pub fn last_heard_ms(&self) -> Option<u32> {
        crate::sys::tcp_last_heard_ms(self.sock.as_raw_fd())
    }

    fn read_record(&self, rx: &mut Rx, direct: &mut [u8]) -> io::Result<usize> {
        let mut sock = &self.sock;
        let mut len = [0u8; 2];
        // A clean end of stream (or a read timeout) is only harmless between
        // records; inside one the stream has lost its framing.
        let mut got = 0;
        while got < 2 {
            match sock.read(&mut len[got..]) {
                Ok(0) if got == 0 => return Ok(0),
                Ok(0) => {
                    rx.broken = true;
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    rx.broken |= got > 0;
                    return Err(e);
                }
            }
        }
        let n = usize::from(u16::from_be_bytes(len));
        if n <= TAG {
            rx.broken = true;
            return Err(io::Error::new(io::ErrorKind::InvalidData, "link record shorter than its tag"));
        }
        // Decrypted in place: straight in the caller's buffer when the whole
        // record fits there, else in our own.
        let into_direct = direct.len() >= n;
        let buf = if into_direct {
            &mut direct[..n]
        } else {
            rx.cipher.resize(n, 0);
            &mut rx.cipher[..]
        };
        if let Err(e) = sock.read_exact(buf) {
            rx.broken = true;
            return Err(e);
        }
        let res = self.st.rx_key.open_in_place(noise_nonce(rx.nonce), Aad::empty(), buf).map(|p| p.len());
        match res {
            Ok(m) => {
                rx.nonce += 1;
                if !into_direct {
                    std::mem::swap(&mut rx.plain, &mut rx.cipher);
                    rx.plain.truncate(m);
                    rx.pos = 0;
                }
                Ok(m)
            }
            Err(_) => {
                rx.broken = true;
                rx.plain.clear();
                Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "link record failed authentication (altered, replayed or out of order); link closed",
                ))
            }
        }
    }

    fn read_plain(&self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut rx = self.st.rx.lock().unwrap_or_else(|p| p.into_inner());
        if rx.broken {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "link closed after a failed record"));
        }
        loop {
            if rx.pos < rx.plain.len() {
                let n = buf.len().min(rx.plain.len() - rx.pos);
                buf[..n].copy_from_slice(&rx.plain[rx.pos..rx.pos + n]);
                rx.pos += n;
                if rx.pos == rx.plain.len() {
                    rx.plain.clear();
                    rx.pos = 0;
                }
                return Ok(n);
            }
            rx.plain.clear();
            rx.pos = 0;
            let rx = &mut *rx;
            let n = self.read_record(rx, buf)?;
            if rx.plain.is_empty() {
                // End of stream, or decrypted straight into `buf`.
                return Ok(n);
            }
        }
    }

    fn write_plain(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let mut tx = self.st.tx.lock().unwrap_or_else(|p| p.into_inner());
        let tx = &mut *tx;
        let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &b[..]);
        // One slice that fills a record (or the only one) is sealed in
        // place; small pieces are gathered first.
        let direct = first.len() >= MAX_PLAIN || bufs.iter().filter(|b| !b.is_empty()).count() <= 1;
        if !direct {
            tx.plain.clear();
            for b in bufs {
                let room = MAX_PLAIN - tx.plain.len();
                tx.plain.extend_from_slice(&b[..b.len().min(room)]);
                if tx.plain.len() == MAX_PLAIN {
                    break;
                }
            }
        }
        let plain = if direct { &first[..first.len().min(MAX_PLAIN)] } else { &tx.plain[..] };
        if plain.is_empty() {
            return Ok(0);
        }
        let n = plain.len();
        let mut out = std::mem::take(&mut tx.out);
        out.resize(2 + n + TAG, 0);
        out[2..2 + n].copy_from_slice(plain);
        let tag = self
            .st
            .tx_key
            .seal_in_place_separate_tag(noise_nonce(tx.nonce), Aad::empty(), &mut out[2..2 + n])
            .map_err(|_| io::Error::other("link record cannot be sealed"))?;
        out[2 + n..].copy_from_slice(tag.as_ref());
        tx.out = out;
        tx.nonce += 1;
        let c = n + TAG;
        let len = u16::try_from(c).map_err(|_| io::Error::other("record too long"))?;
        tx.out[..2].copy_from_slice(&len.to_be_bytes());
        // The record goes out whole (the nonce is spent), even across EINTR.
        (&self.sock).write_all(&tx.out[..2 + c])?;
        Ok(n)
    }
}

impl Read for Link {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }
}

impl Read for &Link {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_plain(buf)
    }
}

impl Write for Link {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self).write(buf)
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        (&*self).write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Write for &Link {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_plain(&[io::IoSlice::new(buf)])
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.write_plain(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsRawFd for Link {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl AsFd for Link {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl IntoRawFd for Link {
    fn into_raw_fd(self) -> RawFd {
        self.sock.into_raw_fd()
    }
}

/// Seal one gossip datagram: a fresh ephemeral key, the payload encrypted
/// and authenticated with the cluster key.
pub fn seal(key: &ClusterKey, payload: &[u8]) -> Option<Vec<u8>> {
    let mut hs = builder(key, GOSSIP_PROLOGUE).build_initiator().ok()?;
    let mut out = vec![0u8; payload.len() + 32 + TAG];
    let n = hs.write_message(payload, &mut out).ok()?;
    out.truncate(n);
    Some(out)
}

/// Open a gossip datagram; `None` if it was not sealed with this key.
pub fn open(key: &ClusterKey, datagram: &[u8]) -> Option<Vec<u8>> {
    if datagram.len() < 32 + TAG || datagram.len() > MAX_RECORD {
        return None;
    }
    let mut hs = builder(key, GOSSIP_PROLOGUE).build_responder().ok()?;
    let mut out = vec![0u8; datagram.len()];
    let n = hs.read_message(datagram, &mut out).ok()?;
    out.truncate(n);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(ka: &ClusterKey, kb: &ClusterKey) -> (Result<Link, LinkError>, Result<Link, LinkError>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let kb = kb.clone();
        let h = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            Link::accept(s, &kb, 2)
        });
        let a = Link::connect(addr, ka, 1, Duration::from_secs(2));
        (a, h.join().unwrap())
    }

    #[test]
    fn same_key_links_carry_data_both_ways() {
        let k = ClusterKey::generate().unwrap();
        let (a, b) = pair(&k, &k);
        let (mut a, mut b) = (a.unwrap(), b.unwrap());
        assert_eq!((a.peer_node(), b.peer_node()), (2, 1));
        let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
        let w = std::thread::spawn(move || {
            a.write_all(&big).unwrap();
            a.write_all(b"end").unwrap();
            (a, big)
        });
        let mut got = vec![0u8; 300_003];
        b.read_exact(&mut got).unwrap();
        let (_, big) = w.join().unwrap();
        assert_eq!(&got[..300_000], &big[..]);
        assert_eq!(&got[300_000..], b"end");
    }

    #[test]
    fn wrong_key_is_refused() {
        let (ka, kb) = (ClusterKey::generate().unwrap(), ClusterKey::generate().unwrap());
        let (a, b) = pair(&ka, &kb);
        assert!(matches!(b, Err(LinkError::Auth { .. })), "responder accepted a wrong key");
        assert!(a.is_err(), "initiator thinks the link is up");
    }

    #[test]
    fn datagrams_open_only_with_the_key() {
        let (ka, kb) = (ClusterKey::generate().unwrap(), ClusterKey::generate().unwrap());
        let d = seal(&ka, b"load 0.5").unwrap();
        assert_eq!(open(&ka, &d).as_deref(), Some(&b"load 0.5"[..]));
        assert_eq!(open(&kb, &d), None);
        let mut bad = d.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(open(&ka, &bad), None);
    }

    /// A record sent twice (a replay inside a session) fails to decrypt and
    /// closes the link; the original gets through.
    #[test]
    fn replayed_record_in_a_session_is_rejected() {
        let k = ClusterKey::generate().unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (addr, paddr) = (l.local_addr().unwrap(), p.local_addr().unwrap());
        let kb = k.clone();
        let server = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut b = Link::accept(s, &kb, 2).unwrap();
            let mut one = [0u8; 3];
            b.read_exact(&mut one).unwrap();
            let again = b.read(&mut [0u8; 3]);
            (one, again.map_err(|e| e.kind()))
        });
        // A proxy that forwards length-prefixed units and repeats the first record.
        let proxy = std::thread::spawn(move || {
            let (mut a, _) = p.accept().unwrap();
            let mut b = TcpStream::connect(addr).unwrap();
            let mut back = b.try_clone().unwrap();
            let mut a2 = a.try_clone().unwrap();
            std::thread::spawn(move || {
                let _ = io::copy(&mut back, &mut a2);
            });
            for unit in 0.. {
                let Ok(m) = read_hs(&mut a) else { break };
                let mut framed = u16::try_from(m.len()).unwrap().to_be_bytes().to_vec();
                framed.extend_from_slice(&m);
                b.write_all(&framed).unwrap();
                if unit == 1 {
                    b.write_all(&framed).unwrap();
                }
            }
        });
        let mut a = Link::connect(paddr, &k, 1, Duration::from_secs(2)).unwrap();
        a.write_all(b"one").unwrap();
        let (one, again) = server.join().unwrap();
        assert_eq!(&one, b"one");
        assert_eq!(again, Err(io::ErrorKind::InvalidData), "a replayed record was accepted");
        drop(a);
        let _ = proxy.join();
    }

    #[test]
    fn key_file_is_private_and_parsed() {
        let dir = std::env::temp_dir().join(format!("om-key-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let p = dir.join("k");
        let k = ClusterKey::create(&p).unwrap();
        assert_eq!(ClusterKey::load(&p).unwrap().0, k.0);
        assert!(matches!(ClusterKey::create(&p), Err(KeyError::Exists { .. })));
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(ClusterKey::load(&p), Err(KeyError::Exposed { .. })));
        std::fs::write(&p, "zz\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(ClusterKey::load(&p), Err(KeyError::Format { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
