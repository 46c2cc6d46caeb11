//! fidelity: refused
//! A private mapping of an unlinked file keeps showing the file's later
//! changes through the pages it has not written, as natively. No other
//! node has the file, so om refuses to move it.

fn main() {
    om_fidelity::private_file_map(true);
}
