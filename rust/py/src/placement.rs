//! `novacron._core.Placer`: the NUMA placement engine for one host.
//!
//! Topologies, requests and placements cross the boundary as plain dicts and
//! lists (placements are stored as JSON by the daemon and restored with
//! `commit`). Decisions take well under a microsecond, but still run with the
//! GIL released like every other engine call.

use novacron_placement as placement;
use placement::{Cell, CpuPolicy, Host, HostConfig, MemoryPolicy, Request};
use pyo3::exceptions::PyValueError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

pyo3::import_exception!(novacron.errors, InsufficientResources);
pyo3::import_exception!(novacron.errors, Conflict);
pyo3::import_exception!(novacron.errors, EngineError);

fn to_py_err(err: placement::PlacementError) -> PyErr {
    match err {
        placement::PlacementError::NoFit(m) => InsufficientResources::new_err(m),
        placement::PlacementError::Conflict(m) => Conflict::new_err(m),
        placement::PlacementError::Invalid(m) => EngineError::new_err(m),
    }
}

fn item<'py, T: FromPyObjectOwned<'py>>(
    d: &Bound<'py, PyDict>,
    key: &str,
    what: &str,
) -> PyResult<T> {
    match d.get_item(key)? {
        Some(v) => v
            .extract::<T>()
            .map_err(Into::into)
            .map_err(|e: PyErr| PyValueError::new_err(format!("{what}.{key}: {e}"))),
        None => Err(PyValueError::new_err(format!("{what}: missing {key:?}"))),
    }
}

fn node_from(d: &Bound<'_, PyDict>) -> PyResult<placement::Node> {
    let cpus: Vec<(u32, u32)> = item(d, "cpus", "node")?;
    let hugepages: std::collections::BTreeMap<u64, u64> = match d.get_item("hugepages")? {
        Some(v) => v.extract()?,
        None => Default::default(),
    };
    let distances: std::collections::BTreeMap<u32, u32> = match d.get_item("distances")? {
        Some(v) => v.extract()?,
        None => Default::default(),
    };
    Ok(placement::Node {
        id: item(d, "id", "node")?,
        memory_mib: item(d, "memory_mib", "node")?,
        cpus: cpus
            .into_iter()
            .map(|(id, core)| placement::Cpu { id, core })
            .collect(),
        hugepages: hugepages
            .into_iter()
            .map(|(size_kib, total)| placement::HugePages { size_kib, total })
            .collect(),
        distances: distances.into_iter().collect(),
    })
}

fn cpu_policy(name: &str) -> PyResult<CpuPolicy> {
    match name {
        "shared" => Ok(CpuPolicy::Shared),
        "dedicated" => Ok(CpuPolicy::Dedicated),
        _ => Err(PyValueError::new_err(format!(
            "unknown cpu policy {name:?}"
        ))),
    }
}

fn memory_policy(name: &str) -> PyResult<MemoryPolicy> {
    match name {
        "strict" => Ok(MemoryPolicy::Strict),
        "preferred" => Ok(MemoryPolicy::Preferred),
        "interleave" => Ok(MemoryPolicy::Interleave),
        _ => Err(PyValueError::new_err(format!(
            "unknown memory policy {name:?}"
        ))),
    }
}

fn placement_to_py<'py>(py: Python<'py>, p: &placement::Placement) -> PyResult<Bound<'py, PyDict>> {
    // interned keys and policy names: building the dict is most of a decision's cost
    let out = PyDict::new(py);
    let cpu = match p.cpu {
        CpuPolicy::Shared => intern!(py, "shared"),
        CpuPolicy::Dedicated => intern!(py, "dedicated"),
    };
    let memory = match p.memory {
        MemoryPolicy::Strict => intern!(py, "strict"),
        MemoryPolicy::Preferred => intern!(py, "preferred"),
        MemoryPolicy::Interleave => intern!(py, "interleave"),
    };
    out.set_item(intern!(py, "cpu"), cpu)?;
    out.set_item(intern!(py, "memory"), memory)?;
    out.set_item(intern!(py, "hugepage_kib"), p.hugepage_kib)?;
    let cells = PyList::empty(py);
    for c in &p.cells {
        let cell = PyDict::new(py);
        cell.set_item(intern!(py, "node"), c.node)?;
        cell.set_item(intern!(py, "first_vcpu"), c.first_vcpu)?;
        cell.set_item(intern!(py, "vcpus"), c.vcpus)?;
        cell.set_item(intern!(py, "memory_kib"), c.memory_kib)?;
        cell.set_item(intern!(py, "cpus"), PyList::new(py, &c.cpus)?)?;
        cells.append(cell)?;
    }
    out.set_item(intern!(py, "cells"), cells)?;
    out.set_item(
        intern!(py, "emulator_cpus"),
        PyList::new(py, &p.emulator_cpus)?,
    )?;
    Ok(out)
}

fn placement_from(d: &Bound<'_, PyDict>) -> PyResult<placement::Placement> {
    let cells: Vec<Bound<'_, PyDict>> = item(d, "cells", "placement")?;
    let mut out = Vec::with_capacity(cells.len());
    for c in &cells {
        out.push(Cell {
            node: item(c, "node", "cell")?,
            first_vcpu: item(c, "first_vcpu", "cell")?,
            vcpus: item(c, "vcpus", "cell")?,
            memory_kib: item(c, "memory_kib", "cell")?,
            cpus: item(c, "cpus", "cell")?,
        });
    }
    Ok(placement::Placement {
        cpu: cpu_policy(&item::<String>(d, "cpu", "placement")?)?,
        memory: memory_policy(&item::<String>(d, "memory", "placement")?)?,
        hugepage_kib: item(d, "hugepage_kib", "placement")?,
        cells: out,
        emulator_cpus: item(d, "emulator_cpus", "placement")?,
    })
}

/// Parses a cpuset list (`0-3,8,^2`) into sorted ids.
#[pyfunction]
pub fn parse_cpuset(text: &str) -> PyResult<Vec<u32>> {
    placement::cpuset::parse(text).map_err(|e| PyValueError::new_err(e.to_string()))
}

/// Formats ids as the shortest cpuset list (`0-3,8`).
#[pyfunction]
pub fn format_cpuset(cpus: Vec<u32>) -> String {
    placement::cpuset::format(&cpus)
}

/// One decision of the engine. Built without touching Python objects; its parts
/// become Python values only when read (`to_dict`, `cells`, ...), which keeps a
/// decision's cost at the engine's, not at building a dict tree.
#[pyclass(module = "novacron._core", frozen, eq)]
#[derive(PartialEq)]
pub struct Placement {
    inner: placement::Placement,
}

#[pymethods]
impl Placement {
    /// `shared` or `dedicated`.
    #[getter]
    fn cpu<'py>(&self, py: Python<'py>) -> &Bound<'py, pyo3::types::PyString> {
        match self.inner.cpu {
            CpuPolicy::Shared => intern!(py, "shared"),
            CpuPolicy::Dedicated => intern!(py, "dedicated"),
        }
    }

    /// Host node ids, one per cell.
    #[getter]
    fn nodes(&self) -> Vec<u32> {
        self.inner.nodes()
    }

    /// The host threads guest vCPU `vcpu` may run on.
    fn vcpu_cpus(&self, vcpu: u32) -> Option<Vec<u32>> {
        self.inner.vcpu_cpus(vcpu).map(<[u32]>::to_vec)
    }

    /// The whole decision as plain dicts and lists (the form stored and sent).
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        placement_to_py(py, &self.inner)
    }

    fn __repr__(&self) -> String {
        format!("Placement({:?})", self.inner)
    }
}

/// The placement state of one host.
#[pyclass(module = "novacron._core")]
pub struct Placer {
    host: Host,
}

impl Placer {
    fn request(
        vcpus: u32,
        memory_mib: u64,
        cpu: &str,
        memory: &str,
        hugepage_kib: Option<u64>,
    ) -> PyResult<Request> {
        Ok(Request {
            vcpus,
            memory_mib,
            cpu: cpu_policy(cpu)?,
            memory: memory_policy(memory)?,
            hugepage_kib,
        })
    }
}

#[pymethods]
impl Placer {
    #[new]
    #[pyo3(signature = (nodes, dedicated_cpus = Vec::new(), shared_cpus = Vec::new(), reserved_memory_mib = 0, shared_overcommit = 4.0))]
    fn new(
        nodes: Vec<Bound<'_, PyDict>>,
        dedicated_cpus: Vec<u32>,
        shared_cpus: Vec<u32>,
        reserved_memory_mib: u64,
        shared_overcommit: f64,
    ) -> PyResult<Self> {
        let topology = placement::Topology {
            nodes: nodes.iter().map(node_from).collect::<PyResult<_>>()?,
        };
        let config = HostConfig {
            dedicated_cpus,
            shared_cpus,
            reserved_memory_mib,
            shared_overcommit,
        };
        let host = Host::new(&topology, &config).map_err(to_py_err)?;
        Ok(Self { host })
    }

    /// The decision for a VM on the current state (nothing is recorded).
    #[pyo3(signature = (vcpus, memory_mib, cpu = "shared", memory = "strict", hugepage_kib = None))]
    fn place(
        &self,
        py: Python<'_>,
        vcpus: u32,
        memory_mib: u64,
        cpu: &str,
        memory: &str,
        hugepage_kib: Option<u64>,
    ) -> PyResult<Placement> {
        let req = Self::request(vcpus, memory_mib, cpu, memory, hugepage_kib)?;
        let host = &self.host;
        let inner = py.detach(|| host.place(&req)).map_err(to_py_err)?;
        Ok(Placement { inner })
    }

    /// Decisions for many requests `(vcpus, memory_mib, cpu, memory, hugepage_kib)`
    /// on the current state, each independent of the others (nothing is recorded);
    /// `None` where a request does not fit. One GIL release for the whole batch.
    fn place_many(
        &self,
        py: Python<'_>,
        requests: Vec<(u32, u64, String, String, Option<u64>)>,
    ) -> PyResult<Vec<Option<Placement>>> {
        let reqs = requests
            .iter()
            .map(|(v, m, c, mem, h)| Self::request(*v, *m, c, mem, *h))
            .collect::<PyResult<Vec<_>>>()?;
        let host = &self.host;
        let decided = py
            .detach(|| {
                reqs.iter()
                    .map(|r| match host.place(r) {
                        Ok(p) => Ok(Some(p)),
                        Err(placement::PlacementError::NoFit(_)) => Ok(None),
                        Err(e) => Err(e),
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(to_py_err)?;
        Ok(decided
            .into_iter()
            .map(|p| p.map(|inner| Placement { inner }))
            .collect())
    }

    /// Decides and records a placement for `vm`.
    #[pyo3(signature = (vm, vcpus, memory_mib, cpu = "shared", memory = "strict", hugepage_kib = None))]
    #[allow(clippy::too_many_arguments)]
    fn allocate(
        &mut self,
        py: Python<'_>,
        vm: &str,
        vcpus: u32,
        memory_mib: u64,
        cpu: &str,
        memory: &str,
        hugepage_kib: Option<u64>,
    ) -> PyResult<Placement> {
        let req = Self::request(vcpus, memory_mib, cpu, memory, hugepage_kib)?;
        let host = &mut self.host;
        let inner = py.detach(|| host.allocate(vm, &req)).map_err(to_py_err)?;
        Ok(Placement { inner })
    }

    /// Records a placement made earlier (e.g. read back from the state store).
    fn commit(&mut self, py: Python<'_>, vm: &str, placement: Bound<'_, PyDict>) -> PyResult<()> {
        let p = placement_from(&placement)?;
        let host = &mut self.host;
        py.detach(|| host.commit(vm, p)).map_err(to_py_err)
    }

    /// Gives back what `vm` holds; False if it held nothing.
    fn release(&mut self, vm: &str) -> bool {
        self.host.release(vm)
    }

    /// The recorded placement of `vm`, or None.
    fn allocation(&self, vm: &str) -> Option<Placement> {
        self.host
            .allocation(vm)
            .map(|p| Placement { inner: p.clone() })
    }

    /// How well a VM fits (0..1, higher = more headroom left), or None.
    #[pyo3(signature = (vcpus, memory_mib, cpu = "shared", memory = "strict", hugepage_kib = None))]
    fn score(
        &self,
        py: Python<'_>,
        vcpus: u32,
        memory_mib: u64,
        cpu: &str,
        memory: &str,
        hugepage_kib: Option<u64>,
    ) -> PyResult<Option<f64>> {
        let req = Self::request(vcpus, memory_mib, cpu, memory, hugepage_kib)?;
        let host = &self.host;
        Ok(py.detach(|| host.score(&req)))
    }

    /// What is free on every node, nodes in id order.
    fn free<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        for n in self.host.free() {
            let d = PyDict::new(py);
            d.set_item("id", n.id)?;
            d.set_item("memory_free_mib", n.memory_free_kib / 1024)?;
            d.set_item("memory_capacity_mib", n.memory_capacity_kib / 1024)?;
            let huge = PyDict::new(py);
            for (size, free, total) in n.hugepages {
                huge.set_item(size, (free, total))?;
            }
            d.set_item("hugepages", huge)?;
            d.set_item("dedicated_free", n.dedicated_free)?;
            d.set_item("dedicated_total", n.dedicated_total)?;
            d.set_item("shared_cpus", n.shared_cpus)?;
            d.set_item("shared_vcpus", n.shared_vcpus)?;
            d.set_item("shared_capacity", n.shared_capacity)?;
            out.append(d)?;
        }
        Ok(out)
    }

    fn __len__(&self) -> usize {
        self.host.vm_count()
    }
}
