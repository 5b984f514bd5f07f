//! Services and their EndpointSlices from the Kubernetes API, turned into
//! the frontends and backends the data path holds (docs/services.md).
//!
//! EndpointSlices are read in the newest version the server serves:
//! `discovery.k8s.io/v1` on every current cluster (1.21 and later), and
//! `v1beta1` on the lab's 1.20 API server. Both are watched as dynamic
//! objects and read through the v1 type; the one field that moved (the
//! endpoint's node, `topology["kubernetes.io/hostname"]` in v1beta1,
//! `nodeName` in v1) is carried over.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use anyhow::{Context, Result};
use futures_util::StreamExt as _;
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, GroupVersionKind},
    runtime::{WatchStreamExt as _, watcher},
};
use netplane_common::{
    nat::{PROTO_TCP, PROTO_UDP},
    services::DEFAULT_AFFINITY_SECONDS,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{info, warn};

/// The label that ties an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// v1beta1's topology key for the endpoint's node.
const HOSTNAME_TOPOLOGY: &str = "kubernetes.io/hostname";

/// One service port as the data path holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frontend {
    /// `namespace/name:port-name` (or the port number when unnamed).
    pub name: String,
    pub ip: Ipv4Addr,
    pub port: u16,
    pub proto: u8,
    /// Ready backends (pod address, target port), sorted, no duplicates.
    pub backends: Vec<(Ipv4Addr, u16)>,
    /// ClientIP session affinity's timeout; 0: none.
    pub affinity_secs: u32,
}

/// What the API last said about Services, once both lists are complete.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceView {
    pub frontends: Vec<Frontend>,
    pub listed: bool,
}

/// The frontends of `services` with their ready backends from `slices`,
/// as kube-proxy computes them: ClusterIP services with an IPv4 cluster
/// IP (headless ones have none), TCP and UDP ports; an endpoint is ready
/// unless its `ready` condition says false, and its first address counts;
/// `internalTrafficPolicy: Local` keeps the endpoints on `own_node`.
pub fn frontends(services: &[Service], slices: &[EndpointSlice], own_node: &str) -> Vec<Frontend> {
    let mut out = Vec::new();
    for svc in services {
        let (Some(ns), Some(name), Some(spec)) = (
            svc.metadata.namespace.as_deref(),
            svc.metadata.name.as_deref(),
            svc.spec.as_ref(),
        ) else {
            continue;
        };
        let Some(ip) = spec
            .cluster_ip
            .as_deref()
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
        else {
            continue;
        };
        let local_only = spec.internal_traffic_policy.as_deref() == Some("Local");
        let affinity_secs = match spec.session_affinity.as_deref() {
            Some("ClientIP") => spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u32::try_from(t).ok())
                .unwrap_or(DEFAULT_AFFINITY_SECONDS),
            _ => 0,
        };
        let mine: Vec<&EndpointSlice> = slices
            .iter()
            .filter(|s| {
                s.metadata.namespace.as_deref() == Some(ns)
                    && s.address_type == "IPv4"
                    && s.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(SERVICE_NAME_LABEL))
                        .is_some_and(|n| n == name)
            })
            .collect();
        for sp in spec.ports.iter().flatten() {
            let Some(proto) = protocol(sp.protocol.as_deref()) else {
                continue;
            };
            let Ok(port) = u16::try_from(sp.port) else {
                continue;
            };
            let port_name = sp.name.clone().unwrap_or_default();
            let mut backends = BTreeSet::new();
            for slice in &mine {
                let Some(target) = slice.ports.iter().flatten().find_map(|p| {
                    let same_name = p.name.clone().unwrap_or_default() == port_name;
                    let same_proto = protocol(p.protocol.as_deref()) == Some(proto);
                    (same_name && same_proto)
                        .then_some(p.port)
                        .flatten()
                        .and_then(|n| u16::try_from(n).ok())
                }) else {
                    continue;
                };
                for ep in &slice.endpoints {
                    let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                    let here = ep.node_name.as_deref() == Some(own_node);
                    if !ready || (local_only && !here) {
                        continue;
                    }
                    if let Some(addr) = ep.addresses.first().and_then(|a| a.parse().ok()) {
                        backends.insert((addr, target));
                    }
                }
            }
            let label = if port_name.is_empty() {
                sp.port.to_string()
            } else {
                port_name
            };
            out.push(Frontend {
                name: format!("{ns}/{name}:{label}"),
                ip,
                port,
                proto,
                backends: backends.into_iter().collect(),
                affinity_secs,
            });
        }
    }
    out.sort_by_key(|f| (f.ip, f.port, f.proto));
    out.dedup_by_key(|f| (f.ip, f.port, f.proto));
    out
}

/// TCP (the default) and UDP; SCTP is not carried.
fn protocol(p: Option<&str>) -> Option<u8> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(PROTO_TCP),
        "UDP" => Some(PROTO_UDP),
        _ => None,
    }
}

/// The EndpointSlice API the server serves: v1, else v1beta1.
pub async fn slice_resource(client: &Client) -> Result<ApiResource> {
    let mut last = None;
    for version in ["v1", "v1beta1"] {
        match client
            .list_api_group_resources(&format!("discovery.k8s.io/{version}"))
            .await
        {
            Ok(list) if list.resources.iter().any(|r| r.kind == "EndpointSlice") => {
                let gvk = GroupVersionKind::gvk("discovery.k8s.io", version, "EndpointSlice");
                return Ok(ApiResource::from_gvk(&gvk));
            }
            Ok(_) => {}
            Err(e) => last = Some(e),
        }
    }
    match last {
        Some(e) => Err(e).context("asking the API server which EndpointSlice version it serves"),
        None => anyhow::bail!("the API server serves no EndpointSlice"),
    }
}

/// An EndpointSlice of either version, read through the v1 type.
pub fn slice_from_dynamic(obj: &DynamicObject) -> Result<EndpointSlice> {
    let mut v = serde_json::to_value(obj)?;
    v["apiVersion"] = "discovery.k8s.io/v1".into();
    v["kind"] = "EndpointSlice".into();
    if let Some(eps) = v.get_mut("endpoints").and_then(|e| e.as_array_mut()) {
        for ep in eps {
            let host = ep
                .get("topology")
                .and_then(|t| t.get(HOSTNAME_TOPOLOGY))
                .cloned();
            if let (Some(host), None) = (host, ep.get("nodeName")) {
                ep["nodeName"] = host;
            }
        }
    }
    if v.get("endpoints").is_none_or(|e| e.is_null()) {
        v["endpoints"] = serde_json::json!([]);
    }
    serde_json::from_value(v).context("reading an EndpointSlice")
}

type Key = (String, String);

fn key_of(meta: &kube::api::ObjectMeta) -> Key {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// Watches Services and EndpointSlices and publishes the frontends on
/// `tx` after every change, once both initial lists are complete. While
/// the API server is away the last view stays in force (kube's watcher
/// retries).
pub async fn watch_services(client: Client, own_node: String, tx: watch::Sender<ServiceView>) {
    let resource = loop {
        match slice_resource(&client).await {
            Ok(r) => break r,
            Err(e) => {
                warn!("{e:#} (retrying)");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    };
    info!(
        version = resource.api_version,
        "watching Services and EndpointSlices"
    );
    let svc_api: Api<Service> = Api::all(client.clone());
    let slice_api: Api<DynamicObject> = Api::all_with(client, &resource);
    let config = watcher::Config::default();
    let mut svc_events = watcher::watcher(svc_api, config.clone())
        .default_backoff()
        .boxed();
    let mut slice_events = watcher::watcher(slice_api, config)
        .default_backoff()
        .boxed();
    let mut services: BTreeMap<Key, Service> = BTreeMap::new();
    let mut slices: BTreeMap<Key, EndpointSlice> = BTreeMap::new();
    let (mut svc_listing, mut slice_listing): (Option<BTreeMap<_, _>>, Option<BTreeMap<_, _>>) =
        (None, None);
    let (mut svc_listed, mut slices_listed) = (false, false);
    let mut said = Said::default();
    loop {
        tokio::select! {
            Some(ev) = svc_events.next() => match ev {
                Ok(watcher::Event::Init) => svc_listing = Some(BTreeMap::new()),
                Ok(watcher::Event::InitApply(s)) => {
                    if let Some(l) = svc_listing.as_mut() {
                        l.insert(key_of(&s.metadata), s);
                    }
                }
                Ok(watcher::Event::InitDone) => {
                    services = svc_listing.take().unwrap_or_default();
                    svc_listed = true;
                }
                Ok(watcher::Event::Apply(s)) => {
                    services.insert(key_of(&s.metadata), s);
                }
                Ok(watcher::Event::Delete(s)) => {
                    services.remove(&key_of(&s.metadata));
                }
                Err(e) => said.once("Services", e.to_string()),
            },
            Some(ev) = slice_events.next() => match ev {
                Ok(watcher::Event::Init) => slice_listing = Some(BTreeMap::new()),
                Ok(watcher::Event::InitApply(o)) => {
                    if let (Some(l), Ok(s)) = (slice_listing.as_mut(), read_slice(&o)) {
                        l.insert(key_of(&o.metadata), s);
                    }
                }
                Ok(watcher::Event::InitDone) => {
                    slices = slice_listing.take().unwrap_or_default();
                    slices_listed = true;
                }
                Ok(watcher::Event::Apply(o)) => {
                    if let Ok(s) = read_slice(&o) {
                        slices.insert(key_of(&o.metadata), s);
                    }
                }
                Ok(watcher::Event::Delete(o)) => {
                    slices.remove(&key_of(&o.metadata));
                }
                Err(e) => said.once("EndpointSlices", e.to_string()),
            },
            else => return,
        }
        if svc_listed && slices_listed {
            let services: Vec<Service> = services.values().cloned().collect();
            let slices: Vec<EndpointSlice> = slices.values().cloned().collect();
            let view = ServiceView {
                frontends: frontends(&services, &slices, &own_node),
                listed: true,
            };
            tx.send_if_modified(|v| {
                let changed = *v != view;
                *v = view;
                changed
            });
        }
    }
}

/// Watch errors, each logged when it first appears.
#[derive(Default)]
struct Said(BTreeMap<&'static str, String>);

impl Said {
    fn once(&mut self, what: &'static str, error: String) {
        if self.0.get(what) != Some(&error) {
            warn!("watching {what}: {error} (keeping the last known, retrying)");
            self.0.insert(what, error);
        }
    }
}

/// A slice, or a warning naming the one that could not be read.
fn read_slice(obj: &DynamicObject) -> Result<EndpointSlice> {
    slice_from_dynamic(obj).inspect_err(|e| {
        warn!(
            slice = obj.metadata.name.as_deref().unwrap_or("?"),
            "EndpointSlice skipped: {e:#}"
        )
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::{
        core::v1::{ClientIPConfig, ServicePort, ServiceSpec, SessionAffinityConfig},
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort},
    };
    use kube::api::ObjectMeta;

    use super::*;

    fn service(name: &str, ip: &str, ports: &[(&str, i32, &str)]) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some(ip.into()),
                ports: Some(
                    ports
                        .iter()
                        .map(|(n, p, proto)| ServicePort {
                            name: Some(n.to_string()),
                            port: *p,
                            protocol: Some(proto.to_string()),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn slice(
        service: &str,
        ports: &[(&str, i32, &str)],
        eps: &[(&str, Option<bool>, &str)],
    ) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("{service}-abc")),
                namespace: Some("default".into()),
                labels: Some([(SERVICE_NAME_LABEL.to_string(), service.to_string())].into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p, proto)| EndpointPort {
                        name: Some(n.to_string()),
                        port: Some(*p),
                        protocol: Some(proto.to_string()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            endpoints: eps
                .iter()
                .map(|(addr, ready, node)| Endpoint {
                    addresses: vec![addr.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: *ready,
                        ..Default::default()
                    }),
                    node_name: Some(node.to_string()),
                    ..Default::default()
                })
                .collect(),
        }
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn ports_match_by_name_and_protocol_and_only_ready_endpoints_count() {
        let svcs = [service(
            "dns",
            "10.0.0.10",
            &[("dns", 53, "UDP"), ("dns-tcp", 53, "TCP")],
        )];
        let slices = [slice(
            "dns",
            &[("dns", 5353, "UDP"), ("dns-tcp", 5354, "TCP")],
            &[
                ("10.244.0.2", Some(true), "node-0"),
                ("10.244.1.2", None, "node-1"),
                ("10.244.1.3", Some(false), "node-1"),
            ],
        )];
        let f = frontends(&svcs, &slices, "node-0");
        assert_eq!(f.len(), 2);
        let udp = f.iter().find(|f| f.proto == PROTO_UDP).unwrap();
        assert_eq!(udp.name, "default/dns:dns");
        assert_eq!((udp.ip, udp.port), (ip("10.0.0.10"), 53));
        assert_eq!(
            udp.backends,
            [(ip("10.244.0.2"), 5353), (ip("10.244.1.2"), 5353)]
        );
        let tcp = f.iter().find(|f| f.proto == PROTO_TCP).unwrap();
        assert_eq!(tcp.backends[0].1, 5354);
        assert_eq!(udp.affinity_secs, 0);
    }

    #[test]
    fn headless_sctp_other_services_and_other_namespaces_are_left_out() {
        let mut headless = service("h", "None", &[("", 80, "TCP")]);
        headless.metadata.name = Some("h".into());
        let svcs = [headless, service("s", "10.0.0.20", &[("x", 9, "SCTP")])];
        assert!(frontends(&svcs, &[], "node-0").is_empty());
        let svcs = [service("web", "10.0.0.30", &[("", 80, "TCP")])];
        let mut other_ns = slice("web", &[("", 8080, "TCP")], &[("10.244.0.9", None, "n")]);
        other_ns.metadata.namespace = Some("kube-system".into());
        let f = frontends(
            &svcs,
            &[
                other_ns,
                slice("api", &[("", 8080, "TCP")], &[("10.244.0.8", None, "n")]),
            ],
            "n",
        );
        assert_eq!(f.len(), 1);
        assert!(f[0].backends.is_empty(), "no slice of its own: no backend");
        assert_eq!(f[0].name, "default/web:80");
    }

    #[test]
    fn client_ip_affinity_and_local_internal_traffic_policy() {
        let mut svc = service("web", "10.0.0.30", &[("http", 80, "TCP")]);
        let spec = svc.spec.as_mut().unwrap();
        spec.session_affinity = Some("ClientIP".into());
        spec.internal_traffic_policy = Some("Local".into());
        let slices = [slice(
            "web",
            &[("http", 8080, "TCP")],
            &[
                ("10.244.0.2", None, "node-0"),
                ("10.244.1.2", None, "node-1"),
            ],
        )];
        let f = frontends(std::slice::from_ref(&svc), &slices, "node-1");
        assert_eq!(f[0].affinity_secs, DEFAULT_AFFINITY_SECONDS);
        assert_eq!(f[0].backends, [(ip("10.244.1.2"), 8080)]);
        svc.spec.as_mut().unwrap().session_affinity_config = Some(SessionAffinityConfig {
            client_ip: Some(ClientIPConfig {
                timeout_seconds: Some(60),
            }),
        });
        assert_eq!(frontends(&[svc], &slices, "node-1")[0].affinity_secs, 60);
    }

    #[test]
    fn a_v1beta1_slice_reads_as_v1_with_its_node() {
        let obj: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1beta1",
            "kind": "EndpointSlice",
            "metadata": {"name": "dns-1", "namespace": "kube-system",
                         "labels": {SERVICE_NAME_LABEL: "dns"}},
            "addressType": "IPv4",
            "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}],
            "endpoints": [{"addresses": ["10.244.0.5"], "conditions": {"ready": true},
                           "topology": {HOSTNAME_TOPOLOGY: "node-0"}}]
        }))
        .unwrap();
        let s = slice_from_dynamic(&obj).unwrap();
        assert_eq!(s.endpoints[0].node_name.as_deref(), Some("node-0"));
        assert_eq!(s.endpoints[0].addresses, ["10.244.0.5"]);
        let empty: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1beta1", "kind": "EndpointSlice",
            "metadata": {"name": "e"}, "addressType": "IPv4", "endpoints": null
        }))
        .unwrap();
        assert!(slice_from_dynamic(&empty).unwrap().endpoints.is_empty());
    }
}
