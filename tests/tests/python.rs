//! The Python package (`python/`, PyO3 and maturin) against a real
//! cluster: its pytest tests run with a virtual environment that the test
//! command builds (`target/pyvenv`, `pip install pytest ./python`).

use om_tests::Cluster;
use std::path::Path;

#[test]
fn the_python_package_passes_its_tests_on_a_real_cluster() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let py = std::env::var_os("OM_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target/pyvenv/bin/python"));
    assert!(
        py.exists(),
        "{} is missing: build the package first (python3 -m venv target/pyvenv && target/pyvenv/bin/pip install pytest ./python; the README's test command does)",
        py.display()
    );
    let c = Cluster::start(2);
    let out = std::process::Command::new(&py)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "python/tests"])
        .current_dir(&root)
        .env("OM_SOCKET", c.socket(1))
        .output()
        .expect("pytest");
    assert!(
        out.status.success(),
        "pytest failed:\n{}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        c.logs()
    );
}
