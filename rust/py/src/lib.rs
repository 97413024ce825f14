//! `novacron._core`: the thin pyo3 layer over the NovaCron engine.
//!
//! Every binding has the same shape: borrow the caller's buffer without copying,
//! release the GIL around the engine call (`detached`), map engine errors to the
//! exception classes that Python owns in `novacron.errors`.

#![deny(clippy::undocumented_unsafe_blocks)]

mod channel;
mod disk;
mod lent;
mod placement;
mod stream;

use novacron_engine as engine;
use std::mem::MaybeUninit;

use pyo3::buffer::PyBuffer;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyMemoryView};

pyo3::import_exception!(novacron.errors, EngineError);
pyo3::import_exception!(novacron.migration.frames, FrameError);
pyo3::import_exception!(novacron.migration.frames, DigestMismatch);

/// Converts an engine error into the Python exception Python defines for it:
/// `novacron.errors.EngineError`, or for the migration channel
/// `novacron.migration.frames.FrameError` / `DigestMismatch`.
pub(crate) fn to_py_err(err: engine::EngineError) -> PyErr {
    match err {
        engine::EngineError::Channel { .. } => FrameError::new_err(err.to_string()),
        engine::EngineError::DigestMismatch { .. } => DigestMismatch::new_err(err.to_string()),
        _ => EngineError::new_err(err.to_string()),
    }
}

/// A read-only view of a contiguous Python buffer (bytes, bytearray, memoryview, mmap).
pub(crate) struct ByteView {
    buffer: PyBuffer<u8>,
}

impl ByteView {
    fn new(buffer: PyBuffer<u8>) -> PyResult<Self> {
        if !buffer.is_c_contiguous() {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "buffer must be C-contiguous",
            ));
        }
        Ok(Self { buffer })
    }

    fn as_slice(&self) -> &[u8] {
        let len = self.buffer.len_bytes();
        if len == 0 {
            return &[];
        }
        // SAFETY: the buffer is C-contiguous (checked in `new`), `buf_ptr` points to
        // `len_bytes` initialised bytes, and `self.buffer` keeps the exporting object
        // and its memory alive for the lifetime of the returned slice. The engine only
        // reads; a caller mutating a bytearray from another thread during the call sees
        // an unspecified (but memory-safe for u8) result, as with any buffer consumer.
        unsafe { std::slice::from_raw_parts(self.buffer.buf_ptr().cast::<u8>(), len) }
    }
}

/// Runs `work` with the GIL released and maps engine errors to Python exceptions.
pub(crate) fn detached<T, F>(py: Python<'_>, work: F) -> PyResult<T>
where
    T: Send,
    F: Send + FnOnce() -> engine::Result<T>,
{
    py.detach(work).map_err(to_py_err)
}

/// A new `bytes` of `len` bytes that `fill` writes whole. Unlike `PyBytes::new_with`,
/// the buffer is not cleared first: for a large one that is fresh memory, clearing
/// faults every page in (with the GIL held) only for `fill` to write it again.
fn filled_bytes<'py>(
    py: Python<'py>,
    len: usize,
    fill: impl FnOnce(&mut [MaybeUninit<u8>]) -> PyResult<()>,
) -> PyResult<Bound<'py, PyBytes>> {
    let size = ffi::Py_ssize_t::try_from(len)
        .map_err(|_| pyo3::exceptions::PyOverflowError::new_err("output too large"))?;
    // SAFETY: a null source asks CPython for a new bytes object of `size` bytes whose
    // contents are not initialised; the result is a new reference or null with an
    // exception set, which `from_owned_ptr_or_err` turns into an error.
    let object = unsafe {
        Bound::from_owned_ptr_or_err(py, ffi::PyBytes_FromStringAndSize(std::ptr::null(), size))?
    };
    // SAFETY: `object` is the bytes object just created (the cast cannot be wrong), so
    // `PyBytes_AsString` returns its buffer of exactly `len` bytes. No other code has
    // seen the object, so the slice is the only access to the buffer until `fill`
    // returns, and `MaybeUninit` admits the uninitialised contents.
    let (bytes, buffer) = unsafe {
        let bytes = object.cast_into_unchecked::<PyBytes>();
        let data = ffi::PyBytes_AsString(bytes.as_ptr()).cast::<MaybeUninit<u8>>();
        (bytes, std::slice::from_raw_parts_mut(data, len))
    };
    fill(buffer)?;
    Ok(bytes)
}

/// Outputs at least this long are copied into their `bytes` with the GIL released.
const DETACHED_COPY: usize = 64 * 1024;

/// `data` copied into a new `bytes`. A long one (a channel's frames, a rebuilt
/// stream: megabytes) is copied with the GIL released: the new object is not visible
/// to any other thread yet, so the copy need not hold up the others.
pub(crate) fn copied_bytes<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    if data.len() < DETACHED_COPY {
        return Ok(PyBytes::new(py, data));
    }
    filled_bytes(py, data.len(), |out| {
        py.detach(|| engine::write_slice(out, data));
        Ok(())
    })
}

/// Room reserved for an encoder's output of `pages` pages: enough for any, up to 1 GiB.
/// Address space only: memory is used as the batches are written, and a larger output
/// grows without a copy (a buffer this large is its own mapping, which the kernel
/// moves).
fn output_room(pages: usize) -> usize {
    pages.saturating_mul(engine::MAX_WIRE_PER_PAGE).min(1 << 30)
}

/// An encoder's output for `pages` pages, which `encode` appends to a buffer with room
/// for it, handed to Python without a copy (the encoding with the GIL released).
fn encoded<'py>(
    py: Python<'py>,
    pages: usize,
    encode: impl Send + FnOnce(&mut Vec<u8>) -> engine::Result<()>,
) -> PyResult<Bound<'py, PyMemoryView>> {
    let out = detached(py, || {
        let mut out = lent::output_buffer(output_room(pages));
        encode(&mut out)?;
        Ok(out)
    })?;
    lent::output(py, out)
}

/// The result of `scan_pages`. It remembers the `bytes` object it scanned (when it
/// was one: immutable, so the hashes stay true of it), which lets an encoder take the
/// hashes instead of computing them again.
#[pyclass(frozen, module = "novacron._core")]
struct PageScan {
    inner: engine::PageScan,
    source: Option<Py<PyAny>>,
}

#[pymethods]
impl PageScan {
    #[getter]
    fn pages(&self) -> usize {
        self.inner.pages
    }

    #[getter]
    fn zero_pages(&self) -> usize {
        self.inner.zero_pages
    }

    /// Bitmap of zero pages, bit `i % 8` of byte `i // 8` for page `i`.
    #[getter]
    fn zero_bitmap<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.zero_bitmap)
    }

    /// xxh3-128 hash of each page, 16 little-endian bytes per page.
    #[getter]
    fn hashes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.hashes)
    }

    /// Dirty-page bitmap of the scanned image against an earlier scan's hashes (what
    /// `dirty_bitmap(previous_hashes, image)` returns, without hashing again).
    fn dirty_since<'py>(
        &self,
        py: Python<'py>,
        previous_hashes: PyBuffer<u8>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let old = ByteView::new(previous_hashes)?;
        let bitmap = detached(py, || self.inner.dirty_since(old.as_slice()))?;
        Ok(PyBytes::new(py, &bitmap))
    }

    fn __repr__(&self) -> String {
        format!(
            "PageScan(pages={}, zero_pages={})",
            self.inner.pages, self.inner.zero_pages
        )
    }
}

/// True when every byte of `page` is zero.
#[pyfunction]
fn is_zero_page(py: Python<'_>, page: PyBuffer<u8>) -> PyResult<bool> {
    let view = ByteView::new(page)?;
    detached(py, || Ok(engine::is_zero_page(view.as_slice())))
}

/// Scans a memory image (a whole number of 4 KiB pages).
#[pyfunction]
fn scan_pages(py: Python<'_>, image: &Bound<'_, PyAny>) -> PyResult<PageScan> {
    let view = ByteView::new(PyBuffer::get(image)?)?;
    let inner = detached(py, || engine::scan_pages(view.as_slice()))?;
    let source = image
        .is_exact_instance_of::<PyBytes>()
        .then(|| image.clone().unbind());
    Ok(PageScan { inner, source })
}

/// Dirty-page bitmap of `image` against the hashes of an earlier scan.
#[pyfunction]
fn dirty_bitmap<'py>(
    py: Python<'py>,
    previous_hashes: PyBuffer<u8>,
    image: PyBuffer<u8>,
) -> PyResult<Bound<'py, PyBytes>> {
    let old = ByteView::new(previous_hashes)?;
    let view = ByteView::new(image)?;
    let bitmap = detached(py, || engine::dirty_bitmap(old.as_slice(), view.as_slice()))?;
    Ok(PyBytes::new(py, &bitmap))
}

/// An encoder's record counts, bytes and cached pages, as the Python API names them.
pub(crate) fn encode_stats_map(
    encoder: &engine::Encoder,
) -> std::collections::HashMap<&'static str, u64> {
    let s = encoder.stats;
    [
        ("pages", s.pages),
        ("zero", s.zero),
        ("unchanged", s.unchanged),
        ("dup", s.dup),
        ("delta", s.delta),
        ("delta_from", s.delta_from),
        ("filtered", s.filtered),
        ("compressed", s.compressed),
        ("raw", s.raw),
        ("wire_bytes", s.wire_bytes),
        ("cached_pages", encoder.cached_pages() as u64),
    ]
    .into_iter()
    .collect()
}

pub(crate) fn codec_from_name(name: &str) -> PyResult<engine::Codec> {
    match name {
        "lz4" => Ok(engine::Codec::Lz4),
        "zstd" => Ok(engine::Codec::Zstd),
        "none" => Ok(engine::Codec::None),
        other => Err(pyo3::exceptions::PyValueError::new_err(format!(
            "compression must be lz4, zstd or none, not {other:?}"
        ))),
    }
}

/// The sending side of a page stream for one guest.
#[pyclass(module = "novacron._core")]
struct PageEncoder {
    inner: engine::Encoder,
}

#[pymethods]
impl PageEncoder {
    #[new]
    #[pyo3(signature = (pages, compression="lz4", zstd_level=1, dedup=true, delta_cache_pages=8192, batch_pages=1024, threads=1, wire_version=engine::wire::VERSION))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        pages: usize,
        compression: &str,
        zstd_level: i32,
        dedup: bool,
        delta_cache_pages: usize,
        batch_pages: usize,
        threads: usize,
        wire_version: u8,
    ) -> PyResult<Self> {
        let config = engine::EncoderConfig {
            codec: codec_from_name(compression)?,
            zstd_level,
            dedup,
            delta_cache_pages,
            batch_pages,
            threads,
            wire_version,
        };
        let inner = engine::Encoder::new(pages, config).map_err(to_py_err)?;
        Ok(Self { inner })
    }

    /// Encodes the pages `indices` (default: all) of `image` (the whole guest memory).
    /// `scan`: a `scan_pages` of this very `bytes` object, whose hashes are used instead
    /// of hashing the offered pages again.
    #[pyo3(signature = (image, indices=None, scan=None))]
    fn encode<'py>(
        &mut self,
        py: Python<'py>,
        image: &Bound<'py, PyAny>,
        indices: Option<Vec<u64>>,
        scan: Option<&Bound<'py, PageScan>>,
    ) -> PyResult<Bound<'py, PyMemoryView>> {
        let scan = scan.map(Bound::get);
        if let Some(scan) = scan {
            if !scan.source.as_ref().is_some_and(|s| s.bind(py).is(image)) {
                return Err(pyo3::exceptions::PyValueError::new_err(
                    "scan must be a scan_pages() of this very bytes object",
                ));
            }
        }
        let view = ByteView::new(PyBuffer::get(image)?)?;
        let indices = indices
            .unwrap_or_else(|| (0..(view.as_slice().len() / engine::PAGE_SIZE) as u64).collect());
        let inner = &mut self.inner;
        let scan = scan.map(|s| &s.inner);
        encoded(py, indices.len(), |out| {
            inner.encode_into(view.as_slice(), &indices, scan, out)
        })
    }

    /// Encodes pages delivered one by one (a migration stream's): `pages` holds one page
    /// per index, back to back.
    fn encode_pages<'py>(
        &mut self,
        py: Python<'py>,
        indices: Vec<u64>,
        pages: PyBuffer<u8>,
    ) -> PyResult<Bound<'py, PyMemoryView>> {
        let view = ByteView::new(pages)?;
        let inner = &mut self.inner;
        encoded(py, indices.len(), |out| {
            inner.encode_pages_into(&indices, view.as_slice(), out)
        })
    }

    /// Takes the receiver's announced hashes; returns how many.
    fn announce(&mut self, hashes: PyBuffer<u8>) -> PyResult<usize> {
        let view = ByteView::new(hashes)?;
        self.inner.announce(view.as_slice()).map_err(to_py_err)
    }

    /// Record counts and bytes so far.
    fn stats(&self) -> std::collections::HashMap<&'static str, u64> {
        encode_stats_map(&self.inner)
    }
}

/// The receiver's page store, shared across guests and migrations.
#[pyclass(module = "novacron._core", frozen)]
pub(crate) struct PageStore {
    inner: engine::PageStore,
}

#[pymethods]
impl PageStore {
    #[new]
    fn new(capacity_pages: usize) -> Self {
        Self {
            inner: engine::PageStore::new(capacity_pages),
        }
    }

    /// Adds every non-zero page of `image`; returns how many were new.
    fn add_image(&self, py: Python<'_>, image: PyBuffer<u8>) -> PyResult<usize> {
        let view = ByteView::new(image)?;
        if view.as_slice().len() % engine::PAGE_SIZE != 0 {
            return Err(to_py_err(engine::EngineError::NotPageAligned {
                len: view.as_slice().len(),
            }));
        }
        let inner = &self.inner;
        detached(py, || Ok(inner.add_image(view.as_slice())))
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }
}

/// The receiving side of a page stream for one guest.
#[pyclass(module = "novacron._core")]
struct PageDecoder {
    inner: engine::Decoder,
}

#[pymethods]
impl PageDecoder {
    #[new]
    #[pyo3(signature = (pages, threads=1))]
    fn new(pages: usize, threads: usize) -> PyResult<Self> {
        Ok(Self {
            inner: engine::Decoder::with_threads(pages, threads).map_err(to_py_err)?,
        })
    }

    /// Verifies and applies every batch in `stream`; returns how many there were.
    fn decode(&mut self, py: Python<'_>, stream: PyBuffer<u8>) -> PyResult<u64> {
        let view = ByteView::new(stream)?;
        let inner = &mut self.inner;
        detached(py, || inner.decode(view.as_slice()))
    }

    /// Pins the pages of `store` for this stream; returns their hashes to announce.
    fn announce<'py>(&mut self, py: Python<'py>, store: &PageStore) -> Bound<'py, PyBytes> {
        let hashes = self.inner.announce(&store.inner);
        PyBytes::new(py, &hashes)
    }

    /// A copy of the receiver's guest memory.
    fn image<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let inner = &self.inner;
        filled_bytes(py, inner.pages() * engine::PAGE_SIZE, |out| {
            py.detach(|| inner.copy_image(out));
            Ok(())
        })
    }

    /// The receiver's copies of pages `indices`, packed in that order (no copy of the
    /// whole image).
    fn pages<'py>(&self, py: Python<'py>, indices: Vec<u64>) -> PyResult<Bound<'py, PyBytes>> {
        let inner = &self.inner;
        let total = inner.pages() as u64;
        if let Some(bad) = indices.iter().find(|&&i| i >= total) {
            return Err(to_py_err(engine::EngineError::invalid(format!(
                "page index {bad} out of range"
            ))));
        }
        filled_bytes(py, indices.len() * engine::PAGE_SIZE, |out| {
            for (chunk, &i) in out.chunks_mut(engine::PAGE_SIZE).zip(&indices) {
                engine::write_slice(chunk, inner.page(i as usize));
            }
            Ok(())
        })
    }

    /// Pages written so far.
    #[getter]
    fn pages_written(&self) -> u64 {
        self.inner.pages
    }
}

/// The native module.
#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("PAGE_SIZE", engine::PAGE_SIZE)?;
    m.add("HASH_LEN", engine::HASH_LEN)?;
    m.add("WIRE_VERSION", engine::wire::VERSION)?;
    m.add("OLDEST_WIRE_VERSION", engine::wire::OLDEST_VERSION)?;
    m.add_class::<PageScan>()?;
    m.add_class::<PageEncoder>()?;
    m.add_class::<PageDecoder>()?;
    m.add_class::<PageStore>()?;
    m.add_class::<placement::Placer>()?;
    m.add_class::<stream::QemuStreamSplitter>()?;
    m.add_class::<channel::ChannelSender>()?;
    m.add_class::<channel::ChannelReceiver>()?;
    m.add_class::<placement::Placement>()?;
    m.add_class::<disk::StreamDigest>()?;
    m.add_function(wrap_pyfunction!(disk::pack_extent, m)?)?;
    m.add_function(wrap_pyfunction!(disk::unpack_piece, m)?)?;
    m.add_function(wrap_pyfunction!(placement::parse_cpuset, m)?)?;
    m.add_function(wrap_pyfunction!(placement::format_cpuset, m)?)?;
    m.add_function(wrap_pyfunction!(is_zero_page, m)?)?;
    m.add_function(wrap_pyfunction!(scan_pages, m)?)?;
    m.add_function(wrap_pyfunction!(dirty_bitmap, m)?)?;
    Ok(())
}
