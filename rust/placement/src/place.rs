//! The decisions: which node(s), which threads, how the guest is split.
//!
//! A VM that fits one node goes on one node: for `dedicated`, the node it fills
//! best (fewest dedicated threads left over, keeping whole free cores for big
//! VMs); for `shared`, the least loaded node. A VM that fits no single node is
//! split into the fewest equal cells over nearby nodes, and the guest gets one
//! NUMA cell per host node. Ties go to the lowest node id, so the same state and
//! request always give the same answer.

use crate::error::{PlacementError, Result};
use crate::host::{Cell, CpuPolicy, Host, NodeState, Placement, Request};

/// Largest request accepted (far above any real host; keeps arithmetic exact).
const MAX_VCPUS: u32 = 4096;
const MAX_MEMORY_MIB: u64 = 1 << 32;

/// Order of candidate nodes for a split (lower is better): distance to the nodes
/// already chosen, then roominess (reversed), then node id.
type SplitKey = (u64, std::cmp::Reverse<(u64, u64)>, u32);

/// One cell's share of a request.
#[derive(Clone, Copy)]
struct Share {
    vcpus: u32,
    memory_kib: u64,
}

impl Host {
    fn check_request(&self, req: &Request) -> Result<()> {
        if req.vcpus == 0 || req.vcpus > MAX_VCPUS {
            return Err(PlacementError::invalid(format!(
                "vcpus must be 1..={MAX_VCPUS}"
            )));
        }
        if req.memory_mib == 0 || req.memory_mib > MAX_MEMORY_MIB {
            return Err(PlacementError::invalid("memory_mib out of range"));
        }
        if let Some(size) = req.hugepage_kib {
            if !self
                .nodes
                .iter()
                .any(|n| n.huge.iter().any(|p| p.size_kib == size))
            {
                return Err(PlacementError::no_fit(format!(
                    "this host has no {size} KiB hugepage pool"
                )));
            }
            if (req.memory_mib * 1024) % size != 0 {
                return Err(PlacementError::invalid(format!(
                    "memory_mib must be a multiple of the hugepage size ({size} KiB)"
                )));
            }
        }
        Ok(())
    }

    /// Whether `node` can take `share`; if so, a key where lower is a better choice.
    fn fit_key(&self, node: &NodeState, req: &Request, share: Share) -> Option<(u64, u64, u32)> {
        let mem_free = node.mem_free_kib(req.hugepage_kib);
        if mem_free < share.memory_kib {
            return None;
        }
        let mem_left = mem_free - share.memory_kib;
        match req.cpu {
            CpuPolicy::Dedicated => {
                if node.ded_free < share.vcpus {
                    return None;
                }
                // best fit: fewest dedicated threads left, then least memory left
                Some((u64::from(node.ded_free - share.vcpus), mem_left, node.id))
            }
            CpuPolicy::Shared => {
                let threads = node.shared.len() as u64;
                let load = node.shared_load + u64::from(share.vcpus);
                if threads == 0 || u64::from(share.vcpus) > threads || load > node.shared_cap {
                    return None;
                }
                // spread: lowest load per thread after placing, then most memory left
                Some((load * 1_000_000 / threads, u64::MAX - mem_left, node.id))
            }
        }
    }

    /// How roomy a node is for a split (higher is roomier): free threads or shared
    /// headroom first, then free memory.
    fn room(&self, node: &NodeState, req: &Request) -> (u64, u64) {
        let cpu = match req.cpu {
            CpuPolicy::Dedicated => u64::from(node.ded_free),
            CpuPolicy::Shared => node.shared_cap.saturating_sub(node.shared_load),
        };
        (cpu, node.mem_free_kib(req.hugepage_kib))
    }

    /// Room for `req` over the whole host: summed, and on the roomiest node.
    fn host_room(&self, req: &Request) -> HostRoom {
        let mut room = HostRoom::default();
        for node in &self.nodes {
            let (cpu, mem) = self.room(node, req);
            room.cpu_total += cpu;
            room.mem_total += mem;
            room.cpu_max = room.cpu_max.max(cpu);
            room.mem_max = room.mem_max.max(mem);
        }
        room
    }

    /// The engine's decision for `req` on the current state; changes nothing.
    ///
    /// # Errors
    /// [`PlacementError::Invalid`] for a malformed request, [`PlacementError::NoFit`]
    /// with the reason when it cannot be placed without overcommitting.
    pub fn place(&self, req: &Request) -> Result<Placement> {
        self.decide(req)?.ok_or_else(|| self.why_not(req))
    }

    /// [`Host::place`] without the reason for a refusal: `Ok(None)` when `req` does
    /// not fit (cheaper when many requests are tried, as in scoring).
    ///
    /// # Errors
    /// [`PlacementError::Invalid`] for a malformed request or a hugepage size the
    /// host has no pool of.
    pub fn decide(&self, req: &Request) -> Result<Option<Placement>> {
        self.check_request(req)?;
        let whole = Share {
            vcpus: req.vcpus,
            memory_kib: req.memory_mib * 1024,
        };
        // a quick refusal when even the whole host is short
        if req.cpu == CpuPolicy::Dedicated && self.total_ded_free < req.vcpus {
            return Ok(None);
        }
        let mut best: Option<((u64, u64, u32), usize)> = None;
        for (ni, node) in self.nodes.iter().enumerate() {
            if let Some(key) = self.fit_key(node, req, whole) {
                if best.is_none_or(|(k, _)| key < k) {
                    best = Some((key, ni));
                }
            }
        }
        if let Some((_, ni)) = best {
            return Ok(Some(self.build(req, &[(ni, whole)])));
        }
        // no split can work when the host as a whole is short
        let room = self.host_room(req);
        if room.mem_total < whole.memory_kib || room.cpu_total < u64::from(req.vcpus) {
            return Ok(None);
        }
        // fewer cells than this cannot work: even the roomiest node could not hold
        // a cell's share of the vCPUs or of the memory
        let least = |need: u64, max: u64| {
            if max == 0 {
                u64::MAX
            } else {
                need.div_ceil(max)
            }
        };
        let first = least(u64::from(req.vcpus), room.cpu_max)
            .max(least(whole.memory_kib, room.mem_max))
            .max(2);
        let most = (self.nodes.len() as u32).min(req.vcpus);
        for k in u32::try_from(first).unwrap_or(u32::MAX)..=most {
            if let Some(cells) = self.split(req, k) {
                return Ok(Some(self.build(req, &cells)));
            }
        }
        Ok(None)
    }

    /// `req` cut into `k` cells: vCPUs and memory (in whole hugepages) as equal as
    /// they can be, the larger shares first.
    fn shares(req: &Request, k: u32) -> Vec<Share> {
        let unit = req.hugepage_kib.unwrap_or(1024);
        let units = req.memory_mib * 1024 / unit;
        let k64 = u64::from(k);
        (0..k)
            .map(|i| Share {
                vcpus: req.vcpus / k + u32::from(i < req.vcpus % k),
                memory_kib: (units / k64 + u64::from(u64::from(i) < units % k64)) * unit,
            })
            .collect()
    }

    /// Chooses `k` nodes for a split: the roomiest node that takes the first share,
    /// then each next share on the nearest node that takes it (ties: roomiest,
    /// then lowest id).
    fn split(&self, req: &Request, k: u32) -> Option<Vec<(usize, Share)>> {
        let shares = Self::shares(req, k);
        let mut chosen: Vec<(usize, Share)> = Vec::with_capacity(shares.len());
        for share in shares {
            let mut best: Option<(SplitKey, usize)> = None;
            for (ni, node) in self.nodes.iter().enumerate() {
                if chosen.iter().any(|(c, _)| *c == ni) || self.fit_key(node, req, share).is_none()
                {
                    continue;
                }
                let dist: u64 = chosen.iter().map(|(c, _)| u64::from(node.dist[*c])).sum();
                let key = (dist, std::cmp::Reverse(self.room(node, req)), node.id);
                if best.as_ref().is_none_or(|(k, _)| key < *k) {
                    best = Some((key, ni));
                }
            }
            chosen.push((best?.1, share));
        }
        Some(chosen)
    }

    /// Turns chosen nodes into a placement, picking dedicated threads.
    fn build(&self, req: &Request, cells: &[(usize, Share)]) -> Placement {
        let mut first = 0;
        let mut out = Vec::with_capacity(cells.len());
        for &(ni, share) in cells {
            let node = &self.nodes[ni];
            let cpus = match req.cpu {
                CpuPolicy::Dedicated => pick_threads(node, share.vcpus),
                CpuPolicy::Shared => node.shared.clone(),
            };
            out.push(Cell {
                node: node.id,
                first_vcpu: first,
                vcpus: share.vcpus,
                memory_kib: share.memory_kib,
                cpus,
            });
            first += share.vcpus;
        }
        let emulator_cpus = match req.cpu {
            CpuPolicy::Shared => {
                let mut all: Vec<u32> = out.iter().flat_map(|c| c.cpus.clone()).collect();
                all.sort_unstable();
                all
            }
            CpuPolicy::Dedicated => {
                // emulator threads stay off the dedicated threads when the VM's nodes
                // have shared threads to run them on
                let mut shared: Vec<u32> = cells
                    .iter()
                    .flat_map(|(ni, _)| self.nodes[*ni].shared.iter().copied())
                    .collect();
                if shared.is_empty() {
                    shared = out.iter().flat_map(|c| c.cpus.clone()).collect();
                }
                shared.sort_unstable();
                shared
            }
        };
        Placement {
            cpu: req.cpu,
            memory: req.memory,
            hugepage_kib: req.hugepage_kib,
            cells: out,
            emulator_cpus,
        }
    }

    /// The reason `req` does not fit, naming the scarcest resource.
    fn why_not(&self, req: &Request) -> PlacementError {
        let mem_kib = req.memory_mib * 1024;
        let kind = match req.hugepage_kib {
            Some(size) => format!("memory in {size} KiB hugepages"),
            None => "memory".to_owned(),
        };
        let what = format!(
            "cannot place a VM of {} {} vCPU(s) and {} MiB",
            req.vcpus,
            match req.cpu {
                CpuPolicy::Dedicated => "dedicated",
                CpuPolicy::Shared => "shared",
            },
            req.memory_mib
        );
        let HostRoom {
            cpu_total,
            mem_total,
            cpu_max: cpu_node_max,
            mem_max: mem_node_max,
        } = self.host_room(req);
        let unit = match req.cpu {
            CpuPolicy::Dedicated => "free dedicated threads",
            CpuPolicy::Shared => "shared vCPU slots",
        };
        let vcpus = u64::from(req.vcpus);
        let reason = if req.cpu == CpuPolicy::Dedicated
            && self.nodes.iter().all(|n| n.ded_total == 0)
        {
            "no host threads are set aside for dedicated VMs (placement.dedicated_cpus)".to_owned()
        } else if req.cpu == CpuPolicy::Shared && self.nodes.iter().all(|n| n.shared.is_empty()) {
            "no host threads are set aside for shared VMs (placement.shared_cpus)".to_owned()
        } else if cpu_total < vcpus {
            format!("the host has {cpu_total} {unit} in all, the VM needs {vcpus}")
        } else if mem_total < mem_kib {
            format!(
                "the host has {} MiB of free {kind} in all, the VM needs {}",
                mem_total / 1024,
                req.memory_mib
            )
        } else if cpu_node_max < vcpus {
            format!(
                "no node has {vcpus} {unit}; the largest has {cpu_node_max}, and no split over nodes fits"
            )
        } else if mem_node_max < mem_kib {
            format!(
                "no node has {} MiB of free {kind}; the largest has {} MiB, and no split over nodes fits",
                req.memory_mib,
                mem_node_max / 1024
            )
        } else {
            "no node has both the threads and the memory free, and no split over nodes fits"
                .to_owned()
        };
        PlacementError::no_fit(format!("{what}: {reason}"))
    }

    /// How well `req` fits this host, for choosing among hosts: `None` if it does
    /// not fit; otherwise the smallest fraction of any resource it uses (its CPU
    /// kind, its memory kind) that stays free on the whole host after placing it
    /// (in 0..=1; higher means more headroom).
    #[must_use]
    pub fn score(&self, req: &Request) -> Option<f64> {
        self.decide(req).ok()??;
        let mem_cap: u64 = self
            .nodes
            .iter()
            .map(|n| match req.hugepage_kib {
                None => n.mem_cap_kib,
                Some(size) => n
                    .huge
                    .iter()
                    .find(|p| p.size_kib == size)
                    .map_or(0, |p| p.total * size),
            })
            .sum();
        let room = self.host_room(req);
        let cpu_cap: u64 = match req.cpu {
            CpuPolicy::Dedicated => self.nodes.iter().map(|n| u64::from(n.ded_total)).sum(),
            CpuPolicy::Shared => self.nodes.iter().map(|n| n.shared_cap).sum(),
        };
        let mem = ratio(room.mem_total - req.memory_mib * 1024, mem_cap);
        let cpu = ratio(room.cpu_total - u64::from(req.vcpus), cpu_cap);
        Some(mem.min(cpu))
    }
}

/// Free room for one request's kinds of CPU and memory (see `Host::room`).
#[derive(Default)]
struct HostRoom {
    cpu_total: u64,
    mem_total: u64,
    cpu_max: u64,
    mem_max: u64,
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// `count` free dedicated threads of `node`, siblings kept together: whole free
/// cores first (in core order) while the rest needs at least a whole core, then
/// the core whose free threads fit the rest most tightly.
fn pick_threads(node: &NodeState, count: u32) -> Vec<u32> {
    let mut taken = vec![0u32; node.cores.len()];
    let mut out = Vec::with_capacity(count as usize);
    let mut rest = count;
    let take = |ci: usize, n: u32, taken: &mut [u32], out: &mut Vec<u32>| {
        let core = &node.cores[ci];
        let mut left = n;
        for (t, free) in core.threads.iter().zip(&core.free) {
            if left == 0 {
                break;
            }
            if *free {
                out.push(*t);
                left -= 1;
            }
        }
        taken[ci] = n;
    };
    for (ci, core) in node.cores.iter().enumerate() {
        let size = core.threads.len() as u32;
        if rest >= size && core.nfree == size {
            take(ci, size, &mut taken, &mut out);
            rest -= size;
        }
    }
    while rest > 0 {
        let available = |ci: usize| node.cores[ci].nfree - taken[ci];
        let tight = (0..node.cores.len())
            .filter(|&ci| available(ci) >= rest)
            .min_by_key(|&ci| (available(ci), ci));
        let ci = tight.unwrap_or_else(|| {
            (0..node.cores.len())
                .filter(|&ci| available(ci) > 0)
                .max_by_key(|&ci| (available(ci), std::cmp::Reverse(ci)))
                .expect("caller checked the node has enough free threads")
        });
        let n = available(ci).min(rest);
        // skip threads this call already took from the core
        let core = &node.cores[ci];
        let mut skip = taken[ci];
        let mut left = n;
        for (t, free) in core.threads.iter().zip(&core.free) {
            if left == 0 {
                break;
            }
            if *free {
                if skip > 0 {
                    skip -= 1;
                    continue;
                }
                out.push(*t);
                left -= 1;
            }
        }
        taken[ci] += n;
        rest -= n;
    }
    out.sort_unstable();
    out
}
