//! fidelity: refused
//! A packet socket with a mapped receive ring (PACKET_RX_RING) cannot be
//! recreated elsewhere: om refuses to move it, and the ring keeps working
//! at home.

#[repr(C)]
struct TpacketReq {
    block_size: u32,
    block_nr: u32,
    frame_size: u32,
    frame_nr: u32,
}

const PACKET_RX_RING: i32 = 5;

fn main() {
    om_fidelity::case(
        || {
            // SAFETY: a packet socket of our own with a ring mapped into us.
            unsafe {
                let s = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, (libc::ETH_P_ALL as u16).to_be() as i32);
                if s < 0 {
                    return (om_fidelity::ret(-1), 0usize);
                }
                let req = TpacketReq { block_size: 4096, block_nr: 4, frame_size: 2048, frame_nr: 8 };
                let r = libc::setsockopt(
                    s,
                    libc::SOL_PACKET,
                    PACKET_RX_RING,
                    (&req as *const TpacketReq).cast(),
                    std::mem::size_of::<TpacketReq>() as u32,
                );
                if r < 0 {
                    return (om_fidelity::ret(-1), 0);
                }
                let m = libc::mmap(
                    std::ptr::null_mut(),
                    4 * 4096,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    s,
                    0,
                );
                (s as i64, m as usize)
            }
        },
        |(s, m), seen| {
            seen.expect("socket and ring", s >= 0 && m != libc::MAP_FAILED as usize, true);
            // The ring is still mapped: its first frame header reads.
            // SAFETY: the ring is mapped.
            let _ = unsafe { std::ptr::read_volatile(m as *const u64) };
            seen.expect("ring readable", true, true);
        },
    );
}
