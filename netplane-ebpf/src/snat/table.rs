//! Translations: found by tuple, made by claiming a port, refreshed by
//! every packet. A translation is two entries made together (NAT_OUT by the
//! original tuple, NAT_IN by the reply tuple); claiming a port *is*
//! inserting its NAT_IN key with BPF_NOEXIST (docs/decisions.md).
use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_EXIST, BPF_NOEXIST},
    helpers::generated::bpf_loop,
};
use netplane_common::{
    DropReason,
    events::{FlowEvent, kind},
    nat::{
        EVICTION_TRIES, FlowKey, MAX_FRONTENDS, NatEntry, NatReverse, PORT_BITMAP_WORDS, PROTO_TCP,
        PROTO_UDP, PortBitmap, SnatSlot, owned_key,
    },
};

use super::{L4, Target};
use crate::{
    maps::bump,
    maps::{
        CONE_PEERS, EVICTION_QUEUE, NAT_IN, NAT_OUT, PORT_BITMAPS, PORT_HINTS, PORT_OWNED,
        SERVICE_REPLIES, SNAT_ALLOCS, SNAT_EVICTS, SNAT_FAILS, SNAT_SLOTS,
    },
    packet::{Ipv4, tcp},
};

/// The translation a reply belongs to, if any; refreshes its flow's clock
/// and state.
#[inline(always)]
pub fn reply_of(ip: &Ipv4, l4: &L4) -> Option<NatReverse> {
    let rev = reverse_of(&l4.key(ip))?;
    if l4.proto == PROTO_UDP && l4.remote_port != 0 && !cone_peer_known(ip, l4, &rev) {
        return None; // port-restricted: a port of the remote it never sent to
    }
    let out = FlowKey::new(rev.orig_ip, ip.src, rev.orig_port, l4.src_port, l4.proto);
    if let Some(e) = NAT_OUT.get_ptr_mut(out) {
        touch(e, l4, true);
    }
    Some(rev)
}

/// A UDP cone flow sent to this remote port: its replies may come back.
#[inline(always)]
pub fn cone_peer_sent(ip: &Ipv4, l4: &L4) {
    let peer = FlowKey::new(ip.src, ip.dst, l4.src_port, l4.remote_port, PROTO_UDP);
    let now = crate::clock::coarse();
    let _ = CONE_PEERS.insert(peer, now, 0);
}

/// True when the inside endpoint behind `rev` sent to the reply's remote
/// port.
#[inline(always)]
fn cone_peer_known(ip: &Ipv4, l4: &L4, rev: &NatReverse) -> bool {
    let peer = FlowKey::new(
        rev.orig_ip,
        ip.src,
        rev.orig_port,
        l4.remote_port,
        PROTO_UDP,
    );
    // SAFETY: only presence is read.
    unsafe { CONE_PEERS.get(peer) }.is_some()
}

/// The translation of an original tuple, if any (a later fragment's, found
/// by its first fragment's ports).
#[inline(always)]
pub fn translation_of(key: &FlowKey) -> Option<NatEntry> {
    // SAFETY: the value is copied out at once.
    unsafe { NAT_OUT.get(key) }.copied()
}

/// True when some translation's reply tuple is `key` (only presence read).
#[inline(always)]
pub fn reply_held(key: &FlowKey) -> bool {
    // SAFETY: only presence is read.
    unsafe { NAT_IN.get(key) }.is_some()
}

/// Where a reply tuple goes back to, if any.
#[inline(always)]
pub fn reverse_of(key: &FlowKey) -> Option<NatReverse> {
    // SAFETY: the value is copied out at once.
    unsafe { NAT_IN.get(key) }.copied()
}

/// Updates an entry's clock and flags for a packet. A flag is only ever
/// set, each in its own byte, so packets on two CPUs cannot undo each
/// other's FIN or RST; a SYN (no ACK) from the inside on a closed tuple
/// reopens it (TIME_WAIT reuse) by clearing them together.
#[inline(always)]
fn touch(e: *mut NatEntry, l4: &L4, reply: bool) {
    let f = l4.tcp_flags;
    // SAFETY: `e` is a live value pointer from a map lookup; entries are
    // removed only by the agent, and the kernel keeps the element's memory
    // valid for the rest of this program run (RCU).
    unsafe {
        (*e).last_seen_ns = crate::clock::coarse();
        if l4.proto == PROTO_TCP {
            let closed = (*e).fin_out | (*e).fin_in | (*e).rst != 0;
            if closed && !reply && f & (tcp::SYN | tcp::ACK) == tcp::SYN {
                (*e).fin_out = 0;
                (*e).fin_in = 0;
                (*e).rst = 0;
                (*e).replied = 0;
            }
            if f & tcp::RST != 0 {
                set(&mut (*e).rst);
            }
            if f & tcp::FIN != 0 {
                set(if reply {
                    &mut (*e).fin_in
                } else {
                    &mut (*e).fin_out
                });
            }
            if f & tcp::ACK != 0 {
                if reply {
                    (*e).ack_in = l4.ack;
                } else {
                    (*e).ack_out = l4.ack;
                }
            }
        }
        if reply {
            set(&mut (*e).replied);
        }
    }
}

/// Sets a flag byte, writing only when it changes.
#[inline(always)]
fn set(flag: &mut u8) {
    if *flag == 0 {
        *flag = 1;
    }
}

/// The translation of an outbound flow: found (refreshed), or made from
/// the first slot of the target (tried from a per-flow rotation) that has a
/// free port toward its destination. Returns its address and port.
///
/// The port search, the commit, the event and the eviction are global
/// functions (BTF linkage global, as for every `no_mangle` function
/// bpf-linker emits): the verifier checks each once, with unknown
/// arguments, rather than at every call site, slot and retry in every
/// state of its caller (docs/verifier.md). The loop over the slots stays
/// here, so that the stack holds one global function's frame above the
/// caller's at a time (Linux 6.1 counts 512 bytes over the whole chain,
/// each frame rounded up to 32).
#[inline(always)]
pub fn translate_out(key: &FlowKey, l4: &L4, target: Target) -> Result<(u32, u16), DropReason> {
    if let Some(e) = NAT_OUT.get_ptr_mut(key) {
        touch(e, l4, false);
        // SAFETY: as in `touch`.
        return Ok(unsafe { ((*e).nat_ip, (*e).nat_port) });
    }
    if l4.proto == PROTO_TCP && l4.tcp_flags & (tcp::RST | tcp::FIN) != 0 {
        // Closing a flow that has no translation: never claim a port for it.
        return Err(DropReason::TcpInvalid);
    }
    let req = NewFlow {
        key: *key,
        ack: l4.ack,
        tcp_flags: l4.tcp_flags,
        keep_port: u8::from(target.keep_port),
        search_bitmap: u8::from(target.search_bitmap),
        _pad: 0,
    };
    let spread = mix(key);
    let mut i = 0;
    let mut evicted = false;
    while i < MAX_FRONTENDS {
        if i >= target.count {
            break;
        }
        let slot = target.first + (spread.wrapping_add(i)) % target.count;
        let found = match netplane_find_port(&req, slot, spread) {
            TABLE_FULL => TABLE_FULL,
            port if port > 0 => {
                let made = netplane_commit(&req, slot, port as u32);
                if made & MADE_HERE != 0 {
                    netplane_report_translation(&req, made);
                }
                made
            }
            _ => NO_PORT,
        };
        match Answer::from(found) {
            Answer::Translation(ip, port) => return Ok((ip, port)),
            Answer::NoPort => i += 1,
            // A full table: give up an unreplied flow and try once more, so
            // that a pod spraying destinations cannot stop its neighbours.
            Answer::TableFull if !evicted && netplane_evict_unreplied() != 0 => evicted = true,
            Answer::TableFull => return Err(DropReason::NatTableFull),
        }
    }
    bump(&SNAT_FAILS, target.first);
    Err(DropReason::NatPortsExhausted)
}

/// A new flow, as the engine's global functions take it: plain values and
/// no implicit padding (the verifier wants every byte a global function's
/// pointer argument covers initialised).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NewFlow {
    key: FlowKey,
    /// The packet's TCP acknowledgment number and flags (a flow another
    /// CPU made first is refreshed with them).
    ack: u32,
    tcp_flags: u8,
    keep_port: u8,
    search_bitmap: u8,
    _pad: u8,
}

impl NewFlow {
    /// The transport fields `touch` reads.
    #[inline(always)]
    fn l4(&self) -> L4 {
        L4 {
            proto: self.key.proto,
            src_port: self.key.src_port,
            dst_port: self.key.dst_port,
            tcp_flags: self.tcp_flags,
            ack: self.ack,
            ..L4::default()
        }
    }
}

/// What the global functions answer, in the one scalar a global function
/// may return: a translation (`1 << 48 | address << 16 | port`, with
/// [`MADE_HERE`] from the commit that made it), no port (0), or a full
/// table (-1).
enum Answer {
    Translation(u32, u16),
    NoPort,
    TableFull,
}

const NO_PORT: i64 = 0;
const TABLE_FULL: i64 = -1;
/// Set beside a translation by the commit that made it (not another
/// CPU's): its event is still to report.
const MADE_HERE: i64 = 1 << 49;

#[inline(always)]
fn translation(nat_ip: u32, port: u16) -> i64 {
    (1 << 48) | (i64::from(nat_ip) << 16) | i64::from(port)
}

impl From<i64> for Answer {
    #[inline(always)]
    fn from(v: i64) -> Self {
        match v {
            TABLE_FULL => Answer::TableFull,
            v if v > 0 => Answer::Translation((v >> 16) as u32, v as u16),
            _ => Answer::NoPort,
        }
    }
}

/// Makes room in a full table, as Linux's early_drop does: removes the
/// oldest of the newest translations that has seen no reply, looking at
/// EVICTION_TRIES candidates at most. A flow that has been answered is
/// never given up. Whoever removes the forward entry (this or the agent's
/// collector) removes its claim and counts its port, so it is counted once.
/// Returns 1 when it made room. A global function (see `translate_out`).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn netplane_evict_unreplied() -> i64 {
    let mut i = 0;
    while i < EVICTION_TRIES {
        let Ok(Some(k)) = EVICTION_QUEUE.pop() else {
            return 0;
        };
        if let Some(e) = translation_of(&k)
            && e.replied == 0
            && NAT_OUT.remove(k).is_ok()
        {
            let _ = NAT_IN.remove(k.reply_via(e.nat_ip, e.nat_port));
            bump(&SNAT_EVICTS, e.slot);
            return 1;
        }
        i += 1;
    }
    0
}

/// Claims a free port of `slot` toward the flow's destination (its NAT_IN
/// key inserted): the port, no port (0), or a full table (-1). A global
/// function (see `translate_out`).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn netplane_find_port(req: *const NewFlow, slot: u32, spread: u32) -> i64 {
    // SAFETY: a global function's pointer argument may be null (checked
    // here); otherwise it points to a whole initialised NewFlow. Read in
    // place: the map keys below are built on this stack.
    let Some(req) = (unsafe { req.as_ref() }) else {
        return NO_PORT;
    };
    let key = &req.key;
    let Some(s) = SNAT_SLOTS.get(slot) else {
        return NO_PORT;
    };
    let size = s.size();
    if s.nat_ip == 0 || size == 0 {
        return NO_PORT;
    }
    let dest = reply_dest(key, s.nat_ip);
    let own = u32::from(key.src_port);
    let (lo, hi) = (u32::from(s.port_lo), u32::from(s.port_hi));
    let start = if req.keep_port != 0 && (lo..=hi).contains(&own) {
        // Linux's nf_nat tries the original port first; if it is taken,
        // the search (find_port) goes on from there.
        own - lo
    } else if req.search_bitmap != 0 {
        // The bitmap finds the next unheld port from anywhere.
        spread % size
    } else {
        // SAFETY: the hint is copied out at once; any value is safe (it is
        // reduced modulo the slot size).
        match unsafe { PORT_HINTS.get(dest) } {
            Some(h) => *h % size,
            None => spread % size,
        }
    };
    let bitmap = if req.search_bitmap != 0 {
        PORT_BITMAPS.get_ptr_mut(PortBitmap::key(s.nat_ip, key.proto))
    } else {
        None
    };
    let mut probe = Probe {
        key: dest,
        rev: NatReverse {
            orig_ip: key.src_ip,
            orig_port: key.src_port,
            _pad: 0,
        },
        slot: *s,
        start,
        found: 0,
        full: 0,
        bitmap: bitmap.unwrap_or(core::ptr::null_mut()),
    };
    find_port(&mut probe);
    if probe.full != 0 {
        // The table itself is full: no port of any slot can help, so stop
        // here rather than walk every port (a table-full flood must not cost
        // the node a whole port range per packet).
        return TABLE_FULL;
    }
    if probe.found == 0 {
        return NO_PORT;
    }
    if let Some(b) = bitmap {
        mark_used(b, probe.found);
    }
    i64::from(probe.found)
}

/// The reply tuple toward `nat_ip` with the port left open; its
/// destination part keys the hint.
#[inline(always)]
fn reply_dest(key: &FlowKey, nat_ip: u32) -> FlowKey {
    FlowKey::new(key.dst_ip, nat_ip, key.dst_port, 0, key.proto)
}

/// Makes the translation of a port [`netplane_find_port`] claimed: the
/// forward entry, the accounting and the hints. Returns the translation
/// (another CPU's, if it made this flow first) or a full table (-1). A
/// global function (see `translate_out`).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn netplane_commit(req: *const NewFlow, slot: u32, port: u32) -> i64 {
    // SAFETY: as in `netplane_find_port`.
    let Some(req) = (unsafe { req.as_ref() }) else {
        return TABLE_FULL;
    };
    // Copied onto this stack: the verifier of older kernels (6.1) takes a
    // map key from the stack, a packet or a map value, not from an
    // argument's memory.
    let key = &{ req.key };
    let Some(s) = SNAT_SLOTS.get(slot) else {
        return TABLE_FULL;
    };
    let size = s.size().max(1);
    let port = port as u16;
    let mut rev_key = reply_dest(key, s.nat_ip);
    rev_key.dst_port = port;
    let now = crate::clock::precise();
    let entry = NatEntry {
        nat_ip: s.nat_ip,
        nat_port: port,
        slot,
        created_ns: now,
        last_seen_ns: now,
        ..NatEntry::default()
    };
    if NAT_OUT.insert(key, entry, BPF_NOEXIST as u64).is_err() {
        // Another CPU made this flow first (or the table is full): give the
        // port back and use theirs.
        let _ = NAT_IN.remove(rev_key);
        return match NAT_OUT.get_ptr_mut(key) {
            Some(e) => {
                touch(e, &req.l4(), false);
                // SAFETY: as in `touch`.
                unsafe { translation((*e).nat_ip, (*e).nat_port) }
            }
            None => TABLE_FULL,
        };
    }
    bump(&SNAT_ALLOCS, slot);
    // BPF_EXIST: a full queue drops its oldest candidate.
    let _ = EVICTION_QUEUE.push(key, BPF_EXIST as u64);
    if req.search_bitmap == 0 {
        let next = (u32::from(port).wrapping_sub(u32::from(s.port_lo)) + 1) % size;
        rev_key.dst_port = 0;
        let _ = PORT_HINTS.insert(rev_key, next, 0);
    }
    let owned = owned_key(s.nat_ip, port, key.proto);
    let _ = PORT_OWNED.insert(owned, now, 0);
    translation(s.nat_ip, port) | MADE_HERE
}

/// Reports a translation [`netplane_commit`] made (a flow event). Apart
/// from the commit so that the event's frame and the commit's never add
/// up on the stack. A global function (see `translate_out`).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn netplane_report_translation(req: *const NewFlow, made: i64) -> i64 {
    // SAFETY: as in `netplane_find_port`.
    let Some(req) = (unsafe { req.as_ref() }) else {
        return 0;
    };
    let Answer::Translation(nat_ip, nat_port) = Answer::from(made) else {
        return 0;
    };
    let key = &req.key;
    crate::events::emit(FlowEvent {
        kind: kind::TRANSLATION,
        proto: key.proto,
        src_ip: key.src_ip,
        dst_ip: key.dst_ip,
        src_port: key.src_port,
        dst_port: key.dst_port,
        nat_ip,
        nat_port,
        ..Default::default()
    });
    0
}

#[repr(C)]
struct Probe {
    key: FlowKey,
    rev: NatReverse,
    slot: SnatSlot,
    /// Offset in the slot of the first port to try.
    start: u32,
    found: u32,
    /// Set when an insert failed for want of room, not for a taken port.
    full: u32,
    /// The ports of this SNAT IP some flow holds; null: none made.
    bitmap: *mut PortBitmap,
}

/// Finds and claims a free port toward the probe's destination, in three
/// steps that each keep the guarantee (a free port is found whenever one
/// exists) and cost less the later they are needed:
/// 1. the start port, a pod's own when it can keep it (as Linux's nf_nat);
/// 2. the ports after it that no flow holds, from the bitmap, 64 a word;
/// 3. every port after it in turn, a refused insert each, for a bitmap
///    that is full or lags (a port held toward another destination is free
///    toward this one).
#[inline(always)]
fn find_port(p: &mut Probe) {
    let size = p.slot.size();
    if size == 0 || try_port(p, p.start) != Tried::Taken {
        return;
    }
    if !p.bitmap.is_null() {
        mark_used(p.bitmap, p.key.dst_port as u32);
        let words = scan_words(p);
        // SAFETY: `scan_word` has the callback signature bpf_loop expects,
        // and `p` outlives the call.
        unsafe {
            bpf_loop(
                words.0 + words.1,
                scan_word as *mut c_void,
                p as *mut Probe as *mut c_void,
                0,
            );
        }
        if p.found != 0 || p.full != 0 {
            return;
        }
    }
    // Walks every other port of the slot once: bounded by the slot size.
    // SAFETY: as above, for `probe_port`.
    unsafe {
        bpf_loop(
            size - 1,
            probe_port as *mut c_void,
            p as *mut Probe as *mut c_void,
            0,
        );
    }
}

#[derive(PartialEq, Eq)]
enum Tried {
    Claimed,
    Taken,
    Full,
}

/// Claims port (start + offset) of the slot toward the destination. A
/// port whose reply tuple a Service flow's masquerade holds (the node's own
/// flow to a backend outside the cluster) is taken too: its replies are
/// that flow's (SERVICE_REPLIES shares NAT_IN's key layout).
#[inline(always)]
fn try_port(p: &mut Probe, offset: u32) -> Tried {
    let port = p.slot.port_lo as u32 + offset % p.slot.size().max(1);
    p.key.dst_port = port as u16;
    // SAFETY: only presence is read.
    if unsafe { SERVICE_REPLIES.get(p.key) }.is_some() {
        return Tried::Taken;
    }
    match NAT_IN.insert(p.key, p.rev, BPF_NOEXIST as u64) {
        Ok(()) => {
            p.found = port;
            Tried::Claimed
        }
        Err(e) if i64::from(e) == -EEXIST => Tried::Taken,
        Err(_) => {
            p.full = 1;
            Tried::Full
        }
    }
}

/// The error BPF_NOEXIST reports for a key that exists: the port is taken.
const EEXIST: i64 = 17;

/// bpf_loop callback: the walk's step `i`, port (start + 1 + i). Returns 1
/// to stop.
unsafe extern "C" fn probe_port(i: u32, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer `find_port` gave it, to a
    // live `Probe` on its stack.
    let p = unsafe { &mut *(ctx as *mut Probe) };
    let start = p.start;
    match try_port(p, start + 1 + i) {
        Tried::Taken => 0,
        Tried::Claimed | Tried::Full => 1,
    }
}

/// The bitmap search covers the ports after the start port to the slot's
/// end, then from its beginning up to the start port: (words of the
/// first part, words of the second).
#[inline(always)]
fn scan_words(p: &Probe) -> (u32, u32) {
    let (lo, hi) = (p.slot.port_lo as u32, p.slot.port_hi as u32);
    let s = lo + p.start;
    let after = if s < hi {
        hi / 64 - (s + 1) / 64 + 1
    } else {
        0
    };
    let before = if s > lo {
        (s - 1) / 64 - lo / 64 + 1
    } else {
        0
    };
    (after, before)
}

/// bpf_loop callback: the bitmap search's word `i` (see `scan_words`):
/// tries its lowest zero bit in the searched range. A refused port is
/// marked (a flow to this destination holds it) and the search goes on
/// from the next word: the walk after the search still finds any free port
/// it skipped. Returns 1 to stop.
unsafe extern "C" fn scan_word(i: u32, ctx: *mut c_void) -> i64 {
    // SAFETY: as in `probe_port`.
    let p = unsafe { &mut *(ctx as *mut Probe) };
    let (lo, hi) = (p.slot.port_lo as u32, p.slot.port_hi as u32);
    let s = lo + p.start;
    let (after, _) = scan_words(p);
    let (first, last, w) = if i < after {
        (s + 1, hi, (s + 1) / 64 + i)
    } else {
        (lo, s - 1, lo / 64 + (i - after))
    };
    if w as usize >= PORT_BITMAP_WORDS || p.bitmap.is_null() {
        return 1;
    }
    let mut range = !0u64;
    if w == first / 64 {
        range &= !0u64 << (first % 64);
    }
    if w == last / 64 {
        range &= !0u64 >> (63 - last % 64);
    }
    // SAFETY: a live map value (null checked above), `w` in bounds.
    let free = !unsafe { (*p.bitmap).words[w as usize] } & range;
    if free == 0 {
        return 0;
    }
    let port = w * 64 + free.trailing_zeros();
    match try_port(p, port - lo) {
        Tried::Claimed | Tried::Full => 1,
        Tried::Taken => {
            mark_used(p.bitmap, port);
            0
        }
    }
}

/// Sets `port`'s bit: some flow holds it.
#[inline(always)]
fn mark_used(bitmap: *mut PortBitmap, port: u32) {
    let (w, bit) = PortBitmap::word_and_bit(port as u16);
    // SAFETY: a live map value (the caller checked it is not null), `w`
    // below PORT_BITMAP_WORDS by construction. Not atomic (the BPF target
    // has no fetch_or): two CPUs setting bits of one word at once may lose
    // one, a stale zero that the next search repairs with one refused
    // insert.
    unsafe { (*bitmap).words[w] |= bit };
}

/// A cheap mix of the tuple: where a flow starts probing.
#[inline(always)]
fn mix(k: &FlowKey) -> u32 {
    let mut h =
        k.src_ip ^ k.dst_ip.rotate_left(7) ^ ((k.src_port as u32) << 16 | k.dst_port as u32);
    h ^= h >> 16;
    h = h.wrapping_mul(0x7feb_352d);
    h ^= h >> 15;
    h = h.wrapping_mul(0x846c_a68b);
    h ^ (h >> 16)
}
