//! netplane's userspace: the agent, the CLI's commands and the lab.
pub mod agent;
pub mod bench;
pub mod cluster;
pub mod cni;
pub mod ebpf;
pub mod fixture;
pub mod flows;
pub mod hooks;
pub mod lab;
pub mod metrics;
pub mod paths;
pub mod plan;
pub mod pods;
pub mod snat;
pub mod sys;
pub mod trace;
pub mod whoami;
