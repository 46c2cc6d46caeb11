//! The native half of the `om` Python package: om's control client (what
//! `omctl` and the Rust `om` crate use), exposed to Python. The Python half
//! (`om/__init__.py`) builds `om.Popen` on `subprocess.Popen` with it.

use om_runtime::client::{display_command, socket_path, Client, Events};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::path::PathBuf;

create_exception!(om, Error, PyException, "An error from om: no omd, an unknown node, a refusal with its reason.");

fn client(socket: Option<PathBuf>) -> PyResult<Client> {
    Client::connect(&socket_path(socket.as_deref())).map_err(|e| Error::new_err(e.to_string()))
}

fn om_err(e: impl std::fmt::Display) -> PyErr {
    Error::new_err(e.to_string())
}

/// Check that an omd answers on the socket (raises om.Error otherwise).
#[pyfunction]
#[pyo3(signature = (socket=None))]
fn check(socket: Option<PathBuf>) -> PyResult<()> {
    client(socket).map(drop)
}

/// Put process `pid` under om (as the child does between fork and exec).
#[pyfunction]
#[pyo3(signature = (pid, argv, lock=false, node=None, socket=None))]
fn register(pid: i32, argv: Vec<String>, lock: bool, node: Option<u32>, socket: Option<PathBuf>) -> PyResult<()> {
    client(socket)?.register_with(pid, &display_command(&argv), lock, node).map_err(om_err)
}

/// Move process `pid` to node `to`, or home with None.
#[pyfunction]
#[pyo3(signature = (pid, to, socket=None))]
fn migrate(pid: i32, to: Option<u32>, socket: Option<PathBuf>) -> PyResult<()> {
    client(socket)?.migrate(pid, to).map_err(om_err)
}

/// Pin process `pid` where it is, or let it move again.
#[pyfunction]
#[pyo3(signature = (pid, on, socket=None))]
fn lock(pid: i32, on: bool, socket: Option<PathBuf>) -> PyResult<()> {
    client(socket)?.lock(pid, on).map_err(om_err)
}

/// The processes under om whose home is this node: dicts with the keys of
/// `omctl --json ps`.
#[pyfunction]
#[pyo3(signature = (socket=None))]
fn ps(py: Python<'_>, socket: Option<PathBuf>) -> PyResult<Vec<PyObject>> {
    let ps = client(socket)?.ps().map_err(om_err)?;
    ps.iter()
        .map(|p| {
            let d = PyDict::new(py);
            d.set_item("pid", p.pid)?;
            d.set_item("home", p.home)?;
            d.set_item("where", p.where_)?;
            d.set_item("state", &p.state)?;
            d.set_item("cmd", &p.cmd)?;
            d.set_item("cant_move", &p.cant_move)?;
            d.set_item("why", &p.why)?;
            d.set_item("demand", p.demand)?;
            d.set_item("rss", p.rss)?;
            d.set_item("locked", p.locked)?;
            d.set_item("gang", p.gang.clone())?;
            Ok(d.into_any().unbind())
        })
        .collect()
}

/// The nodes of the cluster: dicts with the keys of `omctl --json nodes`.
#[pyfunction]
#[pyo3(signature = (socket=None))]
fn nodes(py: Python<'_>, socket: Option<PathBuf>) -> PyResult<Vec<PyObject>> {
    let nodes = client(socket)?.nodes().map_err(om_err)?;
    nodes
        .iter()
        .map(|n| {
            let d = PyDict::new(py);
            d.set_item("id", n.id)?;
            d.set_item("addr", &n.addr)?;
            d.set_item("state", &n.state)?;
            d.set_item("load", n.load)?;
            d.set_item("cpus", n.cpus)?;
            d.set_item("speed", n.speed)?;
            d.set_item("mem_total", n.mem_total)?;
            d.set_item("mem_free", n.mem_free)?;
            d.set_item("guests", n.guests)?;
            d.set_item("max_guests", n.max_guests)?;
            d.set_item("accepts", n.accepts)?;
            d.set_item("age_ms", n.age_ms)?;
            Ok(d.into_any().unbind())
        })
        .collect()
}

/// What happens to this node's processes, as it happens: an iterator of
/// dicts with the keys of `omctl --json events`.
#[pyclass]
struct EventStream {
    inner: Option<Events>,
}

#[pymethods]
impl EventStream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&mut self, py: Python<'_>) -> PyResult<Option<PyObject>> {
        let Some(events) = self.inner.as_mut() else { return Ok(None) };
        // Wait without holding the interpreter.
        let next = py.allow_threads(|| events.next());
        match next {
            None => Ok(None),
            Some(Err(e)) => Err(om_err(e)),
            Some(Ok(e)) => {
                let d = PyDict::new(py);
                d.set_item("pid", e.pid)?;
                d.set_item("event", &e.kind)?;
                d.set_item("from", e.from)?;
                d.set_item("to", e.to)?;
                d.set_item("reason", &e.reason)?;
                d.set_item("code", e.code)?;
                d.set_item("signal", e.signal)?;
                Ok(Some(d.into_any().unbind()))
            }
        }
    }
}

#[pyfunction]
#[pyo3(signature = (socket=None))]
fn events(socket: Option<PathBuf>) -> PyResult<EventStream> {
    Ok(EventStream { inner: Some(client(socket)?.events().map_err(om_err)?) })
}

#[pymodule]
fn _om(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("Error", m.py().get_type::<Error>())?;
    m.add_function(wrap_pyfunction!(check, m)?)?;
    m.add_function(wrap_pyfunction!(register, m)?)?;
    m.add_function(wrap_pyfunction!(migrate, m)?)?;
    m.add_function(wrap_pyfunction!(lock, m)?)?;
    m.add_function(wrap_pyfunction!(ps, m)?)?;
    m.add_function(wrap_pyfunction!(nodes, m)?)?;
    m.add_function(wrap_pyfunction!(events, m)?)?;
    m.add_class::<EventStream>()?;
    Ok(())
}
