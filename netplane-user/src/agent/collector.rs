//! Collection of expired translations with exact port accounting: a pass
//! a piece per tick (`Collector`), or whole (`collect_where`, for tests).
use std::collections::HashSet;

use anyhow::Result;
use aya::maps::Array;
use netplane_common::{
    nat::{ClaimRelease, FlowKey, NatEntry, NatReverse, SnatSlot, claimed_before, owned_key},
    registry,
};

use crate::{config::outbound::IdleTimers, datapath::Datapath};

/// CLOCK_MONOTONIC in ns: the clock of bpf_ktime_get_ns and its coarse twin.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The reply tuple of a translation.
pub fn reply_key(k: &FlowKey, e: &NatEntry) -> FlowKey {
    k.reply_via(e.nat_ip, e.nat_port)
}

/// A flow idle past its timeout at `now_ns`.
pub fn expired_at(t: &IdleTimers, now_ns: u64, k: &FlowKey, e: &NatEntry) -> bool {
    now_ns.saturating_sub(e.last_seen_ns) > t.of(k.proto, e).as_nanos() as u64
}

/// One whole collection pass: the flows `expired` picks are removed and
/// their ports returned exactly (SNAT_FREES, which only the collector's
/// runs of `release_claims` write); owned-port marks no flow holds any
/// more are cleared. Returns the removed flows. The agent runs the same
/// pass a piece per tick (`Collector`).
pub fn collect_where(
    dp: &mut Datapath,
    mut expired: impl FnMut(&FlowKey, &NatEntry) -> bool,
) -> Result<Vec<(FlowKey, NatEntry)>> {
    let mut c = Collector::default();
    c.start();
    let mut all = Vec::new();
    while !c.idle() {
        all.extend(c.step(dp, usize::MAX, &mut expired)?);
    }
    Ok(all)
}

/// Collection a piece at a time, so that a large table costs the agent a
/// little CPU on each tick rather than a burst the pods' traffic feels
/// (the kernel's conntrack collects in steps the same way). A pass walks
/// NAT_OUT removing expired flows, then, if any expired, NAT_IN to learn
/// which translated ports are held and PORT_OWNED to clear the rest.
///
/// A sweep pass (`start_sweep`: an agent's first two passes, then every
/// SWEEP_EVERY, as `is_sweep` says) also finds reverse entries whose
/// forward entry is gone: removal is two deletes, and an agent killed
/// between them left the port claimed and counted forever. A reverse entry
/// without its forward one in two sweeps in a row (not one claim in
/// flight) is removed and its port returned.
#[derive(Default)]
pub struct Collector {
    phase: Phase,
    walk: crate::datapath::HashWalk,
    expired_this_pass: bool,
    held: HashSet<FlowKey>,
    /// This pass is a sweep: `forward` holds NAT_OUT's keys as walked.
    sweeping: bool,
    forward: HashSet<FlowKey>,
    /// Reverse entries without a forward one in the last sweep.
    suspects: HashSet<FlowKey>,
    next_suspects: HashSet<FlowKey>,
    /// Orphans removed so far (for metrics and tests).
    pub orphans_removed: u64,
    /// When the walk of NAT_IN began: a mark claimed later may have been
    /// claimed after its bucket was walked, so it is not cleared this pass.
    held_since: u64,
}

#[derive(Default, PartialEq, Eq, Debug)]
enum Phase {
    #[default]
    Idle,
    Expire,
    LearnHeldPorts,
    ClearStaleMarks,
}

impl Collector {
    /// No pass in progress.
    pub fn idle(&self) -> bool {
        self.phase == Phase::Idle
    }

    /// The pass is about to clear the marks of ports no flow holds (for
    /// tests that act between the steps of a pass).
    pub fn clearing_marks(&self) -> bool {
        self.phase == Phase::ClearStaleMarks
    }

    /// Starts a pass (if none is in progress).
    pub fn start(&mut self) {
        if self.idle() {
            self.enter(Phase::Expire);
            self.expired_this_pass = false;
            self.sweeping = false;
        }
    }

    /// Starts a sweep pass: a pass that also looks for orphan reverse
    /// entries.
    pub fn start_sweep(&mut self) {
        if self.idle() {
            self.start();
            self.sweeping = true;
            self.forward = HashSet::new();
            self.next_suspects = HashSet::new();
        }
    }

    fn enter(&mut self, phase: Phase) {
        self.phase = phase;
        self.walk = Default::default();
    }

    /// Goes on with the pass over about `budget` entries; returns the flows
    /// this step removed.
    pub fn step(
        &mut self,
        dp: &mut Datapath,
        budget: usize,
        expired: &mut impl FnMut(&FlowKey, &NatEntry) -> bool,
    ) -> Result<Vec<(FlowKey, NatEntry)>> {
        let mut removed = Vec::new();
        let mut left = budget;
        while left > 0 && !self.idle() {
            let before = left;
            match self.phase {
                Phase::Idle => {}
                Phase::Expire => {
                    let chunk: Vec<(FlowKey, NatEntry)> =
                        self.walk.next(dp.hash_data(registry::NAT_OUT)?, left)?;
                    left = left.saturating_sub(chunk.len().max(1));
                    if self.sweeping {
                        self.forward.extend(chunk.iter().map(|(k, _)| *k));
                    }
                    let expired_now = chunk.into_iter().filter(|(k, e)| expired(k, e)).collect();
                    let gone = remove_flows(dp, expired_now)?;
                    self.expired_this_pass |= !gone.is_empty();
                    removed.extend(gone);
                    if self.walk.done() {
                        if self.expired_this_pass || self.sweeping {
                            self.held_since = monotonic_ns();
                            self.enter(Phase::LearnHeldPorts);
                        } else {
                            self.enter(Phase::Idle);
                        }
                    }
                }
                Phase::LearnHeldPorts => {
                    let chunk: Vec<(FlowKey, NatReverse)> =
                        self.walk.next(dp.hash_data(registry::NAT_IN)?, left)?;
                    left = left.saturating_sub(chunk.len().max(1));
                    let mut orphans = Vec::new();
                    for (k, rev) in chunk {
                        if self.sweeping && !self.forward.contains(&forward_key(&k, &rev)) {
                            if self.suspects.contains(&k) {
                                orphans.push(k);
                                continue;
                            }
                            self.next_suspects.insert(k);
                        }
                        self.held.insert(owned_key(k.dst_ip, k.dst_port, k.proto));
                    }
                    self.orphans_removed += remove_orphans(dp, &orphans)?;
                    if self.walk.done() {
                        if self.sweeping {
                            self.suspects = std::mem::take(&mut self.next_suspects);
                            self.forward = HashSet::new();
                        }
                        self.enter(Phase::ClearStaleMarks);
                    }
                }
                Phase::ClearStaleMarks => {
                    let owned = dp.hash_data(registry::PORT_OWNED)?;
                    let chunk: Vec<(FlowKey, u64)> = self.walk.next(owned, left)?;
                    left = left.saturating_sub(chunk.len().max(1));
                    let stale: Vec<FlowKey> = chunk
                        .into_iter()
                        .filter(|(k, stamp)| {
                            !self.held.contains(k) && claimed_before(*stamp, self.held_since)
                        })
                        .map(|(k, _)| k)
                        .collect();
                    crate::datapath::delete_batch(owned, &stale)?;
                    super::snat::release_ports(dp, &stale)?;
                    if self.walk.done() {
                        self.held = HashSet::new();
                        self.enter(Phase::Idle);
                    }
                }
            }
            debug_assert!(left < before || self.idle());
        }
        Ok(removed)
    }
}

/// The forward (NAT_OUT) key of a reverse entry.
fn forward_key(k: &FlowKey, rev: &NatReverse) -> FlowKey {
    FlowKey::new(rev.orig_ip, k.src_ip, rev.orig_port, k.src_port, k.proto)
}

/// Removes reverse entries whose translation is gone and returns their
/// ports to the slot they came from (found by address and port range).
/// Returns how many it removed.
fn remove_orphans(dp: &mut Datapath, orphans: &[FlowKey]) -> Result<u64> {
    if orphans.is_empty() {
        return Ok(0);
    }
    let slots: Array<_, SnatSlot> = dp.array(registry::SNAT_SLOTS)?;
    // Read once: one syscall per slot, not per slot and orphan.
    let slots: Vec<(u32, SnatSlot)> = (0..slots.len())
        .filter_map(|i| Some((i, slots.get(&i, 0).ok()?)))
        .filter(|(_, s)| s.nat_ip != 0)
        .collect();
    let claims: Vec<ClaimRelease> = orphans
        .iter()
        .map(|k| {
            let slot = slots
                .iter()
                .find(|(_, s)| {
                    s.nat_ip == k.dst_ip && (s.port_lo..=s.port_hi).contains(&k.dst_port)
                })
                .map_or(ClaimRelease::NO_SLOT, |(i, _)| *i);
            ClaimRelease {
                key: *k,
                slot,
                released: 0,
            }
        })
        .collect();
    let took = dp.release_claims(&claims)?;
    Ok(took.into_iter().filter(|t| *t).count() as u64)
}

/// Removes translations and returns their ports. Each forward entry is
/// taken atomically with the value it holds at that instant: one a packet
/// refreshed since the pass read it (a SYN reopening the tuple, a late
/// segment) is put back, and its claim stays. The claim (NAT_IN) goes only
/// with a forward entry this removal took unchanged: one the data path
/// evicted meanwhile is its to count, and its port may already be someone
/// else's. Returns the flows it removed.
fn remove_flows(
    dp: &mut Datapath,
    flows: Vec<(FlowKey, NatEntry)>,
) -> Result<Vec<(FlowKey, NatEntry)>> {
    if flows.is_empty() {
        return Ok(flows);
    }
    let mut ours = Vec::with_capacity(flows.len());
    {
        let nat_out = dp.hash_data(registry::NAT_OUT)?;
        for (k, seen) in flows {
            let Some(now) = crate::datapath::take::<FlowKey, NatEntry>(nat_out, &k)? else {
                continue; // evicted by the data path meanwhile
            };
            if now != seen {
                // Refreshed since it was read: live. Put back, unless the
                // data path made the tuple anew in that instant.
                crate::datapath::put_new(nat_out, &k, &now)?;
                continue;
            }
            ours.push((k, seen));
        }
    }
    // Each claim goes with its credit, in one program run.
    let claims: Vec<ClaimRelease> = ours
        .iter()
        .map(|(k, e)| ClaimRelease {
            key: reply_key(k, e),
            slot: e.slot,
            released: 0,
        })
        .collect();
    dp.release_claims(&claims)?;
    Ok(ours)
}
