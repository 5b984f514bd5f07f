//! Configuration: the cluster file and AKS's rules for it, and the address
//! and port arithmetic of a cluster (`plan`).
pub mod cluster;
pub mod plan;

pub use cluster::{Cluster, NodePlan, OutboundType};
