//! What `vm k8s` proves on the running cluster, with netplane as its
//! network: each check drives real traffic between the Deployment's pods
//! (agnhost netexec; its /dial makes a pod connect onward and report what
//! it got back) and fails on the first wrong answer.
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use super::Kubectl;
use crate::vm::machines::{Cluster, Machine};

/// The internet host (a namespace on the load balancer's VM) and the
/// default cluster's frontend IP.
const INET: &str = "203.0.113.10";
const FRONTEND: &str = "198.51.100.10";
const NETEXEC_PORT: u16 = 8080;

struct Pod {
    name: String,
    ip: String,
    node: String,
}

pub fn run(cluster: &Cluster, kubectl: &Kubectl) -> Result<()> {
    eprintln!("== checks");
    let pods = web_pods(kubectl)?;
    let on = |node: &str| {
        pods.iter()
            .find(|p| p.node == node)
            .with_context(|| format!("no pod of web on {node}"))
    };
    let (a, b) = (on("node-0")?, on("node-1")?);
    let (node0, node1, lb) = (
        cluster.get("node-0"),
        cluster.get("node-1"),
        cluster.get("lb"),
    );

    // Pod to pod across nodes: b sees a's own address (no NAT).
    let seen = dial(node0, a, "clientip", &b.ip, NETEXEC_PORT)?;
    ensure!(
        seen.iter().all(|s| s.starts_with(&format!("{}:", a.ip))),
        "{} ({}) dialed {} ({}), which saw {seen:?}",
        a.name,
        a.ip,
        b.name,
        b.ip
    );
    pass(&format!(
        "pod to pod across nodes: {} -> {} saw {}",
        a.ip, b.ip, seen[0]
    ));

    // Node (host network) to a pod on another node: the node's IP kept.
    let seen = curl(node1, &format!("http://{}:{NETEXEC_PORT}/clientip", a.ip))?;
    ensure!(
        seen.starts_with("10.224.0.5:"),
        "node-1 to {}: it saw {seen}",
        a.ip
    );
    pass(&format!("node-1 to pod {}: seen as {seen}", a.ip));

    // Pod to the ClusterIP Service: backends on both nodes answer, through
    // netplane's Service translation (its counter moves), not kube-proxy.
    let cluster_ip = kubectl.run(&["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"])?;
    let before = service_out(node0)?;
    let mut names = dial_tries(node0, a, "hostname", &cluster_ip, 80, 16)?;
    names.sort();
    names.dedup();
    let backends_on_node1: Vec<&String> = names
        .iter()
        .filter(|n| pods.iter().any(|p| &p.name == *n && p.node == "node-1"))
        .collect();
    ensure!(
        !backends_on_node1.is_empty(),
        "{}:80 from {} reached only {names:?}, none on node-1",
        cluster_ip,
        a.name
    );
    let after = service_out(node0)?;
    ensure!(
        after > before,
        "netplane's service_out on node-0 stayed at {before}: the Service was not served by netplane"
    );
    pass(&format!(
        "pod to ClusterIP {cluster_ip}:80: backends {names:?}; netplane's service_out {before} -> {after}"
    ));

    // By name: the pod's resolver asks the kube-dns Service (a ClusterIP
    // whose backend is outside the pod CIDR, on the control plane's VM).
    let names = dial_tries(node0, a, "hostname", "web.default.svc.cluster.local", 80, 4)?;
    ensure!(
        names.iter().all(|n| pods.iter().any(|p| &p.name == n)),
        "web.default.svc.cluster.local:80 from {} answered {names:?}",
        a.name
    );
    pass(&format!(
        "pod to web.default.svc.cluster.local:80 (cluster DNS via 10.0.0.10): {names:?}"
    ));

    // Pod to the internet: both SNAT stages, the frontend IP seen.
    lb.ok(&format!(
        "ip netns exec inet setsid nohup {} netexec --http-port={NETEXEC_PORT} >/dev/null 2>&1 &",
        crate::kubernetes::dir().join("agnhost").display()
    ))?;
    let mut seen = Vec::new();
    for _ in 0..30 {
        match dial(node0, a, "clientip", INET, NETEXEC_PORT) {
            Ok(s) if !s.is_empty() => {
                seen = s;
                break;
            }
            _ => std::thread::sleep(Duration::from_secs(2)),
        }
    }
    ensure!(
        !seen.is_empty() && seen.iter().all(|s| s.starts_with(&format!("{FRONTEND}:"))),
        "{} to the internet host {INET}: it saw {seen:?}, not the frontend IP {FRONTEND}",
        a.name
    );
    pass(&format!("pod to internet {INET}: seen as {}", seen[0]));

    // A deleted pod's address is freed: the CNI's DEL ran.
    let owner = node0
        .ok(&format!("head -1 /run/netplane/nodes/node-0/ipam/{}", a.ip))?
        .trim()
        .to_string();
    ensure!(!owner.is_empty(), "no owner recorded for {}", a.ip);
    kubectl.run(&["delete", "pod", &a.name, "--wait=true", "--timeout=300s"])?;
    let left = node0.ok(&format!(
        "f=/run/netplane/nodes/node-0/ipam/{ip}; \
         if [ -e $f ] && [ \"$(head -1 $f)\" = {owner} ]; then echo held; fi; \
         [ -e /run/netplane/nodes/node-0/pods/{owner}.json ] && echo registered; true",
        ip = a.ip
    ))?;
    ensure!(
        left.trim().is_empty(),
        "after deleting {} its address {} is still {}",
        a.name,
        a.ip,
        left.trim()
    );
    pass(&format!(
        "pod {} deleted: {} released by the CNI's DEL",
        a.name, a.ip
    ));

    // kubelet restarted: the pods keep their network, and the CNI's CHECK
    // passes for every pod on the node (containerd 1.6 never sends CHECK
    // itself: it is run here as a runtime would, with the node's conflist).
    let root = crate::workspace_root();
    node1.ok(&format!(
        "K8S_BIN={bin} K8S_CONF={conf} K8S_LOG_DIR={log} sh {script} restart-kubelet node-1 10.224.0.5",
        bin = crate::kubernetes::dir().display(),
        conf = super::dir().display(),
        log = root.join("target/vm/run/node-1/log").display(),
        script = root.join("vagrant/provision/kubernetes.sh").display(),
    ))?;
    // The old kubelet is gone: the next renewal of node-1's lease is the
    // new one's (the Ready condition would still be the old one's).
    let lease = |k: &Kubectl| {
        k.run(&[
            "-n",
            "kube-node-lease",
            "get",
            "lease",
            "node-1",
            "-o",
            "jsonpath={.spec.renewTime}",
        ])
    };
    let renewed = lease(kubectl)?;
    kubectl.until(
        "node-1's lease renewed by the restarted kubelet",
        Duration::from_secs(300),
        |k| Ok(lease(k)? != renewed),
    )?;
    let seen = curl(node0, &format!("http://{}:{NETEXEC_PORT}/hostname", b.ip))?;
    ensure!(seen == b.name, "{} after kubelet's restart: {seen}", b.ip);
    let checked = node1.ok(
        "conf=$(jq -c '.plugins[0] + {cniVersion: .cniVersion, name: .name}' /etc/cni/net.d/10-netplane.conflist); \
         n=0; for f in /run/netplane/nodes/node-1/pods/*.json; do \
           id=$(jq -r .container_id $f); ns=$(jq -r .netns $f); \
           echo \"$conf\" | CNI_COMMAND=CHECK CNI_CONTAINERID=$id CNI_NETNS=$ns CNI_IFNAME=eth0 \
             CNI_PATH=/opt/cni/bin /opt/cni/bin/netplane-cni || exit 1; \
           n=$((n + 1)); done; echo $n",
    )?;
    let checked: usize = checked.trim().parse().unwrap_or(0);
    ensure!(checked > 0, "no pod on node-1 to CHECK");
    pass(&format!(
        "kubelet on node-1 restarted: {} still answers; CHECK passed for its {checked} pods",
        b.name
    ));
    Ok(())
}

fn pass(what: &str) {
    eprintln!("   ok: {what}");
}

/// The Deployment's running pods, with address and node.
fn web_pods(kubectl: &Kubectl) -> Result<Vec<Pod>> {
    let list: Value = serde_json::from_str(&kubectl.run(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "--field-selector=status.phase=Running",
        "-o",
        "json",
    ])?)?;
    let pods: Vec<Pod> = list["items"]
        .as_array()
        .context("pods")?
        .iter()
        .filter_map(|p| {
            Some(Pod {
                name: p["metadata"]["name"].as_str()?.to_string(),
                ip: p["status"]["podIP"].as_str()?.to_string(),
                node: p["spec"]["nodeName"].as_str()?.to_string(),
            })
        })
        .collect();
    for p in &pods {
        eprintln!("   {} {} on {}", p.name, p.ip, p.node);
    }
    Ok(pods)
}

/// GET from a node's shell; the body.
fn curl(from: &Machine, url: &str) -> Result<String> {
    Ok(from
        .ok(&format!("curl -sSf --max-time 10 '{url}'"))?
        .trim()
        .to_string())
}

/// Asks `pod`'s netexec (from the node's shell) to make `request` of
/// host:port once; the answers it got.
fn dial(node: &Machine, pod: &Pod, request: &str, host: &str, port: u16) -> Result<Vec<String>> {
    dial_tries(node, pod, request, host, port, 1)
}

fn dial_tries(
    node: &Machine,
    pod: &Pod,
    request: &str,
    host: &str,
    port: u16,
    tries: u32,
) -> Result<Vec<String>> {
    let body = curl(
        node,
        &format!(
            "http://{}:{NETEXEC_PORT}/dial?request={request}&protocol=http&host={host}&port={port}&tries={tries}",
            pod.ip
        ),
    )?;
    let v: Value =
        serde_json::from_str(&body).with_context(|| format!("netexec /dial answered {body}"))?;
    if let Some(errors) = v["errors"].as_array().filter(|e| !e.is_empty()) {
        bail!("{} dialing {host}:{port}: {errors:?}", pod.name);
    }
    Ok(v["responses"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default())
}

/// netplane's `service_out` counter on a node (`netplane stats --json`:
/// packets per delivery path).
fn service_out(node: &Machine) -> Result<u64> {
    let out = node.ok(&format!(
        "{} stats --node {} --json",
        crate::workspace_root()
            .join("target/debug/netplane")
            .display(),
        node.name
    ))?;
    let v: Value = serde_json::from_str(&out).with_context(|| format!("netplane stats: {out}"))?;
    v["nodes"][&node.name]["paths"]
        .as_array()
        .and_then(|paths| paths.iter().find(|p| p["path"] == "service_out"))
        .and_then(|p| p["packets"].as_u64())
        .with_context(|| format!("no service_out path in netplane stats: {out}"))
}
