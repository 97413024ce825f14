//! A host's placement state: what is free on every node, and who holds what.
//!
//! All amounts are exact integers (KiB, pages, threads, vCPUs) so that releasing a
//! VM restores precisely the state before it was committed.

use crate::error::{PlacementError, Result};
use crate::topology::{HostConfig, Topology};
use std::collections::HashMap;

/// How a VM's vCPUs use host threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CpuPolicy {
    /// vCPUs float over a node's shared threads (overcommit allowed up to the ratio).
    Shared,
    /// Each vCPU is pinned to a host thread of its own.
    Dedicated,
}

/// How a VM's memory is bound to the nodes its vCPUs run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemoryPolicy {
    /// Only from those nodes.
    Strict,
    /// From those nodes; the kernel may fall back elsewhere under pressure (the
    /// engine still charges those nodes, so it never plans an overcommit).
    Preferred,
    /// Interleaved over those nodes (one guest NUMA cell even when split).
    Interleave,
}

/// What a VM asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Number of vCPUs (≥ 1).
    pub vcpus: u32,
    /// Guest memory, MiB (≥ 1).
    pub memory_mib: u64,
    /// CPU policy.
    pub cpu: CpuPolicy,
    /// Memory policy.
    pub memory: MemoryPolicy,
    /// Back memory with hugepages of this size (KiB), or normal pages.
    pub hugepage_kib: Option<u64>,
}

/// The part of a VM on one host node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    /// Host node id.
    pub node: u32,
    /// First guest vCPU of the cell (cells number vCPUs 0..n in order).
    pub first_vcpu: u32,
    /// Number of guest vCPUs in the cell.
    pub vcpus: u32,
    /// Guest memory in the cell, KiB.
    pub memory_kib: u64,
    /// Dedicated: the host thread of each vCPU, in vCPU order. Shared: the node's
    /// shared threads, which every vCPU of the cell floats over.
    pub cpus: Vec<u32>,
}

/// The engine's decision for one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// CPU policy it was made for.
    pub cpu: CpuPolicy,
    /// Memory policy it was made for.
    pub memory: MemoryPolicy,
    /// Hugepage size backing the memory, if any.
    pub hugepage_kib: Option<u64>,
    /// One cell per host node used; more than one means a guest NUMA topology.
    pub cells: Vec<Cell>,
    /// Where QEMU's emulator threads run.
    pub emulator_cpus: Vec<u32>,
}

impl Placement {
    /// The host threads guest vCPU `vcpu` may run on.
    #[must_use]
    pub fn vcpu_cpus(&self, vcpu: u32) -> Option<&[u32]> {
        let cell = self
            .cells
            .iter()
            .find(|c| (c.first_vcpu..c.first_vcpu + c.vcpus).contains(&vcpu))?;
        Some(match self.cpu {
            CpuPolicy::Dedicated => {
                let at = (vcpu - cell.first_vcpu) as usize;
                &cell.cpus[at..=at]
            }
            CpuPolicy::Shared => &cell.cpus,
        })
    }

    /// Host node ids, in cell order.
    #[must_use]
    pub fn nodes(&self) -> Vec<u32> {
        self.cells.iter().map(|c| c.node).collect()
    }
}

#[derive(Debug, Clone)]
pub(crate) struct HugePool {
    pub size_kib: u64,
    pub total: u64,
    pub used: u64,
}

/// Dedicated threads of one physical core.
#[derive(Debug, Clone)]
pub(crate) struct Core {
    pub threads: Vec<u32>,
    pub free: Vec<bool>,
    pub nfree: u32,
}

#[derive(Debug, Clone)]
pub(crate) struct NodeState {
    pub id: u32,
    pub mem_cap_kib: u64,
    pub mem_used_kib: u64,
    pub huge: Vec<HugePool>,
    pub cores: Vec<Core>,
    pub ded_total: u32,
    pub ded_free: u32,
    pub shared: Vec<u32>,
    pub shared_cap: u64,
    pub shared_load: u64,
    /// Distance to every node, by node index.
    pub dist: Vec<u32>,
}

impl NodeState {
    pub fn mem_free_kib(&self, hugepage_kib: Option<u64>) -> u64 {
        match hugepage_kib {
            None => self.mem_cap_kib - self.mem_used_kib,
            Some(size) => self
                .huge
                .iter()
                .find(|p| p.size_kib == size)
                .map_or(0, |p| (p.total - p.used) * size),
        }
    }
}

/// What is free on one node (for reports, scoring and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFree {
    /// Node id.
    pub id: u32,
    /// Normal memory not yet given to VMs or the host reserve, KiB.
    pub memory_free_kib: u64,
    /// Normal memory VMs may use in all, KiB.
    pub memory_capacity_kib: u64,
    /// `(size KiB, free pages, total pages)` per hugepage pool.
    pub hugepages: Vec<(u64, u64, u64)>,
    /// Dedicated threads nobody holds.
    pub dedicated_free: Vec<u32>,
    /// All dedicated threads of the node.
    pub dedicated_total: u32,
    /// Threads shared VMs float over.
    pub shared_cpus: Vec<u32>,
    /// Shared vCPUs placed on the node.
    pub shared_vcpus: u64,
    /// Shared vCPUs the node accepts in all.
    pub shared_capacity: u64,
}

/// A host: its topology, partition, and every committed placement.
#[derive(Debug, Clone)]
pub struct Host {
    pub(crate) nodes: Vec<NodeState>,
    pub(crate) node_index: HashMap<u32, usize>,
    /// cpu id → (node index, core index, slot in core) for dedicated threads.
    pub(crate) dedicated_at: HashMap<u32, (usize, usize, usize)>,
    pub(crate) allocations: HashMap<String, Placement>,
    pub(crate) total_ded_free: u32,
}

impl Host {
    /// A host with nothing placed.
    ///
    /// # Errors
    /// [`PlacementError::Invalid`] for an inconsistent topology or partition.
    pub fn new(topology: &Topology, config: &HostConfig) -> Result<Self> {
        topology.validate()?;
        config.validate(topology)?;
        let dedicated: std::collections::HashSet<u32> =
            config.dedicated_cpus.iter().copied().collect();
        let shared: std::collections::HashSet<u32> = config.shared_cpus.iter().copied().collect();
        let mut order: Vec<&crate::topology::Node> = topology.nodes.iter().collect();
        order.sort_by_key(|n| n.id);
        let node_index: HashMap<u32, usize> =
            order.iter().enumerate().map(|(i, n)| (n.id, i)).collect();
        let mut nodes = Vec::with_capacity(order.len());
        let mut dedicated_at = HashMap::new();
        for (ni, node) in order.iter().enumerate() {
            let huge: Vec<HugePool> = node
                .hugepages
                .iter()
                .map(|p| HugePool {
                    size_kib: p.size_kib,
                    total: p.total,
                    used: 0,
                })
                .collect();
            let huge_kib: u64 = huge.iter().map(|p| p.total * p.size_kib).sum();
            let mem_cap_kib = (node.memory_mib * 1024)
                .saturating_sub(huge_kib)
                .saturating_sub(config.reserved_memory_mib * 1024);
            // dedicated threads grouped by core, cores in order of their lowest thread
            let mut by_core: std::collections::BTreeMap<u32, Vec<u32>> = Default::default();
            for cpu in node.cpus.iter().filter(|c| dedicated.contains(&c.id)) {
                by_core.entry(cpu.core).or_default().push(cpu.id);
            }
            let mut cores: Vec<Core> = by_core
                .into_values()
                .map(|mut threads| {
                    threads.sort_unstable();
                    let n = threads.len();
                    Core {
                        threads,
                        free: vec![true; n],
                        nfree: n as u32,
                    }
                })
                .collect();
            cores.sort_by_key(|c| c.threads[0]);
            for (ci, core) in cores.iter().enumerate() {
                for (slot, &cpu) in core.threads.iter().enumerate() {
                    dedicated_at.insert(cpu, (ni, ci, slot));
                }
            }
            let ded_total: u32 = cores.iter().map(|c| c.nfree).sum();
            let mut shared_cpus: Vec<u32> = node
                .cpus
                .iter()
                .map(|c| c.id)
                .filter(|c| shared.contains(c))
                .collect();
            shared_cpus.sort_unstable();
            // integer capacity: floor(threads × ratio)
            let shared_cap = (shared_cpus.len() as f64 * config.shared_overcommit).floor() as u64;
            nodes.push(NodeState {
                id: node.id,
                mem_cap_kib,
                mem_used_kib: 0,
                huge,
                cores,
                ded_total,
                ded_free: ded_total,
                shared: shared_cpus,
                shared_cap,
                shared_load: 0,
                dist: order
                    .iter()
                    .map(|to| topology.distance(node, to.id))
                    .collect(),
            });
        }
        let total_ded_free = nodes.iter().map(|n| n.ded_free).sum();
        Ok(Self {
            nodes,
            node_index,
            dedicated_at,
            allocations: HashMap::new(),
            total_ded_free,
        })
    }

    /// The committed placement of `vm`.
    #[must_use]
    pub fn allocation(&self, vm: &str) -> Option<&Placement> {
        self.allocations.get(vm)
    }

    /// Number of VMs with a committed placement.
    #[must_use]
    pub fn vm_count(&self) -> usize {
        self.allocations.len()
    }

    /// What is free, node by node (nodes in id order).
    #[must_use]
    pub fn free(&self) -> Vec<NodeFree> {
        self.nodes
            .iter()
            .map(|n| NodeFree {
                id: n.id,
                memory_free_kib: n.mem_cap_kib - n.mem_used_kib,
                memory_capacity_kib: n.mem_cap_kib,
                hugepages: n
                    .huge
                    .iter()
                    .map(|p| (p.size_kib, p.total - p.used, p.total))
                    .collect(),
                dedicated_free: n
                    .cores
                    .iter()
                    .flat_map(|c| {
                        c.threads
                            .iter()
                            .zip(&c.free)
                            .filter(|(_, f)| **f)
                            .map(|(t, _)| *t)
                    })
                    .collect(),
                dedicated_total: n.ded_total,
                shared_cpus: n.shared.clone(),
                shared_vcpus: n.shared_load,
                shared_capacity: n.shared_cap,
            })
            .collect()
    }

    /// Places `vm` as decided by [`Host::place`] and commits it.
    ///
    /// # Errors
    /// As [`Host::place`], or [`PlacementError::Conflict`] if `vm` is already placed.
    pub fn allocate(&mut self, vm: &str, request: &Request) -> Result<Placement> {
        if self.allocations.contains_key(vm) {
            return Err(PlacementError::conflict(format!(
                "vm {vm:?} is already placed"
            )));
        }
        let placement = self.place(request)?;
        self.commit(vm, placement.clone())?;
        Ok(placement)
    }

    /// Records `placement` for `vm` after checking every resource it names is free
    /// (used to restore placements after a restart, and by [`Host::allocate`]).
    ///
    /// # Errors
    /// [`PlacementError::Conflict`] if `vm` is placed already or a resource is taken
    /// or unknown; nothing changes then.
    pub fn commit(&mut self, vm: &str, placement: Placement) -> Result<()> {
        if self.allocations.contains_key(vm) {
            return Err(PlacementError::conflict(format!(
                "vm {vm:?} is already placed"
            )));
        }
        self.check(&placement)?;
        self.charge(&placement, true);
        self.allocations.insert(vm.to_owned(), placement);
        Ok(())
    }

    /// Gives back everything `vm` holds; false if it held nothing.
    pub fn release(&mut self, vm: &str) -> bool {
        match self.allocations.remove(vm) {
            Some(placement) => {
                self.charge(&placement, false);
                true
            }
            None => false,
        }
    }

    fn check(&self, p: &Placement) -> Result<()> {
        let bad = |m: String| Err(PlacementError::conflict(m));
        if p.cells.is_empty() {
            return bad("placement has no cell".into());
        }
        let mut next_vcpu = 0;
        let mut seen_nodes = std::collections::HashSet::new();
        let mut seen_cpus = std::collections::HashSet::new();
        for cell in &p.cells {
            let Some(&ni) = self.node_index.get(&cell.node) else {
                return bad(format!("node {} does not exist", cell.node));
            };
            if !seen_nodes.insert(ni) {
                return bad(format!("node {} used by two cells", cell.node));
            }
            if cell.first_vcpu != next_vcpu || cell.vcpus == 0 {
                return bad("cells do not number vCPUs 0..n in order".into());
            }
            next_vcpu += cell.vcpus;
            let node = &self.nodes[ni];
            if let Some(size) = p.hugepage_kib {
                if cell.memory_kib % size != 0 {
                    return bad("cell memory is not a whole number of hugepages".into());
                }
            }
            if node.mem_free_kib(p.hugepage_kib) < cell.memory_kib {
                return bad(format!("node {} lacks the memory", node.id));
            }
            match p.cpu {
                CpuPolicy::Dedicated => {
                    if cell.cpus.len() != cell.vcpus as usize {
                        return bad("dedicated cell needs one thread per vCPU".into());
                    }
                    for cpu in &cell.cpus {
                        match self.dedicated_at.get(cpu) {
                            Some(&(n, c, s)) if n == ni && self.nodes[n].cores[c].free[s] => {}
                            _ => {
                                return bad(format!(
                                    "thread {cpu} is not a free dedicated thread of node {}",
                                    node.id
                                ))
                            }
                        }
                        if !seen_cpus.insert(*cpu) {
                            return bad(format!("thread {cpu} given twice"));
                        }
                    }
                }
                CpuPolicy::Shared => {
                    if cell.cpus != node.shared {
                        return bad(format!(
                            "cell threads are not node {}'s shared threads",
                            node.id
                        ));
                    }
                    if node.shared_load + u64::from(cell.vcpus) > node.shared_cap {
                        return bad(format!("node {} has no shared capacity left", node.id));
                    }
                }
            }
        }
        Ok(())
    }

    /// Adds (`take`) or removes the resources of a checked placement.
    fn charge(&mut self, p: &Placement, take: bool) {
        for cell in &p.cells {
            let ni = self.node_index[&cell.node];
            let node = &mut self.nodes[ni];
            match p.hugepage_kib {
                None if take => node.mem_used_kib += cell.memory_kib,
                None => node.mem_used_kib -= cell.memory_kib,
                Some(size) => {
                    let pool = node
                        .huge
                        .iter_mut()
                        .find(|h| h.size_kib == size)
                        .expect("checked: pool exists");
                    let pages = cell.memory_kib / size;
                    if take {
                        pool.used += pages;
                    } else {
                        pool.used -= pages;
                    }
                }
            }
            match p.cpu {
                CpuPolicy::Shared if take => node.shared_load += u64::from(cell.vcpus),
                CpuPolicy::Shared => node.shared_load -= u64::from(cell.vcpus),
                CpuPolicy::Dedicated => {
                    for cpu in &cell.cpus {
                        let (_, c, s) = self.dedicated_at[cpu];
                        let core = &mut self.nodes[ni].cores[c];
                        core.free[s] = !take;
                        if take {
                            core.nfree -= 1;
                            self.nodes[ni].ded_free -= 1;
                            self.total_ded_free -= 1;
                        } else {
                            core.nfree += 1;
                            self.nodes[ni].ded_free += 1;
                            self.total_ded_free += 1;
                        }
                    }
                }
            }
        }
    }
}
