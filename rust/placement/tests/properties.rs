//! Properties of the placement engine over synthetic topologies: 1–8 nodes, SMT on
//! or off, uneven memory, hugepage pools, random partitions and random sequences of
//! VMs coming and going.

use novacron_placement::{
    Cpu, CpuPolicy, Host, HostConfig, HugePages, MemoryPolicy, Node, NodeFree, Placement,
    PlacementError, Request, Topology,
};
use proptest::prelude::*;
use std::collections::{HashMap, HashSet};

#[derive(Debug, Clone)]
struct Shape {
    nodes: Vec<(u32, u64, u64, u64)>, // cores, memory MiB, 2 MiB pages, 1 GiB pages
    smt: u32,
    roles: Vec<u8>, // per thread: 0 dedicated, 1 shared, 2 host only
    reserved: u64,
    ratio: f64,
}

fn shape() -> impl Strategy<Value = Shape> {
    (
        proptest::collection::vec((1u32..8, 1024u64..65536, 0u64..512, 0u64..4), 1..=8),
        prop_oneof![Just(1u32), Just(2)],
        proptest::collection::vec(0u8..3, 128),
        prop_oneof![Just(0u64), Just(512)],
        prop_oneof![Just(1.0f64), Just(4.0)],
    )
        .prop_map(|(nodes, smt, roles, reserved, ratio)| Shape {
            nodes,
            smt,
            roles,
            reserved,
            ratio,
        })
}

fn build(shape: &Shape) -> (Topology, HostConfig) {
    let mut next_cpu = 0u32;
    let mut next_core = 0u32;
    let mut nodes = Vec::new();
    let count = shape.nodes.len() as u32;
    for (n, &(cores, mem, huge2m, huge1g)) in shape.nodes.iter().enumerate() {
        let n = n as u32;
        let mut cpus = Vec::new();
        for _ in 0..cores {
            for _ in 0..shape.smt {
                cpus.push(Cpu {
                    id: next_cpu,
                    core: next_core,
                });
                next_cpu += 1;
            }
            next_core += 1;
        }
        // keep hugepage pools within the node's memory
        let huge1g = huge1g.min(mem / 2048);
        let huge2m = huge2m.min((mem - huge1g * 1024) / 4);
        nodes.push(Node {
            id: n * 2, // node ids need not be dense
            memory_mib: mem,
            cpus,
            hugepages: vec![
                HugePages {
                    size_kib: 2048,
                    total: huge2m,
                },
                HugePages {
                    size_kib: 1024 * 1024,
                    total: huge1g,
                },
            ],
            distances: (0..count)
                .map(|m| (m * 2, if m == n { 10 } else { 20 + 2 * m.abs_diff(n) }))
                .collect(),
        });
    }
    let mut config = HostConfig {
        reserved_memory_mib: shape.reserved,
        shared_overcommit: shape.ratio,
        ..HostConfig::default()
    };
    for cpu in 0..next_cpu {
        match shape.roles[cpu as usize % shape.roles.len()] {
            0 => config.dedicated_cpus.push(cpu),
            1 => config.shared_cpus.push(cpu),
            _ => {}
        }
    }
    (Topology { nodes }, config)
}

#[derive(Debug, Clone)]
enum Step {
    Add(Request),
    Remove(usize),
}

fn request() -> impl Strategy<Value = Request> {
    (
        1u32..24,
        prop_oneof![
            Just(256u64),
            Just(1024),
            Just(4096),
            Just(20480),
            Just(100_000)
        ],
        prop_oneof![Just(CpuPolicy::Dedicated), Just(CpuPolicy::Shared)],
        prop_oneof![
            Just(MemoryPolicy::Strict),
            Just(MemoryPolicy::Preferred),
            Just(MemoryPolicy::Interleave)
        ],
        prop_oneof![
            Just(None),
            Just(None),
            Just(Some(2048u64)),
            Just(Some(1024 * 1024))
        ],
    )
        .prop_map(|(vcpus, memory_mib, cpu, memory, hugepage_kib)| {
            // hugepage-backed memory in whole pages
            let memory_mib = match hugepage_kib {
                Some(size) if size >= 1024 * 1024 => memory_mib.div_ceil(1024) * 1024,
                _ => memory_mib,
            };
            Request {
                vcpus,
                memory_mib,
                cpu,
                memory,
                hugepage_kib,
            }
        })
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    proptest::collection::vec(
        prop_oneof![
            3 => request().prop_map(Step::Add),
            1 => (0usize..64).prop_map(Step::Remove),
        ],
        1..60,
    )
}

/// Whether some single node could have taken `req` in state `free`.
fn fits_one_node(free: &[NodeFree], req: &Request) -> bool {
    let mem = req.memory_mib * 1024;
    free.iter().any(|n| {
        let mem_free = match req.hugepage_kib {
            None => n.memory_free_kib,
            Some(size) => n
                .hugepages
                .iter()
                .find(|h| h.0 == size)
                .map_or(0, |h| h.1 * size),
        };
        let cpu_ok = match req.cpu {
            CpuPolicy::Dedicated => n.dedicated_free.len() as u64 >= u64::from(req.vcpus),
            CpuPolicy::Shared => {
                n.shared_cpus.len() as u64 >= u64::from(req.vcpus)
                    && n.shared_vcpus + u64::from(req.vcpus) <= n.shared_capacity
            }
        };
        mem_free >= mem && cpu_ok
    })
}

fn check_invariants(
    topology: &Topology,
    config: &HostConfig,
    host: &Host,
    live: &[(String, Placement)],
) {
    let node_of: HashMap<u32, u32> = topology
        .nodes
        .iter()
        .flat_map(|n| n.cpus.iter().map(move |c| (c.id, n.id)))
        .collect();
    let dedicated: HashSet<u32> = config.dedicated_cpus.iter().copied().collect();
    let shared: HashSet<u32> = config.shared_cpus.iter().copied().collect();
    let mut held = HashSet::new();
    for (vm, p) in live {
        assert_eq!(host.allocation(vm), Some(p));
        let mut vcpus = 0;
        for cell in &p.cells {
            for cpu in &cell.cpus {
                // memory binding (the cell's node) matches the CPUs' node
                assert_eq!(
                    node_of[cpu], cell.node,
                    "{vm}: thread {cpu} off its cell's node"
                );
                match p.cpu {
                    CpuPolicy::Dedicated => {
                        assert!(dedicated.contains(cpu));
                        assert!(held.insert(*cpu), "dedicated thread {cpu} given twice");
                    }
                    CpuPolicy::Shared => assert!(shared.contains(cpu)),
                }
            }
            vcpus += cell.vcpus;
        }
        assert_eq!(p.cells[0].first_vcpu, 0);
        let _ = vcpus;
    }
    for n in host.free() {
        assert!(n.shared_vcpus <= n.shared_capacity);
        for cpu in &n.dedicated_free {
            assert!(!held.contains(cpu), "thread {cpu} both free and held");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn sequences_of_vms_keep_every_invariant(shape in shape(), steps in steps()) {
        let (topology, config) = build(&shape);
        let mut host = Host::new(&topology, &config).unwrap();
        let mut twin = Host::new(&topology, &config).unwrap();
        let mut live: Vec<(String, Placement, Option<Vec<NodeFree>>)> = Vec::new();
        for (i, step) in steps.iter().enumerate() {
            match step {
                Step::Add(req) => {
                    let before = host.free();
                    let decided = host.place(req);
                    // deterministic: the same state decides the same way
                    prop_assert_eq!(&decided, &host.place(req));
                    match decided {
                        Ok(p) => {
                            let total: u32 = p.cells.iter().map(|c| c.vcpus).sum();
                            prop_assert_eq!(total, req.vcpus);
                            let mem: u64 = p.cells.iter().map(|c| c.memory_kib).sum();
                            prop_assert_eq!(mem, req.memory_mib * 1024);
                            if fits_one_node(&before, req) {
                                prop_assert_eq!(p.cells.len(), 1, "a VM that fits one node was split");
                            }
                            let vm = format!("vm{i}");
                            host.commit(&vm, p.clone()).unwrap();
                            prop_assert_eq!(twin.allocate(&vm, req).unwrap(), p.clone());
                            live.push((vm, p, Some(before)));
                        }
                        Err(PlacementError::NoFit(why)) => {
                            prop_assert!(!fits_one_node(&before, req), "refused ({why}) though a node fits");
                            prop_assert!(why.contains("cannot place"));
                            prop_assert_eq!(host.free(), before, "a refusal changed nothing");
                        }
                        Err(other) => prop_assert!(false, "unexpected {other}"),
                    }
                }
                Step::Remove(k) if !live.is_empty() => {
                    // releasing the newest placement, with nothing released since it
                    // was made, gives back exactly the state before it
                    let at = if *k % 2 == 0 { live.len() - 1 } else { k % live.len() };
                    let (vm, _, before) = live.remove(at);
                    prop_assert!(host.release(&vm));
                    prop_assert!(twin.release(&vm));
                    prop_assert!(!host.release(&vm));
                    if let (Some(before), true) = (before, at == live.len()) {
                        prop_assert_eq!(host.free(), before);
                    }
                    for entry in &mut live {
                        entry.2 = None;
                    }
                }
                Step::Remove(_) => {}
            }
            let pairs: Vec<(String, Placement)> = live.iter().map(|(v, p, _)| (v.clone(), p.clone())).collect();
            check_invariants(&topology, &config, &host, &pairs);
            prop_assert_eq!(host.free(), twin.free());
        }
        // releasing everything gives back the empty host
        for (vm, _, _) in &live {
            host.release(vm);
        }
        prop_assert_eq!(host.free(), Host::new(&topology, &config).unwrap().free());
    }

    #[test]
    fn committing_a_taken_placement_is_refused_and_changes_nothing(shape in shape(), req in request()) {
        let (topology, config) = build(&shape);
        let mut host = Host::new(&topology, &config).unwrap();
        if let Ok(p) = host.allocate("a", &req) {
            let before = host.free();
            if p.cpu == CpuPolicy::Dedicated {
                prop_assert!(matches!(host.commit("b", p.clone()), Err(PlacementError::Conflict(_))));
            }
            prop_assert!(matches!(host.commit("a", p), Err(PlacementError::Conflict(_))));
            prop_assert_eq!(host.free(), before);
        }
    }
}

fn two_node_smt() -> (Topology, HostConfig) {
    let nodes = (0..2u32)
        .map(|n| Node {
            id: n,
            memory_mib: 8192,
            cpus: (0..8u32)
                .map(|t| Cpu {
                    id: n * 8 + t,
                    core: n * 4 + t / 2,
                })
                .collect(),
            hugepages: vec![HugePages {
                size_kib: 2048,
                total: 1024,
            }],
            distances: vec![],
        })
        .collect();
    let config = HostConfig {
        dedicated_cpus: vec![2, 3, 4, 5, 6, 7, 10, 11, 12, 13, 14, 15],
        shared_cpus: vec![0, 1, 8, 9],
        reserved_memory_mib: 1024,
        shared_overcommit: 2.0,
    };
    (Topology { nodes }, config)
}

fn req(vcpus: u32, memory_mib: u64, cpu: CpuPolicy) -> Request {
    Request {
        vcpus,
        memory_mib,
        cpu,
        memory: MemoryPolicy::Strict,
        hugepage_kib: None,
    }
}

#[test]
fn dedicated_vcpus_take_whole_cores_and_best_fit_node() {
    let (t, c) = two_node_smt();
    let mut host = Host::new(&t, &c).unwrap();
    let a = host
        .allocate("a", &req(2, 1024, CpuPolicy::Dedicated))
        .unwrap();
    assert_eq!(a.cells.len(), 1);
    assert_eq!(a.cells[0].cpus, vec![2, 3], "siblings of one core");
    assert_eq!(
        a.emulator_cpus,
        vec![0, 1],
        "emulator on the node's shared threads"
    );
    // node 0 has 4 left, node 1 has 6: a 3-vCPU VM best-fits node 0
    let b = host
        .allocate("b", &req(3, 1024, CpuPolicy::Dedicated))
        .unwrap();
    assert_eq!(b.cells[0].node, 0);
    assert_eq!(b.cells[0].cpus, vec![4, 5, 6]);
    // a 1-vCPU VM fills the hole left on core (6,7)
    let c1 = host
        .allocate("c", &req(1, 512, CpuPolicy::Dedicated))
        .unwrap();
    assert_eq!(c1.cells[0].cpus, vec![7]);
}

#[test]
fn a_vm_larger_than_a_node_gets_a_guest_numa_topology() {
    let (t, c) = two_node_smt();
    let mut host = Host::new(&t, &c).unwrap();
    let big = host
        .allocate("big", &req(8, 6144, CpuPolicy::Dedicated))
        .unwrap();
    assert_eq!(big.cells.len(), 2);
    assert_eq!((big.cells[0].vcpus, big.cells[1].vcpus), (4, 4));
    assert_eq!(
        big.cells[0].memory_kib + big.cells[1].memory_kib,
        6144 * 1024
    );
    assert_eq!(big.vcpu_cpus(5).unwrap().len(), 1);
}

#[test]
fn refusals_say_why() {
    let (t, c) = two_node_smt();
    let mut host = Host::new(&t, &c).unwrap();
    host.allocate("a", &req(4, 512, CpuPolicy::Dedicated))
        .unwrap();
    let err = host.place(&req(13, 512, CpuPolicy::Dedicated)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot place a VM of 13 dedicated vCPU(s) and 512 MiB: the host has 8 free dedicated threads in all, the VM needs 13"
    );
    let huge = Request {
        hugepage_kib: Some(1024 * 1024),
        ..req(1, 1024, CpuPolicy::Shared)
    };
    assert_eq!(
        host.place(&huge).unwrap_err().to_string(),
        "this host has no 1048576 KiB hugepage pool"
    );
    let mem = host.place(&req(1, 20_000, CpuPolicy::Shared)).unwrap_err();
    assert!(
        mem.to_string().contains("MiB of free memory in all"),
        "{mem}"
    );
    let none = Host::new(
        &t,
        &HostConfig {
            dedicated_cpus: vec![],
            ..c
        },
    )
    .unwrap();
    let err = none.place(&req(1, 512, CpuPolicy::Dedicated)).unwrap_err();
    assert!(
        err.to_string().contains("placement.dedicated_cpus"),
        "{err}"
    );
}

#[test]
fn shared_vms_spread_and_respect_the_overcommit_ratio() {
    let (t, c) = two_node_smt();
    let mut host = Host::new(&t, &c).unwrap();
    let a = host.allocate("a", &req(2, 512, CpuPolicy::Shared)).unwrap();
    let b = host.allocate("b", &req(2, 512, CpuPolicy::Shared)).unwrap();
    assert_ne!(a.cells[0].node, b.cells[0].node, "spread over nodes");
    assert_eq!(a.cells[0].cpus, vec![0, 1]);
    host.allocate("c", &req(2, 512, CpuPolicy::Shared)).unwrap();
    host.allocate("d", &req(2, 512, CpuPolicy::Shared)).unwrap();
    // 2 threads × ratio 2 = 4 shared vCPUs per node: full
    assert!(host.place(&req(1, 512, CpuPolicy::Shared)).is_err());
}

#[test]
fn hugepages_are_charged_to_the_pool() {
    let (t, c) = two_node_smt();
    let mut host = Host::new(&t, &c).unwrap();
    let r = Request {
        hugepage_kib: Some(2048),
        ..req(1, 2048, CpuPolicy::Shared)
    };
    let p = host.allocate("h", &r).unwrap();
    let free = host.free();
    let node = free.iter().find(|n| n.id == p.cells[0].node).unwrap();
    assert_eq!(node.hugepages[0], (2048, 1024 - 1024, 1024));
    assert_eq!(
        node.memory_free_kib, node.memory_capacity_kib,
        "normal memory untouched"
    );
    let odd = Request { memory_mib: 3, ..r };
    assert!(matches!(host.place(&odd), Err(PlacementError::Invalid(_))));
}

#[test]
fn bad_topologies_are_refused() {
    let (t, c) = two_node_smt();
    let mut dup = t.clone();
    dup.nodes[1].cpus[0].id = 0;
    assert!(Host::new(&dup, &c).is_err());
    let overlap = HostConfig {
        shared_cpus: vec![2],
        ..c.clone()
    };
    assert!(Host::new(&t, &overlap).is_err());
    let unknown = HostConfig {
        dedicated_cpus: vec![99],
        ..c
    };
    assert!(Host::new(&t, &unknown).is_err());
}

#[test]
fn scores_prefer_emptier_hosts() {
    let (t, c) = two_node_smt();
    let empty = Host::new(&t, &c).unwrap();
    let mut busy = Host::new(&t, &c).unwrap();
    busy.allocate("x", &req(5, 4096, CpuPolicy::Dedicated))
        .unwrap();
    let r = req(2, 1024, CpuPolicy::Dedicated);
    assert!(empty.score(&r).unwrap() > busy.score(&r).unwrap());
    assert_eq!(busy.score(&req(12, 1024, CpuPolicy::Dedicated)), None);
}
