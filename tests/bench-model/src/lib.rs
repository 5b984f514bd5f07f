//! The benchmark's model, typed once: what `netplane-bench` prints (`tools`:
//! each generator's and measurement's output) and what `cargo xtask bench`
//! makes of it (`results`: the raw `Run` and the summarised `Results`, the
//! shape of docs/bench/results.json). The tools serialize these types and
//! xtask deserializes the same ones: no field is read by name. A crate of
//! its own, with serde alone, so that xtask builds before the eBPF
//! toolchain is installed.
mod results;
pub mod tools;

pub use results::*;
