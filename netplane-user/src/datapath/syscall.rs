//! The raw bpf() calls aya 0.14 does not offer: batch lookups and deletes
//! over hash maps, and detaching a pinned link. One place for every
//! `libc::syscall(SYS_bpf, ...)`.
use std::path::Path;

use anyhow::{Context, Result};
use aya::maps::MapData;

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

/// union bpf_attr for the element commands: map_fd, key, value, flags.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn bpf_elem(cmd: libc::c_long, attr: &mut ElemAttr) -> std::io::Result<()> {
    // SAFETY: attr matches the kernel's layout; key and value point at
    // buffers of the map's key and value sizes that outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut ElemAttr,
            std::mem::size_of::<ElemAttr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Removes `key` and returns the value it held at that instant
/// (BPF_MAP_LOOKUP_AND_DELETE_ELEM, hash maps since Linux 5.14): what was
/// removed is known exactly, even when the data path wrote it a moment
/// before. None: no such key.
pub fn take<K: aya::Pod, V: aya::Pod + Default>(map: &MapData, key: &K) -> Result<Option<V>> {
    const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
    let mut value = V::default();
    let mut attr = ElemAttr {
        map_fd: raw_fd(map),
        key: key as *const K as u64,
        value: &mut value as *mut V as u64,
        ..Default::default()
    };
    match bpf_elem(BPF_MAP_LOOKUP_AND_DELETE_ELEM, &mut attr) {
        Ok(()) => Ok(Some(value)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e).context("BPF_MAP_LOOKUP_AND_DELETE_ELEM"),
    }
}

/// Inserts `key` unless it exists (BPF_NOEXIST); false when it did.
pub fn put_new<K: aya::Pod, V: aya::Pod>(map: &MapData, key: &K, value: &V) -> Result<bool> {
    const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
    const BPF_NOEXIST: u64 = 1;
    let mut attr = ElemAttr {
        map_fd: raw_fd(map),
        key: key as *const K as u64,
        value: value as *const V as u64,
        flags: BPF_NOEXIST,
        ..Default::default()
    };
    match bpf_elem(BPF_MAP_UPDATE_ELEM, &mut attr) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(e).context("BPF_MAP_UPDATE_ELEM"),
    }
}

/// BPF_OBJ_GET on a pinned link, then BPF_LINK_DETACH: the program leaves
/// its hook at once. (aya 0.14 exposes neither for a pinned link.)
pub fn detach_pinned(pin: &Path) -> std::io::Result<()> {
    use std::{ffi::CString, os::unix::ffi::OsStrExt as _};
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_DETACH: libc::c_long = 34;
    let path = CString::new(pin.as_os_str().as_bytes())?;
    // union bpf_attr, the obj_get member: pathname, bpf_fd, file_flags.
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
    }
    let attr = ObjGet {
        pathname: path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
    };
    // SAFETY: attr outlives the call and matches the kernel's layout.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &attr as *const ObjGet,
            std::mem::size_of::<ObjGet>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new fd that we own.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    // union bpf_attr, the link_detach member: link_fd.
    let link_fd: u32 = std::os::fd::AsRawFd::as_raw_fd(&fd) as u32;
    // SAFETY: as above.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_DETACH,
            &link_fd as *const u32,
            std::mem::size_of::<u32>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
