//! Placement decisions per second on an 8-node, 256-thread host with 1,000 VMs placed.

use criterion::{criterion_group, criterion_main, Criterion};
use novacron_placement::{
    Cpu, CpuPolicy, Host, HostConfig, HugePages, MemoryPolicy, Node, Request, Topology,
};
use std::hint::black_box;

fn host() -> Host {
    let nodes: Vec<Node> = (0..8u32)
        .map(|n| Node {
            id: n,
            memory_mib: 256 * 1024,
            cpus: (0..32u32)
                .map(|t| Cpu {
                    id: n * 32 + t,
                    core: n * 16 + t / 2,
                })
                .collect(),
            hugepages: vec![HugePages {
                size_kib: 2048,
                total: 16384,
            }],
            distances: (0..8u32)
                .map(|m| (m, if m == n { 10 } else { 21 }))
                .collect(),
        })
        .collect();
    let dedicated: Vec<u32> = (0..256).filter(|c| c % 32 < 24).collect();
    let shared: Vec<u32> = (0..256).filter(|c| c % 32 >= 24).collect();
    let config = HostConfig {
        dedicated_cpus: dedicated,
        shared_cpus: shared,
        reserved_memory_mib: 4096,
        shared_overcommit: 16.0,
    };
    let mut host = Host::new(&Topology { nodes }, &config).unwrap();
    for i in 0..1000u32 {
        let req = Request {
            vcpus: if i % 12 == 0 { 2 } else { 1 },
            memory_mib: 512,
            cpu: if i % 12 == 0 {
                CpuPolicy::Dedicated
            } else {
                CpuPolicy::Shared
            },
            memory: MemoryPolicy::Strict,
            hugepage_kib: None,
        };
        host.allocate(&format!("vm{i}"), &req).unwrap();
    }
    host
}

fn bench(c: &mut Criterion) {
    let host = host();
    let dedicated = Request {
        vcpus: 4,
        memory_mib: 8192,
        cpu: CpuPolicy::Dedicated,
        memory: MemoryPolicy::Strict,
        hugepage_kib: None,
    };
    let shared = Request {
        cpu: CpuPolicy::Shared,
        ..dedicated
    };
    c.bench_function("place dedicated 4 vCPU, 1000 VMs placed", |b| {
        b.iter(|| host.place(black_box(&dedicated)).unwrap())
    });
    c.bench_function("place shared 4 vCPU, 1000 VMs placed", |b| {
        b.iter(|| host.place(black_box(&shared)).unwrap())
    });
}

#[allow(missing_docs)] // the macro generates an undocumented function
mod group {
    use super::{bench, criterion_group};
    criterion_group!(placement, bench);
}
use group::placement;
criterion_main!(placement);
