//! netplane's userspace, in layers (each a folder):
//!
//! - `datapath`: the eBPF object loaded, its maps typed, hooks pinned and
//!   adopted, test runs, the raw bpf() calls;
//! - `agent`: a node's or the load balancer's agent (roles, reconcile, SNAT
//!   configuration and collection, flow events, metrics);
//! - `config`: the cluster file, AKS's validation rules, address planning;
//! - `cni`: the CNI plugin and the registry it shares with the agent;
//! - `lab`: the cluster built in network namespaces (topology, the
//!   netplane, classic and routed builders, agents, trace);
//! - `inspect`: the read-only views (routes, ports, nat, stats, pods,
//!   topology) that the CLI prints and the web page serves;
//! - `ui`: `netplane ui`, the live web page of the cluster;
//! - `tools`: small programs for lab traffic (whoami).
//!
//! `paths` (where state lives) and `sys` (namespaces, interfaces, commands)
//! serve them all.
pub mod agent;
pub mod cni;
pub mod config;
pub mod datapath;
pub mod inspect;
pub mod lab;
pub mod paths;
pub mod source;
pub mod sys;
pub mod tools;
pub mod ui;
