//! Nodes from the Kubernetes API, watched as kubenet's route controller
//! and the mature CNI agents do: nothing is applied until the initial list
//! is complete, a new list replaces the old one whole (so what no longer
//! exists is pruned), and while the API server is away the last known
//! nodes stay in force and the watch retries with a short capped backoff.
use std::{path::Path, time::Duration};

use anyhow::{Context, Result};
use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Node;
use kube::{
    Api, Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{
        WatchStreamExt as _,
        utils::Backoff,
        watcher::{self, Event},
    },
};
use tokio::sync::watch;
use tracing::{info, warn};

use super::{ApiNode, NodeView, WatchState};

/// A client from a kubeconfig file, or the pod's in-cluster configuration
/// (and the usual KUBECONFIG fallbacks) when None.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("using the kubeconfig {}", path.display()))?
        }
        None => Config::infer()
            .await
            .context("no kubeconfig given, and no in-cluster configuration")?,
    };
    Client::try_from(config).context("making the Kubernetes client")
}

/// Watches every Node and publishes what the API says on `tx`, forever.
pub async fn watch_nodes(client: Client, tx: watch::Sender<NodeView>) {
    let api: Api<Node> = Api::all(client);
    let mut events = watcher::watcher(api, watcher::Config::default())
        .backoff(Retry::default())
        .boxed();
    let mut listing: Option<Vec<ApiNode>> = None;
    let mut last_error = String::new();
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Init) => {
                listing = Some(Vec::new());
                tx.send_modify(|v| {
                    if v.listed {
                        v.state = WatchState::Resyncing;
                    }
                });
            }
            Ok(Event::InitApply(node)) => {
                if let Some(l) = listing.as_mut() {
                    l.push(api_node(&node));
                }
            }
            Ok(Event::InitDone) => {
                let nodes = listing.take().unwrap_or_default();
                info!(nodes = nodes.len(), "Kubernetes nodes listed");
                last_error.clear();
                tx.send_replace(NodeView {
                    nodes,
                    state: WatchState::Synced,
                    listed: true,
                });
            }
            Ok(Event::Apply(node)) => {
                let n = api_node(&node);
                tx.send_modify(|v| {
                    v.state = WatchState::Synced;
                    match v.nodes.iter_mut().find(|x| x.name == n.name) {
                        Some(x) => *x = n,
                        None => v.nodes.push(n),
                    }
                });
            }
            Ok(Event::Delete(node)) => {
                let name = node.metadata.name.unwrap_or_default();
                tx.send_modify(|v| v.nodes.retain(|x| x.name != name));
            }
            Err(e) => {
                let text = e.to_string();
                if text != last_error {
                    warn!(
                        "watching Kubernetes nodes: {text} (keeping the last known nodes, retrying)"
                    );
                    last_error = text;
                }
                tx.send_if_modified(|v| {
                    if matches!(v.state, WatchState::Disconnected { .. }) {
                        return false;
                    }
                    v.state = WatchState::disconnected_now();
                    true
                });
            }
        }
    }
}

/// What netplane reads of a Node.
pub fn api_node(node: &Node) -> ApiNode {
    let spec = node.spec.as_ref();
    let pod_cidr = spec
        .and_then(|s| s.pod_cidr.clone())
        .into_iter()
        .chain(spec.and_then(|s| s.pod_cidrs.clone()).unwrap_or_default())
        .find_map(|c| c.parse().ok());
    let ip = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .and_then(|a| {
            a.iter()
                .filter(|a| a.type_ == "InternalIP")
                .find_map(|a| a.address.parse().ok())
        });
    ApiNode {
        name: node.metadata.name.clone().unwrap_or_default(),
        ip,
        pod_cidr,
        created: node
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second())
            .unwrap_or(i64::MAX),
    }
}

/// Retry delays after a watch error: 250 ms doubling to 2 s, so a
/// restarted API server is found within about two seconds (kube's default
/// goes up to 30 s).
struct Retry(Duration);

const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(2);

impl Default for Retry {
    fn default() -> Self {
        Self(RETRY_FIRST)
    }
}

impl Iterator for Retry {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let now = self.0;
        self.0 = (self.0 * 2).min(RETRY_MAX);
        Some(now)
    }
}

impl Backoff for Retry {
    fn reset(&mut self) {
        self.0 = RETRY_FIRST;
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{NodeAddress, NodeSpec, NodeStatus};

    use super::*;

    #[test]
    fn a_node_is_read_from_its_spec_and_addresses() {
        let node = Node {
            metadata: kube::api::ObjectMeta {
                name: Some("node-7".into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: Some("10.244.7.0/24".into()),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                addresses: Some(vec![
                    NodeAddress {
                        type_: "Hostname".into(),
                        address: "node-7".into(),
                    },
                    NodeAddress {
                        type_: "InternalIP".into(),
                        address: "10.224.0.11".into(),
                    },
                ]),
                ..Default::default()
            }),
        };
        let n = api_node(&node);
        assert_eq!(n.name, "node-7");
        assert_eq!(n.ip, Some("10.224.0.11".parse().unwrap()));
        assert_eq!(n.pod_cidr, Some("10.244.7.0/24".parse().unwrap()));
        let bare = api_node(&Node::default());
        assert_eq!((bare.ip, bare.pod_cidr), (None, None));
    }

    #[test]
    fn retries_double_up_to_two_seconds_and_reset() {
        let mut r = Retry::default();
        let first: Vec<_> = r.by_ref().take(5).map(|d| d.as_millis()).collect();
        assert_eq!(first, [250, 500, 1000, 2000, 2000]);
        r.reset();
        assert_eq!(r.next(), Some(RETRY_FIRST));
    }
}
