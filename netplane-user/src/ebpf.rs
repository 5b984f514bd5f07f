//! The compiled eBPF object and typed access to its maps.
use std::{
    net::Ipv4Addr,
    path::{Path as FsPath, PathBuf},
};

use anyhow::{Context, Result};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, lpm_trie::Key},
    programs::{SchedClassifier, Xdp},
};
use ipnet::Ipv4Net;
use netplane_common::{
    DropReason, LocalPod, NodeConfig, Path, RouteTarget,
    counters::PathCounter,
    maps::{ip_key, names},
};

/// The object built by build.rs, aligned as the ELF parser wants.
pub fn object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netplane"))
}

/// An IPv4 address in the maps' key form.
pub fn key(ip: Ipv4Addr) -> u32 {
    ip_key(ip.octets())
}

/// The address behind a map key.
pub fn addr(key: u32) -> Ipv4Addr {
    Ipv4Addr::from(key.to_ne_bytes())
}

/// The loaded object: programs plus maps, optionally pinned in a directory
/// (reused if the pins already exist).
pub struct Datapath {
    pub bpf: Ebpf,
}

impl Datapath {
    /// Loads the object. With `pin_dir`, every map is pinned there by name,
    /// or adopted if a pin of that name exists.
    pub fn load(pin_dir: Option<&FsPath>) -> Result<Self> {
        Self::load_with(pin_dir, true)
    }

    /// As `load`, choosing whether the programs report flow events.
    pub fn load_with(pin_dir: Option<&FsPath>, flow_events: bool) -> Result<Self> {
        Self::load_opts(
            pin_dir,
            flow_events,
            aya_log::Level::Info,
            netplane_common::nat::MAX_NAT_ENTRIES,
        )
    }

    /// As `load`, for an agent: the programs' own log (aya-log) at
    /// `log_level`; the default, info, keeps debug messages off; NAT tables
    /// of `nat_entries` translations (maps already pinned keep their size).
    pub fn load_for_agent(
        pin_dir: &FsPath,
        log_level: aya_log::Level,
        nat_entries: u32,
    ) -> Result<Self> {
        Self::load_opts(Some(pin_dir), true, log_level, nat_entries)
    }

    fn load_opts(
        pin_dir: Option<&FsPath>,
        flow_events: bool,
        log_level: aya_log::Level,
        nat_entries: u32,
    ) -> Result<Self> {
        let mut loader = EbpfLoader::new();
        for map in netplane_common::nat::NAT_TABLE_MAPS {
            loader.map_max_entries(map, nat_entries);
        }
        let on = u8::from(flow_events);
        loader.override_global("FLOW_EVENTS_ON", &on, true);
        let level = log_level as u8;
        loader.override_global(aya_log::LEVEL, &level, true);
        let pins: Vec<(&str, PathBuf)> = pin_dir
            .map(|dir| names::ALL.iter().map(|n| (*n, dir.join(n))).collect())
            .unwrap_or_default();
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        let bpf = loader.load(object()).context("loading the eBPF object")?;
        Ok(Self { bpf })
    }

    /// The NAT tables' capacity as the kernel made them.
    pub fn nat_table_entries(&mut self) -> Result<u32> {
        Ok(self.hash_map_data(names::NAT_OUT)?.info()?.max_entries())
    }

    /// A hash map's own handle, for the batch operations below.
    pub fn hash_map_data(&mut self, name: &str) -> Result<&MapData> {
        match self.map(name)? {
            aya::maps::Map::HashMap(m) => Ok(m),
            _ => anyhow::bail!("{name} is not a hash map"),
        }
    }

    /// A TC program, loaded into the kernel (verified) on first use.
    pub fn classifier(&mut self, name: &str) -> Result<&mut SchedClassifier> {
        let prog: &mut SchedClassifier = self
            .bpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing from the object"))?
            .try_into()?;
        if prog.fd().is_err() {
            prog.load()
                .with_context(|| format!("verifier rejected {name}"))?;
        }
        Ok(prog)
    }

    /// An XDP program, loaded on first use.
    pub fn xdp(&mut self, name: &str) -> Result<&mut Xdp> {
        let prog: &mut Xdp = self
            .bpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing from the object"))?
            .try_into()?;
        if prog.fd().is_err() {
            prog.load()
                .with_context(|| format!("verifier rejected {name}"))?;
        }
        Ok(prog)
    }

    pub fn map(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.bpf
            .map_mut(name)
            .with_context(|| format!("map {name} missing from the object"))
    }

    pub fn set_node(&mut self, cfg: NodeConfig) -> Result<()> {
        let mut arr: Array<_, NodeConfig> = Array::try_from(self.map(names::NODE_CONFIG)?)?;
        arr.set(0, cfg, 0)?;
        Ok(())
    }

    pub fn node(&mut self) -> Result<NodeConfig> {
        let arr: Array<_, NodeConfig> = Array::try_from(self.map(names::NODE_CONFIG)?)?;
        Ok(arr.get(&0, 0)?)
    }

    pub fn routes_map(&mut self) -> Result<LpmTrie<&mut MapData, u32, RouteTarget>> {
        Ok(LpmTrie::try_from(self.map(names::ROUTES)?)?)
    }

    pub fn pods_map(&mut self) -> Result<HashMap<&mut MapData, u32, LocalPod>> {
        Ok(HashMap::try_from(self.map(names::LOCAL_PODS)?)?)
    }

    pub fn counters(&mut self) -> Result<Counters> {
        Counters::read(&self.bpf)
    }

    /// Runs one frame through a program with BPF_PROG_TEST_RUN: a TC
    /// program gets an skb with `mark` arriving on `ifindex` (0: lo, which
    /// must then be in the caller's network namespace). Returns the verdict
    /// and the frame as the program left it.
    pub fn run(
        &mut self,
        prog: &str,
        frame: &[u8],
        ifindex: u32,
        mark: u32,
    ) -> Result<(u32, Vec<u8>)> {
        use aya::programs::{TestRun, TestRunOptions};
        let mut out = vec![0u8; frame.len() + 256];
        // struct __sk_buff up to ifindex: len, pkt_type (zero), mark, ...,
        // ifindex at byte 40.
        let mut ctx = [0u8; 44];
        ctx[8..12].copy_from_slice(&mark.to_ne_bytes());
        ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        let is_xdp = matches!(self.bpf.program(prog), Some(aya::programs::Program::Xdp(_)));
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: if is_xdp { None } else { Some(&ctx) },
            ..Default::default()
        };
        let res = if is_xdp {
            self.xdp(prog)?.test_run(opts)?
        } else {
            self.classifier(prog)?.test_run(opts)?
        };
        out.truncate(res.data_size_out as usize);
        Ok((res.return_value, out))
    }

    /// Average time one run of `prog` on a fresh copy of `frame` takes,
    /// over `runs` runs, as the kernel measures each (BPF_PROG_TEST_RUN's
    /// own timing; one run per call, since repeated runs inside one call
    /// see the frame as the previous run left it).
    pub fn time(&mut self, prog: &str, frame: &[u8], runs: u32) -> Result<std::time::Duration> {
        self.time_frames(prog, std::iter::repeat_n(frame, runs as usize))
    }

    /// Average time of one run of `prog` per frame, one run per frame (for
    /// cases where every run must see a different packet, like new flows).
    pub fn time_frames<'f>(
        &mut self,
        prog: &str,
        frames: impl IntoIterator<Item = &'f [u8]>,
    ) -> Result<std::time::Duration> {
        use aya::programs::{TestRun, TestRunOptions};
        let mut out = Vec::new();
        let (mut total, mut runs) = (std::time::Duration::ZERO, 0u32);
        let program = self.classifier(prog)?;
        for frame in frames {
            out.resize(frame.len() + 256, 0);
            let opts = TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..Default::default()
            };
            total += program.test_run(opts)?.duration;
            runs += 1;
        }
        Ok(total / runs.max(1))
    }

    /// A private copy of a running agent's data path: the object loaded
    /// anew, its maps filled from the agent's pins. Running packets through
    /// it changes nothing the agent uses (counters and translations land in
    /// the copy).
    pub fn snapshot(pins: &FsPath) -> Result<Datapath> {
        use netplane_common::nat::{self, FlowKey, NatConfig, NatEntry, NatReverse, SnatSlot};
        let mut dp = Datapath::load(None)?;
        let open = |n: &str| {
            MapData::from_pin(pins.join(n)).with_context(|| format!("opening pinned {n}"))
        };
        macro_rules! copy_hash {
            ($name:expr, $k:ty, $v:ty) => {{
                let src = aya::maps::Map::HashMap(open($name)?);
                let src: HashMap<_, $k, $v> = HashMap::try_from(&src)?;
                let mut dst: HashMap<_, $k, $v> = HashMap::try_from(dp.map($name)?)?;
                for e in src.iter() {
                    let (k, v) = e?;
                    dst.insert(k, v, 0)?;
                }
            }};
        }
        macro_rules! copy_array {
            ($name:expr, $v:ty) => {{
                let src = aya::maps::Map::Array(open($name)?);
                let src: Array<_, $v> = Array::try_from(&src)?;
                let mut dst: Array<_, $v> = Array::try_from(dp.map($name)?)?;
                for i in 0..src.len() {
                    dst.set(i, src.get(&i, 0)?, 0)?;
                }
            }};
        }
        copy_hash!(names::LOCAL_PODS, u32, LocalPod);
        copy_hash!(names::LB_BACKENDS, u32, u32);
        copy_hash!(names::LB_FRONTENDS, u32, u32);
        copy_hash!(nat::names::NAT_OUT, FlowKey, NatEntry);
        copy_hash!(nat::names::NAT_IN, FlowKey, NatReverse);
        copy_hash!(nat::names::PORT_OWNED, FlowKey, u32);
        copy_array!(names::NODE_CONFIG, NodeConfig);
        copy_array!(nat::names::NAT_CONFIG, NatConfig);
        copy_array!(nat::names::SNAT_SLOTS, SnatSlot);
        {
            let src = aya::maps::Map::LpmTrie(open(names::ROUTES)?);
            let src: LpmTrie<_, u32, RouteTarget> = LpmTrie::try_from(&src)?;
            let mut dst = dp.routes_map()?;
            for e in src.iter() {
                let (k, v) = e?;
                dst.insert(&k, v, 0)?;
            }
        }
        Ok(dp)
    }
}

/// Inserts or replaces one UDR route.
pub fn put_route<M: std::borrow::BorrowMut<MapData>>(
    routes: &mut LpmTrie<M, u32, RouteTarget>,
    cidr: Ipv4Net,
    node_ip: Ipv4Addr,
) -> Result<()> {
    let k = Key::new(u32::from(cidr.prefix_len()), key(cidr.network()));
    routes.insert(
        &k,
        RouteTarget {
            node_ip: key(node_ip),
        },
        0,
    )?;
    Ok(())
}

/// All UDR routes: (pod CIDR, owner node IP).
pub fn list_routes<M: std::borrow::Borrow<MapData>>(
    routes: &LpmTrie<M, u32, RouteTarget>,
) -> Result<Vec<(Ipv4Net, Ipv4Addr)>> {
    let mut out = Vec::new();
    for entry in routes.iter() {
        let (k, v) = entry?;
        let net = Ipv4Net::new(addr(k.data()), k.prefix_len() as u8)?;
        out.push((net, addr(v.node_ip)));
    }
    out.sort();
    Ok(out)
}

/// Drop and path counters summed over CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    pub drops: Vec<DropStat>,
    pub paths: Vec<PathStat>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DropStat {
    pub reason: &'static str,
    pub code: u32,
    pub packets: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PathStat {
    pub path: &'static str,
    pub packets: u64,
    pub bytes: u64,
}

impl Counters {
    fn from_maps(drops: &aya::maps::Map, paths: &aya::maps::Map) -> Result<Self> {
        let drops: PerCpuArray<_, u64> = PerCpuArray::try_from(drops)?;
        let paths: PerCpuArray<_, PathCounter> = PerCpuArray::try_from(paths)?;
        let mut out = Counters::default();
        for r in DropReason::ALL {
            let packets = drops.get(&(r as u32), 0)?.iter().sum();
            out.drops.push(DropStat {
                reason: r.name(),
                code: r as u32,
                packets,
            });
        }
        for p in Path::ALL {
            let per_cpu = paths.get(&(p as u32), 0)?;
            out.paths.push(PathStat {
                path: p.name(),
                packets: per_cpu.iter().map(|c| c.packets).sum(),
                bytes: per_cpu.iter().map(|c| c.bytes).sum(),
            });
        }
        Ok(out)
    }

    pub fn read(bpf: &Ebpf) -> Result<Self> {
        let get = |n| bpf.map(n).with_context(|| format!("map {n} missing"));
        Self::from_maps(get(names::DROPS)?, get(names::PATHS)?)
    }

    /// Reads the counters of a running agent from its pins.
    pub fn read_pinned(pin_dir: &FsPath) -> Result<Self> {
        let open = |n: &str| -> Result<aya::maps::Map> {
            let path = pin_dir.join(n);
            let data = MapData::from_pin(&path)
                .with_context(|| format!("opening {} (is the agent running?)", path.display()))?;
            Ok(aya::maps::Map::PerCpuArray(data))
        };
        Self::from_maps(&open(names::DROPS)?, &open(names::PATHS)?)
    }

    pub fn drops_of(&self, reason: DropReason) -> u64 {
        self.drops
            .iter()
            .find(|d| d.reason == reason.name())
            .map_or(0, |d| d.packets)
    }

    pub fn packets_of(&self, path: Path) -> u64 {
        self.paths
            .iter()
            .find(|p| p.path == path.name())
            .map_or(0, |p| p.packets)
    }
}

/// Pod IPs in a running agent's LOCAL_PODS, read from its pins.
pub fn pinned_pod_ips(pin_dir: &FsPath) -> Result<Vec<Ipv4Addr>> {
    let data = MapData::from_pin(pin_dir.join(names::LOCAL_PODS))?;
    let map = aya::maps::Map::HashMap(data);
    let pods: HashMap<_, u32, LocalPod> = HashMap::try_from(&map)?;
    Ok(pods.keys().filter_map(Result::ok).map(addr).collect())
}

/// UDR routes of a running agent, read from its pins.
pub fn pinned_routes(pin_dir: &FsPath) -> Result<Vec<(Ipv4Net, Ipv4Addr)>> {
    let path = pin_dir.join(names::ROUTES);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("opening {} (is the agent running?)", path.display()))?;
    let map = aya::maps::Map::LpmTrie(data);
    let routes: LpmTrie<_, u32, RouteTarget> = LpmTrie::try_from(&map)?;
    list_routes(&routes)
}

/// Entries per BPF_MAP_*_BATCH call.
const BATCH: usize = 4096;

/// union bpf_attr, the member of the BPF_MAP_*_BATCH commands.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn bpf_batch(cmd: libc::c_long, attr: &mut BatchAttr) -> std::io::Result<()> {
    // SAFETY: attr matches the kernel's layout; the caller's buffers hold
    // `count` elements and outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn raw_fd(map: &MapData) -> u32 {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    map.fd().as_fd().as_raw_fd() as u32
}

/// A walk over a hash map in batches (BPF_MAP_LOOKUP_BATCH; aya 0.14 has
/// no batch operations): one syscall per 4,096 entries where aya's
/// iterator makes two per entry, which at 100k translations is CPU the
/// pods feel. It can stop and resume, so a large table is walked a piece
/// at a time. Not for per-CPU maps (their values are arrays).
#[derive(Default)]
pub struct HashWalk {
    /// The kernel's resume token (a bucket index for hash maps).
    token: Option<[u8; 8]>,
    done: bool,
}

impl HashWalk {
    pub fn done(&self) -> bool {
        self.done
    }

    /// The next entries, at least `want` unless the walk ends first
    /// (whole buckets come at once).
    pub fn next<K, V>(&mut self, map: &MapData, want: usize) -> Result<Vec<(K, V)>>
    where
        K: aya::Pod + Default,
        V: aya::Pod + Default,
    {
        let mut keys = vec![K::default(); BATCH];
        let mut values = vec![V::default(); BATCH];
        let mut out = Vec::new();
        // Ask for what is still wanted (whole buckets come at once; a bucket
        // larger than the ask is ENOSPC, and the ask grows).
        let mut ask = 64usize;
        while !self.done && out.len() < want {
            ask = ask.max((want - out.len()).min(BATCH)).min(BATCH);
            let token_in = self.token.unwrap_or_default();
            let mut token_out = [0u8; 8];
            let mut attr = BatchAttr {
                in_batch: if self.token.is_some() {
                    token_in.as_ptr() as u64
                } else {
                    0
                },
                out_batch: token_out.as_mut_ptr() as u64,
                keys: keys.as_mut_ptr() as u64,
                values: values.as_mut_ptr() as u64,
                count: ask as u32,
                map_fd: raw_fd(map),
                ..Default::default()
            };
            let res = bpf_batch(BPF_MAP_LOOKUP_BATCH, &mut attr);
            let n = (attr.count as usize).min(ask);
            match res {
                Ok(()) => self.token = Some(token_out),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => self.done = true,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && ask < BATCH => {
                    ask *= 2;
                    continue;
                }
                Err(e) => return Err(e).context("BPF_MAP_LOOKUP_BATCH"),
            }
            out.extend(keys[..n].iter().copied().zip(values[..n].iter().copied()));
        }
        Ok(out)
    }
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// Every (key, value) of a hash map, in batches.
pub fn dump_hash<K, V>(map: &MapData) -> Result<Vec<(K, V)>>
where
    K: aya::Pod + Default,
    V: aya::Pod + Default,
{
    HashWalk::default().next(map, usize::MAX)
}

/// Deletes `keys` from a hash map in batches (BPF_MAP_DELETE_BATCH),
/// returning which were there: a key someone else removed first is
/// skipped, not an error.
pub fn delete_batch<K: aya::Pod>(map: &MapData, keys: &[K]) -> Result<Vec<bool>> {
    let mut deleted = vec![false; keys.len()];
    let mut i = 0;
    while i < keys.len() {
        let n = (keys.len() - i).min(BATCH);
        let mut attr = BatchAttr {
            keys: keys[i..].as_ptr() as u64,
            count: n as u32,
            map_fd: raw_fd(map),
            ..Default::default()
        };
        let res = bpf_batch(BPF_MAP_DELETE_BATCH, &mut attr);
        // The kernel deletes in order and stops at the first failure.
        let ok = (attr.count as usize).min(n);
        deleted[i..i + ok].fill(true);
        i += ok;
        match res {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => i += 1,
            Err(e) => return Err(e).context("BPF_MAP_DELETE_BATCH"),
        }
    }
    Ok(deleted)
}
