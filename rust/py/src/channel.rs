//! `novacron._core.ChannelSender` / `ChannelReceiver`: both halves of the migration
//! channel (`novacron_engine::channel`), one call per read, the GIL released around it
//! and around copying a long output into its `bytes`; the stream a receiver releases is
//! lent without a copy (`lent`).

use crate::lent::{lent, spare};
use crate::{codec_from_name, copied_bytes, detached, ByteView, PageStore};
use novacron_engine as engine;
use novacron_engine::channel::{SenderConfig, StreamReceiver, StreamSender};
use pyo3::buffer::PyBuffer;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyMemoryView};

/// The source's half: QEMU's stream in, frames out.
#[pyclass(module = "novacron._core")]
pub struct ChannelSender {
    inner: StreamSender,
}

#[pymethods]
impl ChannelSender {
    #[new]
    #[pyo3(signature = (batch_pages=1024, wait_for_announce=false, store=None, gated=false, packed_heads=true, compression="lz4", zstd_level=1, dedup=true, delta_cache_pages=8192, threads=1, wire_version=engine::wire::VERSION))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        batch_pages: usize,
        wait_for_announce: bool,
        store: Option<PyRef<'_, PageStore>>,
        gated: bool,
        packed_heads: bool,
        compression: &str,
        zstd_level: i32,
        dedup: bool,
        delta_cache_pages: usize,
        threads: usize,
        wire_version: u8,
    ) -> PyResult<Self> {
        if batch_pages == 0 || batch_pages > 65_536 {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "batch_pages must be 1..=65536",
            ));
        }
        let engine = engine::EncoderConfig {
            codec: codec_from_name(compression)?,
            zstd_level,
            dedup,
            delta_cache_pages,
            batch_pages: 1024,
            threads,
            wire_version,
        };
        // checked now, not at the first page
        engine::Encoder::new(1, engine).map_err(crate::to_py_err)?;
        let config = SenderConfig {
            batch_pages,
            wait_for_announce,
            store: store.map(|s| s.inner.clone()),
            gated,
            packed_heads,
            engine,
        };
        Ok(Self {
            inner: StreamSender::new(config),
        })
    }

    /// Frames for the next bytes of QEMU's stream (possibly none yet).
    fn feed<'py>(&mut self, py: Python<'py>, data: PyBuffer<u8>) -> PyResult<Bound<'py, PyBytes>> {
        let view = ByteView::new(data)?;
        let inner = &mut self.inner;
        let out = detached(py, || inner.feed(view.as_slice()))?;
        copied_bytes(py, &out)
    }

    /// The destination's page-store hashes; returns the frames held back for them.
    fn announce<'py>(
        &mut self,
        py: Python<'py>,
        hashes: PyBuffer<u8>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let view = ByteView::new(hashes)?;
        let inner = &mut self.inner;
        let out = detached(py, || inner.announce(view.as_slice()))?;
        copied_bytes(py, &out)
    }

    /// Everything held back that may go now.
    fn flush<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let inner = &mut self.inner;
        let out = detached(py, || inner.flush())?;
        copied_bytes(py, &out)
    }

    /// Lets what the gate held go.
    fn open_gate<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let inner = &mut self.inner;
        let out = detached(py, || inner.open_gate())?;
        copied_bytes(py, &out)
    }

    /// The end of the stream: the rest, then `END`.
    fn finish<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let inner = &mut self.inner;
        let out = detached(py, || inner.finish())?;
        copied_bytes(py, &out)
    }

    /// The stream reached what the closed gate holds back.
    #[getter]
    fn at_gate(&self) -> bool {
        self.inner.at_gate()
    }

    /// Whether feeding `len` bytes may encode a batch.
    fn may_encode(&self, len: usize) -> bool {
        self.inner.may_encode(len)
    }

    /// Bytes of QEMU's stream taken in.
    #[getter]
    fn length(&self) -> u64 {
        self.inner.length
    }

    /// Frame bytes produced.
    #[getter]
    fn wire_bytes(&self) -> u64 {
        self.inner.wire_bytes
    }

    /// Hashes the destination announced.
    #[getter]
    fn announced(&self) -> usize {
        self.inner.announced
    }

    /// Why the rest of the stream passes through verbatim, if it does.
    #[getter]
    fn passthrough_reason(&self) -> Option<&'static str> {
        self.inner.passthrough_reason()
    }

    /// Pages of the guest (0 until the stream said).
    #[getter]
    fn total_pages(&self) -> u64 {
        self.inner.total_pages()
    }

    /// `{"bytes", "pages", "zero_pages", "verbatim_bytes"}` split so far.
    #[getter]
    fn split_stats(&self) -> std::collections::HashMap<&'static str, u64> {
        crate::stream::stats_map(self.inner.split_stats())
    }

    /// The page engine's record counts so far (empty before the first page): the keys
    /// of `Encoder.stats`.
    #[getter]
    fn engine_stats(&self) -> std::collections::HashMap<&'static str, u64> {
        self.inner
            .engine()
            .map(crate::encode_stats_map)
            .unwrap_or_default()
    }
}

/// The destination's half: frames in, vouched-for stream bytes out.
#[pyclass(module = "novacron._core")]
pub struct ChannelReceiver {
    inner: StreamReceiver,
}

#[pymethods]
impl ChannelReceiver {
    #[new]
    #[pyo3(signature = (store=None, max_unchecked=67_108_864, threads=1, max_pages=None))]
    fn new(
        store: Option<PyRef<'_, PageStore>>,
        max_unchecked: usize,
        threads: usize,
        max_pages: Option<u64>,
    ) -> PyResult<Self> {
        let mut inner = StreamReceiver::new(store.map(|s| s.inner.clone()), max_unchecked)
            .decode_threads(threads)
            .map_err(crate::to_py_err)?;
        if let Some(pages) = max_pages {
            inner = inner.max_pages(pages).map_err(crate::to_py_err)?;
        }
        Ok(Self { inner })
    }

    /// Applies one frame; returns the stream bytes now vouched for, lent without a
    /// copy (a read-only `memoryview`; empty when the frame vouched for none).
    fn apply<'py>(
        &mut self,
        py: Python<'py>,
        kind: u8,
        payload: PyBuffer<u8>,
    ) -> PyResult<Bound<'py, PyMemoryView>> {
        let view = ByteView::new(payload)?;
        let inner = &mut self.inner;
        detached(py, || inner.apply(kind, view.as_slice()).map(<[u8]>::len))?;
        // the next bytes are rebuilt in a buffer an earlier release gave back
        lent(py, self.inner.take_released(spare))
    }

    /// Frames for the source (the `ANNOUNCE` answering `START`), once.
    fn take_reply<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let reply = std::mem::take(&mut self.inner.reply);
        copied_bytes(py, &reply)
    }

    /// Adds up to `count` pages of the arrived memory from page `start` on to the page
    /// store (after the stream: for the next migration); returns how many were new.
    fn keep(&self, py: Python<'_>, start: u64, count: u64) -> PyResult<usize> {
        let inner = &self.inner;
        detached(py, || Ok(inner.keep(start, count)))
    }

    /// `END` arrived and matched.
    #[getter]
    fn ended(&self) -> bool {
        self.inner.ended
    }

    /// Bytes of the stream rebuilt so far.
    #[getter]
    fn length(&self) -> u64 {
        self.inner.length()
    }

    /// Pages of the guest.
    #[getter]
    fn total_pages(&self) -> u64 {
        self.inner.total_pages()
    }
}
