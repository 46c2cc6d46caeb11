//! Fuzzing the frame decoder (proptest, run in CI with the other tests).
//!
//! Every input must give a frame or an error: no panic, no allocation past
//! the frame limit, no read past the frame. The corpus in
//! `tests/corpus/frames/` (valid frames of each kind, and inputs that once
//! mattered) is replayed and mutated on every run; proptest keeps any
//! failure it finds in `proptest-regressions/`.

use om_runtime::wire::{self, Frame, Msg};
use proptest::prelude::*;
use std::path::PathBuf;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/frames")
}

fn corpus() -> Vec<Vec<u8>> {
    let mut files: Vec<_> = std::fs::read_dir(corpus_dir()).expect("corpus dir").flatten().map(|e| e.path()).collect();
    files.sort();
    files.into_iter().map(|p| std::fs::read(p).expect("corpus file")).collect()
}

/// Decode frames until the input ends or an error; never panics.
fn decode_all(bytes: &[u8]) -> Vec<Result<(), String>> {
    let mut r = std::io::Cursor::new(bytes);
    let mut out = Vec::new();
    while (r.position() as usize) < bytes.len() {
        let before = r.position();
        match wire::recv(&mut r) {
            Ok(_) => out.push(Ok(())),
            Err(e) => {
                out.push(Err(e.to_string()));
                break;
            }
        }
        assert!(r.position() > before, "decoder made no progress");
    }
    out
}

fn frames_of(msgs: &[Msg]) -> Vec<u8> {
    let mut v = Vec::new();
    for m in msgs {
        wire::send(&mut v, m).expect("encode");
    }
    v
}

/// The corpus files decode as they should: the `ok-` ones fully, the
/// `bad-` ones to an error.
#[test]
fn corpus_decodes_as_labelled() {
    let mut n = 0;
    for e in std::fs::read_dir(corpus_dir()).expect("corpus").flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let res = decode_all(&std::fs::read(e.path()).expect("read"));
        if name.starts_with("ok-") {
            assert!(res.iter().all(Result::is_ok), "{name}: {res:?}");
        } else {
            assert!(res.last().is_some_and(Result::is_err), "{name} decoded without error: {res:?}");
        }
        n += 1;
    }
    assert!(n >= 6, "corpus has only {n} files");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Arbitrary bytes: an error or frames, never a panic.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        decode_all(&bytes);
    }

    /// Corpus inputs with bytes flipped, cut or spliced.
    #[test]
    fn mutated_corpus_never_panics(pick in 0usize..64, flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8), cut in any::<usize>()) {
        let c = corpus();
        let mut b = c[pick % c.len()].clone();
        for (at, x) in flips {
            if !b.is_empty() {
                let i = at % b.len();
                b[i] ^= x;
            }
        }
        if !b.is_empty() {
            b.truncate(cut % (b.len() + 1));
        }
        decode_all(&b);
    }

    /// Frames that are made by `send` come back the same.
    #[test]
    fn round_trip(sig in any::<i32>(), data in proptest::collection::vec(any::<u8>(), 0..10000), text in ".{0,200}") {
        let mut v = frames_of(&[Msg::Signal { sig, info: Vec::new(), tid: 0 }, Msg::Error { message: text.clone() }]);
        wire::send_data(&mut v, &data).expect("data");
        let mut r = std::io::Cursor::new(&v[..]);
        let a = matches!(wire::recv(&mut r), Ok(Frame::Msg(Msg::Signal { sig: s, .. })) if s == sig);
        let b = matches!(wire::recv(&mut r), Ok(Frame::Msg(Msg::Error { message })) if message == text);
        let c = matches!(wire::recv(&mut r), Ok(Frame::Data(d)) if d == data);
        prop_assert!(a && b && c, "round trip failed: signal {}, error {}, data {}", a, b, c);
    }
}

/// The committed seed corpus matches what the current wire format makes.
/// After a format change, rewrite it with `OM_WRITE_CORPUS=1 cargo test -p
/// om-runtime --test fuzz_frames seed`.
#[test]
fn seed_corpus_is_current() {
    let d = corpus_dir();
    let write = std::env::var_os("OM_WRITE_CORPUS").is_some();
    let w = |name: &str, b: &[u8]| {
        if write {
            std::fs::write(d.join(name), b).expect("write");
        } else {
            let have = std::fs::read(d.join(name)).unwrap_or_default();
            assert!(have == b, "corpus file {name} is stale; rewrite it with OM_WRITE_CORPUS=1 (see this test)");
        }
    };
    w("ok-hello-attach", &frames_of(&[Msg::Hello { node: 3 }, Msg::Attach { token: 42 }]));
    w(
        "ok-signal-exited",
        &frames_of(&[Msg::Signal { sig: 10, info: Vec::new(), tid: 0 }, Msg::Exited { code: 7, signal: 0 }]),
    );
    w("ok-nodes-error", &frames_of(&[Msg::Nodes, Msg::Error { message: "node 3 is down".into() }]));
    let mut data = Vec::new();
    wire::send_data(&mut data, &[7u8; 5000]).expect("data");
    w("ok-data", &data);
    let full = frames_of(&[Msg::Refused { reason: "guest limit 8 reached".into() }]);
    w("bad-truncated", &full[..full.len() - 3]);
    let mut sum = full.clone();
    sum[20] ^= 0xff;
    w("bad-checksum", &sum);
    let mut big = full.clone();
    big[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    w("bad-oversized", &big);
    let mut kind = full.clone();
    kind[4] = 77;
    w("bad-kind", &kind);
    let mut magic = full;
    magic[0] = b'X';
    w("bad-magic", &magic);
}
