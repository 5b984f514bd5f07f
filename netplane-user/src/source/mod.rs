//! Where the agent learns the cluster's nodes. One interface, two sources:
//! the cluster file's `[[nodes]]`, or the Kubernetes API's Node objects
//! (`kubernetes`). Either way the cluster-wide settings (pod CIDR,
//! outbound, ports, timeouts) come from the cluster file, and what the
//! source says about nodes is held to the file's rules (`admit`).
pub mod kubernetes;
pub mod service_watch;

use std::{net::Ipv4Addr, path::PathBuf, time::SystemTime};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::config::{Cluster, NodePlan, cluster::Node};

/// Which source the agent takes nodes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NodeSource {
    /// The cluster file's `[[nodes]]` (and its reloads).
    #[default]
    File,
    /// The Kubernetes API: a kubeconfig, or the pod's in-cluster
    /// configuration when None.
    Kubernetes { kubeconfig: Option<PathBuf> },
}

/// A node as the API describes it; fields it has not set yet are None.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiNode {
    pub name: String,
    /// The first `InternalIP` of `status.addresses`.
    pub ip: Option<Ipv4Addr>,
    /// `spec.podCIDR` (kubenet's one IPv4 range per node).
    pub pod_cidr: Option<Ipv4Net>,
    /// `metadata.creationTimestamp` (Unix seconds): nodes keep the order
    /// they joined in, so a new node's port block goes after the others'.
    pub created: i64,
}

/// The watch's state, as `routes` and the metrics show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum WatchState {
    /// The initial list is not complete yet: nothing is applied.
    Starting,
    /// The list and the watch agree with the API server.
    Synced,
    /// Listing again after the watch ended; the last state is kept.
    Resyncing,
    /// The API server cannot be reached since this Unix time; the data
    /// path keeps forwarding with the last known nodes.
    Disconnected { since: u64 },
}

impl WatchState {
    pub fn disconnected_now() -> Self {
        let since = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Self::Disconnected { since }
    }
}

/// What the API last said: every node it lists, and the watch's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub nodes: Vec<ApiNode>,
    pub state: WatchState,
    /// True once an initial list has completed (a view before that is
    /// never applied).
    pub listed: bool,
}

impl Default for NodeView {
    fn default() -> Self {
        Self {
            nodes: Vec::new(),
            state: WatchState::Starting,
            listed: false,
        }
    }
}

/// Where an agent's nodes came from, written beside its status on every
/// change (paths::node_dir): `routes` shows it.
pub const SOURCE_STATUS_FILE: &str = "nodes-source.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceStatus {
    /// "file" or "kubernetes".
    pub source: String,
    /// The Kubernetes watch's state (None for the file).
    pub watch: Option<WatchState>,
    /// The nodes routed, in order.
    pub nodes: Vec<NodePlan>,
    /// Nodes the source lists that are not routed, and why.
    pub refused: Vec<RefusedNode>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RefusedNode {
    pub node: String,
    pub reason: String,
}

impl SourceStatus {
    /// One line for people: where the nodes come from, and how the watch
    /// is.
    pub fn describe(&self) -> String {
        let watch = match self.watch {
            None => String::new(),
            Some(WatchState::Disconnected { since }) => {
                format!(", API server unreachable since Unix time {since} (last known nodes kept)")
            }
            Some(WatchState::Starting) => ", listing".into(),
            Some(WatchState::Synced) => ", synced".into(),
            Some(WatchState::Resyncing) => ", resyncing (last known nodes kept)".into(),
        };
        let refused = match self.refused.len() {
            0 => String::new(),
            n => format!(", {n} refused"),
        };
        format!("nodes from {}{watch}{refused}", self.source)
    }
}

/// An agent's source status, if it wrote one.
pub fn read_status(agent: &str) -> Option<SourceStatus> {
    let path = crate::paths::node_dir(agent).join(SOURCE_STATUS_FILE);
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Why a node the API lists is not routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub node: String,
    pub reason: String,
}

/// The cluster with the API's nodes in it: `settings` (the cluster file)
/// with its nodes replaced by those that are complete and that the file's
/// rules accept, taken in the order they joined. A node without an address
/// or pod CIDR yet is skipped; one that would break a rule (the 401st node
/// past Azure's route limit, a pod CIDR outside the cluster's, a duplicate
/// IP) is refused with the rule's own words, and the nodes before it stay.
pub fn admit(settings: &Cluster, view: &NodeView) -> (Cluster, Vec<Refused>) {
    let mut nodes: Vec<&ApiNode> = view.nodes.iter().collect();
    nodes.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
    let mut refused = Vec::new();
    let mut rest = Vec::new();
    for n in nodes {
        match (n.ip, n.pod_cidr) {
            (Some(ip), Some(pod_cidr)) => rest.push(Node {
                name: n.name.clone(),
                ip,
                pod_cidr: Some(pod_cidr),
            }),
            (None, _) => refused.push(Refused {
                node: n.name.clone(),
                reason: "no InternalIP yet".into(),
            }),
            (_, None) => refused.push(Refused {
                node: n.name.clone(),
                reason: "no pod CIDR yet".into(),
            }),
        }
    }
    let mut cluster = settings.clone();
    cluster.nodes = Vec::new();
    // Rules already broken without the nodes (the empty list's "at least
    // one node"): only a rule a node newly breaks refuses it.
    let broken = violation_texts(&cluster);
    let new_rule = |c: &Cluster| violation_texts(c).into_iter().find(|v| !broken.contains(v));
    // The rules only get stricter as nodes are added (more routes, fewer
    // ports each, more addresses to clash with), so the longest acceptable
    // run of the remaining nodes is found by bisection: a few validations
    // per refused node, not one per node.
    let mut rest = rest.as_slice();
    while !rest.is_empty() {
        let fits = |k: usize| {
            let mut c = cluster.clone();
            c.nodes.extend_from_slice(&rest[..k]);
            new_rule(&c).is_none()
        };
        let (mut lo, mut hi) = (0, rest.len());
        if fits(hi) {
            lo = hi;
        } else {
            while lo + 1 < hi {
                let mid = (lo + hi) / 2;
                if fits(mid) { lo = mid } else { hi = mid }
            }
        }
        cluster.nodes.extend_from_slice(&rest[..lo]);
        let Some(next) = rest.get(lo) else {
            break;
        };
        let mut with = cluster.clone();
        with.nodes.push(next.clone());
        refused.push(Refused {
            node: next.name.clone(),
            reason: new_rule(&with).unwrap_or_default(),
        });
        rest = &rest[lo + 1..];
    }
    (cluster, refused)
}

fn violation_texts(c: &Cluster) -> Vec<String> {
    c.violations().iter().map(|v| v.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ip: &str, cidr: Option<&str>, created: i64) -> ApiNode {
        ApiNode {
            name: name.into(),
            ip: Some(ip.parse().unwrap()),
            pod_cidr: cidr.map(|c| c.parse().unwrap()),
            created,
        }
    }

    fn settings() -> Cluster {
        Cluster::parse("test", crate::config::cluster::DEFAULT_CLUSTER).unwrap()
    }

    fn view(nodes: Vec<ApiNode>) -> NodeView {
        NodeView {
            nodes,
            state: WatchState::Synced,
            listed: true,
        }
    }

    #[test]
    fn nodes_are_taken_in_the_order_they_joined() {
        let (c, refused) = admit(
            &settings(),
            &view(vec![
                node("b", "10.224.0.5", Some("10.244.1.0/24"), 2),
                node("a", "10.224.0.4", Some("10.244.0.0/24"), 1),
            ]),
        );
        assert!(refused.is_empty(), "{refused:?}");
        let names: Vec<_> = c.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(c.nodes()[1].pod_cidr.to_string(), "10.244.1.0/24");
    }

    #[test]
    fn incomplete_and_rule_breaking_nodes_are_refused_alone() {
        let (c, refused) = admit(
            &settings(),
            &view(vec![
                node("a", "10.224.0.4", Some("10.244.0.0/24"), 1),
                node("no-cidr", "10.224.0.6", None, 2),
                node("outside", "10.224.0.7", Some("10.99.0.0/24"), 3),
                node("same-ip", "10.224.0.4", Some("10.244.3.0/24"), 4),
                node("c", "10.224.0.8", Some("10.244.4.0/24"), 5),
            ]),
        );
        let names: Vec<_> = c.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["a", "c"]);
        let why: Vec<_> = refused
            .iter()
            .map(|r| (r.node.as_str(), r.reason.as_str()))
            .collect();
        assert_eq!(why[0], ("no-cidr", "no pod CIDR yet"));
        assert_eq!(why[1].0, "outside");
        assert!(why[1].1.contains("10.244.0.0/16"), "{}", why[1].1);
        assert_eq!(why[2].0, "same-ip");
    }

    #[test]
    fn the_401st_node_is_refused_with_the_route_limit() {
        let nodes: Vec<ApiNode> = (0..401u32)
            .map(|i| {
                let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 224, 2, 0)) + i);
                let cidr = format!("10.244.{}.{}/27", i / 8, (i % 8) * 32);
                ApiNode {
                    name: format!("n{i:03}"),
                    ip: Some(ip),
                    pod_cidr: Some(cidr.parse().unwrap()),
                    created: i64::from(i),
                }
            })
            .collect();
        let mut s = settings();
        s.network.node_pod_prefix = 27;
        s.network.max_pods = 30;
        s.outbound.allocated_outbound_ports = Some(64);
        let (c, refused) = admit(&s, &view(nodes));
        assert_eq!(c.nodes.len(), 400);
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert_eq!(refused[0].node, "n400");
        assert!(refused[0].reason.contains("400"), "{}", refused[0].reason);
    }
}
