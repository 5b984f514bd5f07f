//! The maps' declarations, held to `netplane_common::registry`: each static
//! is declared through `maps!`, which fails the build unless the registry
//! has a map of the same name, kind, key and value. Userspace opens the
//! maps through the same registry, so both sides name and type each map
//! once.
use aya_ebpf::maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, Queue, RingBuf};
use netplane_common::registry::{MapDef, kind};

/// A map type of aya-ebpf that holds `K` -> `V` as a map of `Kind`.
pub trait Holds<Kind, K, V> {}
impl<K, V> Holds<kind::Hash, K, V> for HashMap<K, V> {}
impl<K, V> Holds<kind::LruHash, K, V> for LruHashMap<K, V> {}
impl<K, V> Holds<kind::LpmTrie, K, V> for LpmTrie<K, V> {}
impl<V> Holds<kind::Array, u32, V> for Array<V> {}
impl<V> Holds<kind::PerCpuArray, u32, V> for PerCpuArray<V> {}
impl<V> Holds<kind::Queue, (), V> for Queue<V> {}
impl Holds<kind::RingBuf, (), ()> for RingBuf {}

/// Type-checks a static against its registry entry (never called).
pub fn holds<M: Holds<Kind, K, V>, Kind, K, V>(_map: &M, _def: MapDef<Kind, K, V>) {}

/// Declares maps as `#[map]` statics, each checked against the registry.
macro_rules! maps {
    ($( $(#[$attr:meta])* $name:ident: $ty:ty = $init:expr; )+) => {$(
        $(#[$attr])*
        #[aya_ebpf::macros::map]
        pub static $name: $ty = $init;
        const _: () = assert!(
            netplane_common::registry::same_name(
                stringify!($name),
                netplane_common::registry::$name.name,
            ),
            "a map's static and its registry entry differ in name",
        );
        const _: fn() = || crate::registry::holds(&$name, netplane_common::registry::$name);
    )+};
}
pub(crate) use maps;
