//! NovaCron's NUMA placement engine.
//!
//! Given a host's topology (nodes, threads with their cores, memory and hugepage
//! pools), the operator's partition (threads for dedicated VMs, threads for shared
//! VMs, memory kept for the host) and the placements already made, it decides where
//! a new VM goes: which node or nodes, which host thread each vCPU is pinned to,
//! how memory is bound, and the guest NUMA topology when a VM is larger than one
//! node. It never overcommits a dedicated thread, memory or a hugepage pool, and
//! explains a refusal. It also scores a host for a request, for cluster placement.
//!
//! Plain Rust: no Python types; `novacron._core` wraps it.

pub mod cpuset;
mod error;
mod host;
mod place;
mod topology;

pub use error::{PlacementError, Result};
pub use host::{Cell, CpuPolicy, Host, MemoryPolicy, NodeFree, Placement, Request};
pub use topology::{Cpu, HostConfig, HugePages, Node, Topology};
