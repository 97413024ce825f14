//! A host's NUMA topology and how the operator partitioned it.

use crate::error::{PlacementError, Result};
use std::collections::{BTreeSet, HashSet};

/// One hardware thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cpu {
    /// The kernel's CPU number.
    pub id: u32,
    /// The physical core it belongs to; threads of one core (SMT siblings) share it.
    /// Any number unique per core on the host (e.g. `socket << 16 | core_id`).
    pub core: u32,
}

/// A pool of hugepages of one size on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HugePages {
    /// Page size in KiB (2048, 1048576).
    pub size_kib: u64,
    /// Pages reserved in the pool.
    pub total: u64,
}

/// One NUMA node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The kernel's node number.
    pub id: u32,
    /// Memory of the node, MiB (including what hugepage pools hold).
    pub memory_mib: u64,
    /// Its hardware threads.
    pub cpus: Vec<Cpu>,
    /// Hugepage pools (4 KiB base pages are not listed).
    pub hugepages: Vec<HugePages>,
    /// Distance to each node, as `(node id, distance)`; missing entries mean 10 to
    /// itself and 20 to others.
    pub distances: Vec<(u32, u32)>,
}

/// The whole host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Its nodes, in any order.
    pub nodes: Vec<Node>,
}

/// How the operator set the host's resources aside for VMs.
#[derive(Debug, Clone, PartialEq)]
pub struct HostConfig {
    /// Threads for `dedicated` VMs (each given to one vCPU at a time).
    pub dedicated_cpus: Vec<u32>,
    /// Threads that `shared` VMs float over.
    pub shared_cpus: Vec<u32>,
    /// Memory per node kept for the host itself, MiB.
    pub reserved_memory_mib: u64,
    /// Shared vCPUs allowed per shared thread (1.0 = no overcommit).
    pub shared_overcommit: f64,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            dedicated_cpus: Vec::new(),
            shared_cpus: Vec::new(),
            reserved_memory_mib: 0,
            shared_overcommit: 4.0,
        }
    }
}

/// Smallest and largest hugepage size accepted, KiB.
const HUGEPAGE_RANGE: (u64, u64) = (64, 16 * 1024 * 1024);

impl Topology {
    /// Checks ids are unique and values sensible.
    ///
    /// # Errors
    /// [`PlacementError::Invalid`] naming the first problem.
    pub fn validate(&self) -> Result<()> {
        if self.nodes.is_empty() {
            return Err(PlacementError::invalid("topology has no NUMA node"));
        }
        if self.nodes.len() > 1024 {
            return Err(PlacementError::invalid("topology has more than 1024 nodes"));
        }
        let mut node_ids = HashSet::new();
        let mut cpu_ids = HashSet::new();
        let mut core_owner = std::collections::HashMap::new();
        for node in &self.nodes {
            if !node_ids.insert(node.id) {
                return Err(PlacementError::invalid(format!(
                    "node {} listed twice",
                    node.id
                )));
            }
            for cpu in &node.cpus {
                if cpu.id > crate::cpuset::MAX_CPU_ID {
                    return Err(PlacementError::invalid(format!(
                        "cpu id {} too large",
                        cpu.id
                    )));
                }
                if !cpu_ids.insert(cpu.id) {
                    return Err(PlacementError::invalid(format!(
                        "cpu {} listed twice",
                        cpu.id
                    )));
                }
                if let Some(other) = core_owner.insert(cpu.core, node.id) {
                    if other != node.id {
                        return Err(PlacementError::invalid(format!(
                            "core {} spans nodes {other} and {}",
                            cpu.core, node.id
                        )));
                    }
                }
            }
            let mut sizes = BTreeSet::new();
            let mut huge_mib = 0u64;
            for pool in &node.hugepages {
                let (lo, hi) = HUGEPAGE_RANGE;
                if !pool.size_kib.is_power_of_two() || pool.size_kib < lo || pool.size_kib > hi {
                    return Err(PlacementError::invalid(format!(
                        "hugepage size {} KiB not supported",
                        pool.size_kib
                    )));
                }
                if !sizes.insert(pool.size_kib) {
                    return Err(PlacementError::invalid(format!(
                        "node {}: hugepage size {} KiB listed twice",
                        node.id, pool.size_kib
                    )));
                }
                huge_mib = pool
                    .total
                    .checked_mul(pool.size_kib / 1024)
                    .and_then(|m| m.checked_add(huge_mib))
                    .ok_or_else(|| PlacementError::invalid("hugepage pool too large"))?;
            }
            if huge_mib > node.memory_mib {
                return Err(PlacementError::invalid(format!(
                    "node {}: hugepage pools ({huge_mib} MiB) exceed its memory ({} MiB)",
                    node.id, node.memory_mib
                )));
            }
        }
        Ok(())
    }

    /// Distance between two nodes (by id).
    #[must_use]
    pub fn distance(&self, from: &Node, to: u32) -> u32 {
        from.distances
            .iter()
            .find(|(id, _)| *id == to)
            .map_or(if from.id == to { 10 } else { 20 }, |(_, d)| *d)
    }
}

impl HostConfig {
    /// Checks the partition against the topology.
    ///
    /// # Errors
    /// [`PlacementError::Invalid`] for unknown CPUs, overlap, or a bad ratio.
    pub fn validate(&self, topology: &Topology) -> Result<()> {
        let known: HashSet<u32> = topology
            .nodes
            .iter()
            .flat_map(|n| n.cpus.iter().map(|c| c.id))
            .collect();
        for (what, set) in [
            ("dedicated", &self.dedicated_cpus),
            ("shared", &self.shared_cpus),
        ] {
            if let Some(cpu) = set.iter().find(|c| !known.contains(c)) {
                return Err(PlacementError::invalid(format!(
                    "{what} cpu {cpu} is not in the host topology"
                )));
            }
        }
        let dedicated: HashSet<u32> = self.dedicated_cpus.iter().copied().collect();
        if let Some(cpu) = self.shared_cpus.iter().find(|c| dedicated.contains(c)) {
            return Err(PlacementError::invalid(format!(
                "cpu {cpu} is both dedicated and shared"
            )));
        }
        if !(self.shared_overcommit.is_finite() && (1.0..=64.0).contains(&self.shared_overcommit)) {
            return Err(PlacementError::invalid(
                "shared_overcommit must be between 1 and 64",
            ));
        }
        Ok(())
    }
}
