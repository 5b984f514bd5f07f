//! Empty on purpose: the programs are the `netplane` binary (src/main.rs) built
//! for the BPF target. This library only lets netplane-user depend on this
//! crate so cargo rebuilds the object when it changes.
#![no_std]
