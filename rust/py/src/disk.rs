//! Bindings of the engine's `disk` module: a storage copy's extents and digest.

use novacron_engine as engine;
use pyo3::buffer::PyBuffer;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::{copied_bytes, detached, ByteView};
use engine::disk::{Codec, Piece};

/// A piece of an extent as Python sees it: `(at, length, codec, payload)`.
type PieceTuple<'py> = (usize, usize, u8, Bound<'py, PyBytes>);

/// The extent `data` as pieces `(at, length, codec, payload)` covering it in order:
/// codec 0 raw bytes, 1 zstd level 1, 2 all zero (empty payload), 3 an LZ4 block.
/// `codec`: what data runs are packed with when that pays (1 or 3; 0 packs nothing).
#[pyfunction]
#[pyo3(signature = (data, codec = 1))]
pub(crate) fn pack_extent<'py>(
    py: Python<'py>,
    data: PyBuffer<u8>,
    codec: u8,
) -> PyResult<Vec<PieceTuple<'py>>> {
    let view = ByteView::new(data)?;
    let pieces: Vec<Piece> = detached(py, || {
        engine::disk::pack_extent(view.as_slice(), Codec::from_u8(codec)?)
    })?;
    pieces
        .into_iter()
        .map(|p| Ok((p.at, p.len, p.codec as u8, copied_bytes(py, &p.payload)?)))
        .collect()
}

/// The `length` bytes a piece packed as `codec` stands for; `EngineError` when the
/// payload does not restore to exactly that.
#[pyfunction]
pub(crate) fn unpack_piece<'py>(
    py: Python<'py>,
    codec: u8,
    payload: PyBuffer<u8>,
    length: usize,
) -> PyResult<Bound<'py, PyBytes>> {
    let view = ByteView::new(payload)?;
    let out = detached(py, || {
        engine::disk::unpack(Codec::from_u8(codec)?, view.as_slice(), length)
    })?;
    copied_bytes(py, &out)
}

/// xxh3-128 over everything given to `update`, as if it were one input.
#[pyclass(module = "novacron._core")]
pub(crate) struct StreamDigest {
    inner: engine::disk::StreamDigest,
}

#[pymethods]
impl StreamDigest {
    #[new]
    fn new() -> Self {
        Self {
            inner: engine::disk::StreamDigest::new(),
        }
    }

    fn update(&mut self, py: Python<'_>, data: PyBuffer<u8>) -> PyResult<()> {
        let view = ByteView::new(data)?;
        let inner = &mut self.inner;
        detached(py, || {
            inner.update(view.as_slice());
            Ok(())
        })
    }

    /// The 16-byte big-endian xxh3-128 of everything so far.
    fn digest<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.digest().to_be_bytes())
    }
}
