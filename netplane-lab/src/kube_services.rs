//! Services in the Kubernetes lab: a DNS pod (Debian's dnsmasq, answering
//! for the lab's hosts) behind the `kube-system/kube-dns` Service at the
//! cluster file's `dns_service_ip`, as CoreDNS sits behind it in AKS; and
//! on the kubenet-classic lab, real kube-proxy (iptables mode) on every
//! node, the oracle netplane's Services are compared with.
//!
//! The lab runs no controller manager, so it writes the EndpointSlices
//! itself, as the EndpointSlice controller would: in the version the API
//! server serves (v1beta1 on the lab's 1.20, v1 on current clusters).
use std::{net::Ipv4Addr, path::PathBuf};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Service;
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, PostParams},
};
use serde_json::json;

use super::topology::{Host, NETNS_PREFIX, Role};
use netplane::config::Cluster;

/// The DNS pod's name, and the zone it answers for.
pub const DNS_POD: &str = "dns";
pub const DNS_ZONE: &str = "lab";
/// kube-dns's Service, as AKS names CoreDNS's.
pub const DNS_SERVICE: (&str, &str) = ("kube-system", "kube-dns");

/// The DNS pod: on the last node, after that node's other pods.
pub fn dns_pod(cluster: &Cluster) -> Host {
    let nodes = cluster.nodes();
    let node = nodes.last().expect("a cluster has nodes");
    let ip = u32::from(node.pod_cidr.network()) + 2 + cluster.lab.pods_per_node;
    Host {
        name: DNS_POD.into(),
        role: Role::Pod,
        netns: format!("{NETNS_PREFIX}{DNS_POD}"),
        ip: Ipv4Addr::from(ip),
        node: Some(node.name.clone()),
    }
}

/// dnsmasq's command line: the lab's hosts as `NAME.lab`, nothing
/// forwarded, listening on the pod's address only.
pub fn dnsmasq_args(dns: &Host, hosts: &[Host]) -> Vec<String> {
    let mut args = vec![
        "--keep-in-foreground".to_string(),
        "--no-resolv".into(),
        "--no-hosts".into(),
        "--bind-interfaces".into(),
        format!("--listen-address={}", dns.ip),
        "--pid-file=".into(),
        "--user=root".into(),
        "--log-queries".into(),
        "--log-facility=-".into(),
        format!("--local=/{DNS_ZONE}/"),
    ];
    for h in hosts {
        args.push(format!("--host-record={}.{DNS_ZONE},{}", h.name, h.ip));
    }
    args
}

/// A service port: name, port, protocol, target port.
pub type Port<'a> = (&'a str, u16, &'a str, u16);

/// A ClusterIP Service with `ports` (and no selector: the lab writes its
/// endpoints).
pub fn service_object(ns: &str, name: &str, cluster_ip: Ipv4Addr, ports: &[Port]) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ip.to_string(),
            "ports": ports.iter().map(|(n, p, proto, t)| json!({
                "name": n, "port": p, "protocol": proto, "targetPort": t,
            })).collect::<Vec<_>>(),
        }
    }))
    .expect("a well-formed Service")
}

/// An EndpointSlice of `service` in the version `resource` names:
/// `endpoints` are (pod IP, node, ready).
pub fn slice_object(
    resource: &ApiResource,
    ns: &str,
    service: &str,
    ports: &[Port],
    endpoints: &[(Ipv4Addr, &str, bool)],
) -> Result<DynamicObject> {
    let v1 = resource.version == "v1";
    let eps: Vec<_> = endpoints
        .iter()
        .map(|(ip, node, ready)| {
            let mut ep = json!({
                "addresses": [ip.to_string()],
                "conditions": {"ready": ready},
            });
            if v1 {
                ep["nodeName"] = json!(node);
            } else {
                ep["topology"] = json!({"kubernetes.io/hostname": node});
            }
            ep
        })
        .collect();
    let obj = json!({
        "apiVersion": resource.api_version,
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{service}-lab"),
            "namespace": ns,
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "netplane-lab",
            },
        },
        "addressType": "IPv4",
        "ports": ports.iter().map(|(n, _, proto, t)| json!({
            "name": n, "port": t, "protocol": proto,
        })).collect::<Vec<_>>(),
        "endpoints": eps,
    });
    Ok(serde_json::from_value(obj)?)
}

/// Creates a Service and its EndpointSlice.
pub async fn publish(
    client: &Client,
    ns: &str,
    name: &str,
    cluster_ip: Ipv4Addr,
    ports: &[Port<'_>],
    endpoints: &[(Ipv4Addr, &str, bool)],
) -> Result<()> {
    let pp = PostParams::default();
    Api::<Service>::namespaced(client.clone(), ns)
        .create(&pp, &service_object(ns, name, cluster_ip, ports))
        .await
        .with_context(|| format!("creating Service {ns}/{name}"))?;
    let resource = netplane::source::service_watch::slice_resource(client).await?;
    let slice = slice_object(&resource, ns, name, ports, endpoints)?;
    Api::<DynamicObject>::namespaced_with(client.clone(), ns, &resource)
        .create(&pp, &slice)
        .await
        .with_context(|| format!("creating the EndpointSlice of {ns}/{name}"))?;
    Ok(())
}

/// kube-dns's ports: DNS over UDP and TCP.
pub const DNS_PORTS: [Port<'static>; 2] = [("dns", 53, "UDP", 53), ("dns-tcp", 53, "TCP", 53)];

/// Publishes the DNS pod as kube-dns at the cluster's DNS service IP.
pub async fn publish_dns(client: &Client, cluster: &Cluster, dns: &Host) -> Result<()> {
    let node = dns.node.as_deref().expect("pods have nodes");
    let (ns, name) = DNS_SERVICE;
    publish(
        client,
        ns,
        name,
        cluster.network.dns_service_ip,
        &DNS_PORTS,
        &[(dns.ip, node, true)],
    )
    .await
}

/// kube-proxy: $NETPLANE_KUBE_PROXY, or beside kube-apiserver (built
/// together by `cargo xtask apiserver`).
pub fn kube_proxy_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("NETPLANE_KUBE_PROXY") {
        return Ok(p.into());
    }
    let apiserver = super::control_plane::apiserver_binary()?;
    let beside = apiserver.with_file_name("kube-proxy");
    if beside.exists() {
        Ok(beside)
    } else {
        anyhow::bail!(
            "kube-proxy not found beside {}: run `cargo xtask apiserver` (builds both), or set NETPLANE_KUBE_PROXY",
            apiserver.display()
        )
    }
}

/// kube-proxy's command line on a classic node, as AKS runs it on a
/// kubenet node: iptables mode, the cluster pod CIDR (traffic to a
/// Service from outside it is masqueraded), and nothing changed in the
/// node's conntrack limits or timeouts (the lab's namespaces share the
/// machine's).
pub fn kube_proxy_args(cluster: &Cluster, node: &str, kubeconfig: &str) -> Vec<String> {
    vec![
        format!("--kubeconfig={kubeconfig}"),
        format!("--hostname-override={node}"),
        "--proxy-mode=iptables".into(),
        format!("--cluster-cidr={}", cluster.network.pod_cidr),
        "--conntrack-max-per-core=0".into(),
        "--conntrack-tcp-timeout-established=0".into(),
        "--conntrack-tcp-timeout-close-wait=0".into(),
        "--metrics-bind-address=127.0.0.1:10249".into(),
        "--healthz-bind-address=127.0.0.1:10256".into(),
        "--oom-score-adj=0".into(),
        "--v=2".into(),
    ]
}

/// A Service `netplane lab service` creates: ports and backends by lab
/// host, resolved against the running lab.
#[derive(Debug, Clone)]
pub struct LabService {
    pub name: String,
    pub ip: Ipv4Addr,
    /// (port, "TCP" | "UDP")
    pub ports: Vec<(u16, &'static str)>,
    /// (pod IP, its node, target port)
    pub backends: Vec<(Ipv4Addr, String, u16)>,
    pub affinity: bool,
}

impl LabService {
    /// Reads `PORT/tcp|udp` and `HOST:PORT` arguments against the lab.
    pub fn parse(
        name: &str,
        ip: Ipv4Addr,
        ports: &[String],
        backends: &[String],
        affinity: bool,
    ) -> Result<Self> {
        let state = super::load_state()?.context("the lab is down")?;
        let ports = ports
            .iter()
            .map(|p| {
                let (port, proto) = p.split_once('/').unwrap_or((p, "tcp"));
                let proto = match proto {
                    "tcp" => "TCP",
                    "udp" => "UDP",
                    other => anyhow::bail!("--port {p}: protocol {other} (tcp or udp)"),
                };
                let port = port
                    .parse()
                    .with_context(|| format!("--port {p}: not a port"))?;
                Ok((port, proto))
            })
            .collect::<Result<Vec<_>>>()?;
        let backends = backends
            .iter()
            .map(|b| {
                let (host, port) = b
                    .rsplit_once(':')
                    .with_context(|| format!("--backend {b}: HOST:PORT"))?;
                let h = super::find_host(&state, host)
                    .with_context(|| format!("--backend {b}: no lab host {host}"))?;
                let node = h
                    .node
                    .clone()
                    .with_context(|| format!("--backend {b}: {host} is not a pod"))?;
                let port = port
                    .parse()
                    .with_context(|| format!("--backend {b}: not a port"))?;
                Ok((h.ip, node, port))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            name: name.to_string(),
            ip,
            ports,
            backends,
            affinity,
        })
    }
}

impl std::fmt::Display for LabService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ports: Vec<String> = self
            .ports
            .iter()
            .map(|(p, proto)| format!("{}:{p}/{}", self.ip, proto.to_lowercase()))
            .collect();
        let backends: Vec<String> = self
            .backends
            .iter()
            .map(|(ip, node, p)| format!("{ip}:{p} ({node})"))
            .collect();
        write!(
            f,
            "{} -> {}{}",
            ports.join(", "),
            if backends.is_empty() {
                "no backend".to_string()
            } else {
                backends.join(", ")
            },
            if self.affinity {
                ", ClientIP affinity"
            } else {
                ""
            }
        )
    }
}

/// Creates a lab Service and its EndpointSlice through the lab's API
/// server; every backend gets every port (its target port).
pub fn create_service(s: &LabService) -> Result<()> {
    let cp = lab_api()?;
    let names: Vec<String> = s
        .ports
        .iter()
        .map(|(p, proto)| format!("{p}-{}", proto.to_lowercase()))
        .collect();
    let target = s.backends.first().map_or(0, |b| b.2);
    if s.backends.iter().any(|b| b.2 != target) {
        anyhow::bail!("every backend of a lab Service listens on the same target port");
    }
    let ports: Vec<Port> = s
        .ports
        .iter()
        .zip(&names)
        .map(|((p, proto), n)| {
            (
                n.as_str(),
                *p,
                *proto,
                if target == 0 { *p } else { target },
            )
        })
        .collect();
    let endpoints: Vec<(Ipv4Addr, &str, bool)> = s
        .backends
        .iter()
        .map(|(ip, node, _)| (*ip, node.as_str(), true))
        .collect();
    super::control_plane::in_netns(&super::control_plane::netns(), async {
        let client = super::control_plane::admin_client(&cp).await?;
        publish(&client, "default", &s.name, s.ip, &ports, &endpoints).await?;
        if s.affinity {
            let patch = json!({"spec": {"sessionAffinity": "ClientIP"}});
            Api::<Service>::namespaced(client, "default")
                .patch(
                    &s.name,
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(patch),
                )
                .await?;
        }
        Ok(())
    })
}

/// Deletes a lab Service and its EndpointSlice.
pub fn delete_service(name: &str) -> Result<()> {
    let cp = lab_api()?;
    super::control_plane::in_netns(&super::control_plane::netns(), async {
        let client = super::control_plane::admin_client(&cp).await?;
        let dp = kube::api::DeleteParams::default();
        Api::<Service>::namespaced(client.clone(), "default")
            .delete(name, &dp)
            .await
            .with_context(|| format!("deleting Service default/{name}"))?;
        let resource = netplane::source::service_watch::slice_resource(&client).await?;
        let _ = Api::<DynamicObject>::namespaced_with(client, "default", &resource)
            .delete(&format!("{name}-lab"), &dp)
            .await;
        Ok(())
    })
}

fn lab_api() -> Result<super::topology::ControlPlane> {
    let state = super::load_state()?.context("the lab is down")?;
    state
        .kubernetes
        .context("the lab has no API server: `netplane lab up --source kubernetes`")
}
