//! A private mapping of a file keeps showing the file's later changes
//! (written through an fd) in the pages it has not written, as natively.

fn main() {
    om_fidelity::private_file_map(false);
}
