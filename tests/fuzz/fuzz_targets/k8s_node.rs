//! Node objects as the API server might send them: any JSON that decodes
//! as a Node is read (name, InternalIP, pod CIDR) and admitted against the
//! default cluster's rules without a panic; what is admitted is valid.
#![no_main]

use k8s_openapi::api::core::v1::Node;
use libfuzzer_sys::fuzz_target;
use netplane::{
    config::Cluster,
    source::{NodeView, WatchState, admit, kubernetes::api_node},
};

fuzz_target!(|data: &[u8]| {
    // A JSON array of Nodes, or one Node.
    let nodes: Vec<Node> = match serde_json::from_slice::<Vec<Node>>(data) {
        Ok(v) => v,
        Err(_) => match serde_json::from_slice::<Node>(data) {
            Ok(n) => vec![n],
            Err(_) => return,
        },
    };
    let view = NodeView {
        nodes: nodes.iter().take(64).map(api_node).collect(),
        state: WatchState::Synced,
        listed: true,
    };
    let settings = Cluster::load_settings(None).expect("the default settings are valid");
    let (cluster, refused) = admit(&settings, &view);
    assert_eq!(cluster.nodes.len() + refused.len(), view.nodes.len());
    if !cluster.nodes.is_empty() {
        assert!(
            cluster.violations().is_empty(),
            "admitted nodes break a rule"
        );
    }
});
