//! netplane in production: what a node runs. Its layers, each a folder,
//! lowest first (`cargo xtask lint` holds every import to point down):
//!
//! - `paths` (where state lives) and `sys` (namespaces, interfaces,
//!   commands): used by all;
//! - `datapath`: the eBPF object loaded, its maps typed, hooks pinned and
//!   adopted, test runs, the raw bpf() calls;
//! - `config`: the cluster file, AKS's validation rules, address planning;
//! - `source`: where nodes and Services come from (the file or the
//!   Kubernetes API);
//! - `cni`: the CNI plugin and the registry it shares with the agent;
//! - `agent`: a node's or the load balancer's agent (roles, reconcile, SNAT
//!   configuration and collection, flow events, metrics) and what it
//!   publishes of itself;
//! - `inspect`: the read-only views (routes, ports, nat, stats, pods) the
//!   CLI prints, read from the agents' pins and published state.
//!
//! The lab, its web page and its tools are another crate (`netplane-lab`)
//! built on this one.
pub mod agent;
pub mod cni;
pub mod config;
pub mod datapath;
pub mod inspect;
pub mod paths;
pub mod source;
pub mod sys;
