//! Bytes lent to Python without a copy: a read-only `memoryview` over a Rust buffer,
//! whose memory goes back to a small pool for the next one once Python lets go of it.
//!
//! A migration's destination releases QEMU's whole rebuilt stream (gigabytes) in pieces
//! of a few MiB. Copied into a new `bytes` each time, every piece cost a copy and, as
//! often as not, fresh memory faulted in page by page; lent, it costs neither: the
//! receiver rebuilds the next piece in a buffer an earlier piece already used.

use std::ffi::{c_int, c_void};
use std::sync::{Mutex, PoisonError};

use pyo3::exceptions::PyBufferError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyMemoryView;

use novacron_engine as engine;

/// Buffers kept for reuse: at most this many ...
const SPARES: usize = 8;
/// ... of this much room together (a release is a few MiB; at most 64 MiB awaits a
/// CHECK): what an idle daemon keeps.
const SPARE_BYTES: usize = 64 << 20;

static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

fn pool() -> std::sync::MutexGuard<'static, Vec<Vec<u8>>> {
    POOL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A buffer to fill (one an earlier lent buffer gave back, when there is one).
pub(crate) fn spare() -> Vec<u8> {
    pool().pop().unwrap_or_default()
}

fn give_back(mut buffer: Vec<u8>) {
    if buffer.capacity() == 0 {
        return;
    }
    buffer.clear();
    let mut spares = pool();
    let room: usize = spares.iter().map(Vec::capacity).sum();
    if spares.len() < SPARES && room + buffer.capacity() <= SPARE_BYTES {
        spares.push(buffer);
    }
}

/// Encoders' outputs Python let go of, for the next encode: a round 0's output is tens
/// of MiB, and a fresh one has every page faulted in and cleared by the kernel as it
/// is written. At most two (an encoder and a second one over the same rounds), of
/// 2 GiB of room together (mostly untouched: an output's room is what any encode of
/// its guest could need, at most 1 GiB), marked `MADV_FREE` while they wait.
static OUTPUTS: engine::Shelf<Vec<u8>> = engine::Shelf::new(2, 2 << 30);

/// An empty buffer with at least `room` bytes of room for an encoder's output: one an
/// earlier output gave back, or a new one.
pub(crate) fn output_buffer(room: usize) -> Vec<u8> {
    OUTPUTS
        .take_if(|b| b.capacity() >= room)
        .map(|mut b| {
            b.clear();
            b
        })
        .unwrap_or_else(|| engine::with_room(room))
}

/// Where the bytes of a [`Lent`] go when Python lets go of them.
#[derive(Clone, Copy)]
enum Home {
    /// to the pool of released pieces (a receiver rebuilds the next into them)
    Spares,
    /// to the shelf of encoders' outputs
    Outputs,
}

/// What a `memoryview` from [`lent`] reads: immutable while Python can reach it.
#[pyclass(frozen, module = "novacron._core")]
pub(crate) struct Lent {
    data: Vec<u8>,
    home: Home,
}

#[pymethods]
impl Lent {
    /// Exports `data` read-only; the view keeps this object (and so `data`) alive.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let data = &slf.get().data;
        let len = ffi::Py_ssize_t::try_from(data.len())
            .map_err(|_| PyBufferError::new_err("buffer too large"))?;
        // SAFETY: `view` is the `Py_buffer` Python asked this object to fill (a null one
        // PyBuffer_FillInfo refuses with BufferError).
        // The bytes are `data`, which never changes (the class is frozen and nothing
        // mutates it) and lives as long as this object; PyBuffer_FillInfo makes the
        // view hold a reference to the object. Read-only (1): a request for a writable
        // buffer fails with BufferError.
        let filled = unsafe {
            ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                data.as_ptr().cast_mut().cast::<c_void>(),
                len,
                1,
                flags,
            )
        };
        if filled == -1 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        let data = std::mem::take(&mut self.data);
        match self.home {
            Home::Spares => give_back(data),
            Home::Outputs => OUTPUTS.put(data),
        }
    }
}

/// `data` as a read-only `memoryview`, without copying it; its memory goes to the
/// pool once Python lets go of it.
pub(crate) fn lent(py: Python<'_>, data: Vec<u8>) -> PyResult<Bound<'_, PyMemoryView>> {
    viewed(py, data, Home::Spares)
}

/// An encoder's output (from [`output_buffer`]) as a read-only `memoryview`, without
/// copying it; its memory goes to the outputs' shelf once Python lets go of it.
pub(crate) fn output(py: Python<'_>, data: Vec<u8>) -> PyResult<Bound<'_, PyMemoryView>> {
    viewed(py, data, Home::Outputs)
}

fn viewed(py: Python<'_>, data: Vec<u8>, home: Home) -> PyResult<Bound<'_, PyMemoryView>> {
    let owner = Bound::new(py, Lent { data, home })?;
    PyMemoryView::from(owner.as_any())
}
