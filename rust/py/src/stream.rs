//! `novacron._core.QemuStreamSplitter`: QEMU's migration stream split into RAM pages
//! and verbatim bytes (`novacron_engine::qemu_stream`).

use crate::ByteView;
use novacron_engine::qemu_stream::{Piece, SplitStats, StreamSplitter};
use pyo3::buffer::PyBuffer;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};
use std::collections::HashMap;

/// Streaming splitter; feed it the stream in chunks of any size.
#[pyclass(module = "novacron._core")]
pub struct QemuStreamSplitter {
    inner: StreamSplitter,
}

fn pieces<'py>(py: Python<'py>, pieces: Vec<Piece>) -> PyResult<Bound<'py, PyList>> {
    let out = PyList::empty(py);
    for piece in pieces {
        let item = match piece {
            Piece::Verbatim(bytes) => PyTuple::new(
                py,
                [py.None(), PyBytes::new(py, &bytes).into_any().unbind()],
            )?,
            Piece::Page { index, data } => PyTuple::new(
                py,
                [
                    index.into_pyobject(py)?.into_any().unbind(),
                    PyBytes::new(py, &data).into_any().unbind(),
                ],
            )?,
        };
        out.append(item)?;
    }
    Ok(out)
}

#[pymethods]
impl QemuStreamSplitter {
    #[new]
    fn new() -> Self {
        Self {
            inner: StreamSplitter::new(),
        }
    }

    /// The next bytes of the stream; returns the complete pieces as a list of
    /// `(None, bytes)` (verbatim) and `(page_index, page)`.
    fn feed<'py>(&mut self, py: Python<'py>, data: PyBuffer<u8>) -> PyResult<Bound<'py, PyList>> {
        let view = ByteView::new(data)?;
        let bytes = view.as_slice();
        let inner = &mut self.inner;
        let out = py.detach(|| inner.feed(bytes));
        pieces(py, out)
    }

    /// The end of the stream: what is still buffered, verbatim.
    fn finish<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let out = self.inner.finish();
        pieces(py, out)
    }

    /// Why the rest of the stream passes through verbatim, if it does.
    #[getter]
    fn passthrough_reason(&self) -> Option<&'static str> {
        self.inner.passthrough_reason()
    }

    /// Pages in the guest's page space (all RAMBlocks laid end to end).
    #[getter]
    fn total_pages(&self) -> u64 {
        self.inner.total_pages()
    }

    /// RAMBlocks: `(name, length, first_page)`.
    #[getter]
    fn blocks<'py>(&self, py: Python<'py>) -> Vec<(Bound<'py, PyBytes>, u64, u64)> {
        self.inner
            .blocks()
            .iter()
            .map(|b| (PyBytes::new(py, &b.name), b.length, b.first_page))
            .collect()
    }

    /// `{"bytes", "pages", "zero_pages", "verbatim_bytes"}` so far.
    #[getter]
    fn stats(&self) -> HashMap<&'static str, u64> {
        stats_map(self.inner.stats)
    }
}

/// A splitter's counters as Python sees them.
pub(crate) fn stats_map(s: SplitStats) -> HashMap<&'static str, u64> {
    [
        ("bytes", s.bytes),
        ("pages", s.pages),
        ("zero_pages", s.zero_pages),
        ("verbatim_bytes", s.verbatim_bytes),
    ]
    .into_iter()
    .collect()
}
