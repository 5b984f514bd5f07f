//! Configuration: the cluster file and AKS's rules for it, the outbound
//! path's numbers derived from it (`outbound`), and the address and port
//! arithmetic of a cluster (`plan`).
pub mod cluster;
pub mod outbound;
pub mod plan;
mod validate;

pub use cluster::{Cluster, NodePlan, OutboundType};
