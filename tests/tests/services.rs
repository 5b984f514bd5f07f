//! ClusterIP Services on netplane against the real API server (`lab up
//! --source kubernetes`): DNS through kube-dns, replies from the service
//! address, backends following the EndpointSlice, ClientIP affinity, a
//! service without backends refusing at once, the node's own traffic, and
//! no service traffic ever leaving through the load balancer. The same
//! scenarios against real kube-proxy are in conformance.rs.
use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    process::Child,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Service;
use kube::{
    Api,
    api::{DynamicObject, Patch, PatchParams},
};
use netplane_lab::kube_services::{self as lab_services, Port};
use netplane_tests::{labkit::*, privileged};
use serde_json::{Value, json};

const WEB_IP: &str = "10.0.1.1";
const EMPTY_IP: &str = "10.0.1.3";
const WEB_PORTS: [Port<'static>; 2] = [("tcp", 80, "TCP", 7000), ("udp", 80, "UDP", 7000)];

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// `whoami ask` from `from`: the answer, or the error it printed.
fn ask(from: &str, to: &str, udp: bool) -> Result<Value, String> {
    let bin = netplane_bin();
    let mut argv = vec![bin.to_str().unwrap(), "whoami", "ask", to, "--json"];
    argv.extend(["--timeout", "2"]);
    if udp {
        argv.push("--udp");
    }
    let out = exec(from, &argv);
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// TCP and UDP whoami servers on port 7000 of each host.
fn servers(hosts: &[&str]) -> Vec<(String, Child)> {
    let mut out = Vec::new();
    for host in hosts {
        for udp in [false, true] {
            let mut args = vec!["--listen", "0.0.0.0:7000", "--timeout", "120"];
            if udp {
                args.push("--udp");
            }
            out.push((host.to_string(), whoami_server_with(host, &args)));
        }
    }
    out
}

/// Stops the servers; how many clients each host answered.
fn answered(servers: Vec<(String, Child)>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (host, mut child) in servers {
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        let n = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(" <- "))
            .count();
        *counts.entry(host).or_insert(0) += n;
    }
    counts
}

fn dig(from: &str, name: &str, tcp: bool) -> String {
    let mut argv = vec!["dig", "+short", "+time=2", "+tries=1", "@10.0.0.10", name];
    if tcp {
        argv.push("+tcp");
    }
    String::from_utf8_lossy(&exec(from, &argv).stdout)
        .trim()
        .to_string()
}

/// The backends node-0's agent has applied for a frontend (services.json).
fn applied_backends(name: &str) -> Option<usize> {
    let path = "/run/netplane/nodes/node-0/services.json";
    let v: Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    v.as_array()?
        .iter()
        .find(|f| f["name"] == name)
        .and_then(|f| f["backends"].as_array().map(Vec::len))
}

/// Replaces the web service's endpoints (merge patch: the list whole).
fn set_endpoints(endpoints: &[(Ipv4Addr, &'static str, bool)]) {
    let endpoints = endpoints.to_vec();
    with_api(false, |c| async move {
        let resource = netplane::source::service_watch::slice_resource(&c).await?;
        let slice =
            lab_services::slice_object(&resource, "default", "web", &WEB_PORTS, &endpoints)?;
        let patch = json!({ "endpoints": serde_json::to_value(&slice)?["endpoints"] });
        Api::<DynamicObject>::namespaced_with(c, "default", &resource)
            .patch("web-lab", &PatchParams::default(), &Patch::Merge(patch))
            .await?;
        Ok(())
    });
}

fn assert_all_answered(from: &str, to: &str, udp: bool, times: usize, from_ip: &str) {
    for _ in 0..times {
        let a = ask(from, to, udp).unwrap_or_else(|e| panic!("{from} → {to}: {e}"));
        let seen = a["seen_as"].as_str().unwrap();
        assert!(
            seen.starts_with(&format!("{from_ip}:")),
            "{from} → {to}: the backend saw {seen}"
        );
    }
}

#[test]
fn pods_reach_cluster_ip_services_through_the_data_path() {
    if !privileged() {
        return;
    }
    let (_turn, _guard) = lab_up_with(&["--source", "kubernetes"]);

    // DNS through kube-dns: from another node, over UDP and TCP; from the
    // DNS pod's own node; and from the DNS pod itself (hairpin).
    for (from, tcp) in [("pod-0-0", false), ("pod-0-0", true), ("pod-1-1", false)] {
        assert_eq!(
            dig(from, "pod-1-0.lab", tcp),
            "10.244.1.2",
            "{from} tcp={tcp}"
        );
    }
    assert_eq!(dig("dns", "inet.lab", false), "203.0.113.10");
    // The case: service traffic never leaves through the load
    // balancer, and the node masquerades none of it.
    for agent in ["lb", "node-0"] {
        let nat: Value = serde_json::from_str(&ok(&["nat", "--node", agent, "--json"])).unwrap();
        let text = nat.to_string();
        assert!(
            !text.contains("10.0.0.10"),
            "{agent} translated DNS: {text}"
        );
    }

    // A service with two backends, one on each node.
    with_api(false, |c| async move {
        lab_services::publish(
            &c,
            "default",
            "web",
            ip(WEB_IP),
            &WEB_PORTS,
            &[
                (ip("10.244.1.2"), "node-1", true),
                (ip("10.244.0.3"), "node-0", true),
            ],
        )
        .await?;
        lab_services::publish(&c, "default", "empty", ip(EMPTY_IP), &WEB_PORTS, &[]).await
    });
    wait_until("web's two backends applied", || {
        applied_backends("default/web:tcp") == Some(2)
            && applied_backends("default/empty:tcp") == Some(0)
    });
    let web = format!("{WEB_IP}:80");
    let srv = servers(&["pod-1-0", "pod-0-1"]);
    // The client's address arrives intact; the reply comes from the
    // service's address (whoami's sockets are connected: a reply from the
    // backend's own address would not reach them).
    assert_all_answered("pod-0-0", &web, false, 16, "10.244.0.2");
    assert_all_answered("pod-0-0", &web, true, 4, "10.244.0.2");
    // The node's own stack (a hostNetwork pod) reaches it too.
    assert_all_answered("node-0", &web, false, 2, "10.224.0.4");
    let counts = answered(srv);
    assert!(
        counts["pod-1-0"] > 0 && counts["pod-0-1"] > 0,
        "new connections spread over both backends: {counts:?}"
    );

    // A backend taken out of the EndpointSlice gets no new connection.
    set_endpoints(&[(ip("10.244.1.2"), "node-1", true)]);
    wait_until("web down to one backend", || {
        applied_backends("default/web:tcp") == Some(1)
    });
    let srv = servers(&["pod-1-0", "pod-0-1"]);
    assert_all_answered("pod-0-0", &web, false, 8, "10.244.0.2");
    assert_all_answered("pod-0-0", &web, true, 4, "10.244.0.2");
    let counts = answered(srv);
    assert_eq!(
        counts["pod-0-1"], 0,
        "the removed backend answered: {counts:?}"
    );
    assert_eq!(counts["pod-1-0"], 12, "{counts:?}");

    // ClientIP affinity: one client, one backend.
    with_api(false, |c| async move {
        let patch = json!({"spec": {"sessionAffinity": "ClientIP"}});
        Api::<Service>::namespaced(c, "default")
            .patch("web", &PatchParams::default(), &Patch::Merge(patch))
            .await?;
        Ok(())
    });
    set_endpoints(&[
        (ip("10.244.1.2"), "node-1", true),
        (ip("10.244.0.3"), "node-0", true),
    ]);
    wait_until("web back to two backends", || {
        applied_backends("default/web:tcp") == Some(2)
    });
    let srv = servers(&["pod-1-0", "pod-0-1"]);
    assert_all_answered("pod-0-0", &web, false, 12, "10.244.0.2");
    let counts = answered(srv);
    assert!(
        counts.values().filter(|&&n| n > 0).count() == 1,
        "ClientIP affinity kept one backend: {counts:?}"
    );

    // No ready backend: refused at once (ICMP port unreachable, as
    // kube-proxy's REJECT), not a timeout.
    let empty = format!("{EMPTY_IP}:80");
    for udp in [false, true] {
        let started = Instant::now();
        let err = ask("pod-0-0", &empty, udp).unwrap_err();
        let took = started.elapsed();
        assert!(err.contains("refused"), "udp={udp}: {err}");
        assert!(
            took < Duration::from_secs(1),
            "udp={udp}: refused after {took:?}"
        );
    }
    let node0 = stats("node-0");
    assert!(counter(&node0, "path", "service_reject") >= 2, "{node0}");
    // A port no service has on a service address: dropped, counted.
    let before = counter(&node0, "drop", "no_service");
    assert!(ask("pod-0-0", &format!("{WEB_IP}:81"), true).is_err());
    assert!(counter(&stats("node-0"), "drop", "no_service") > before);
    assert!(!ok(&["nat", "--node", "lb", "--json"]).contains(WEB_IP));

    // The API server behind the `kubernetes` service (a backend outside
    // the cluster pod CIDR: masqueraded to the node, as kubenet does).
    let out = exec(
        "pod-0-0",
        &[
            "curl",
            "-sk",
            "-m",
            "5",
            "-A",
            "netplane-test",
            "https://10.0.0.1/version",
        ],
    );
    let version: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert!(version["gitVersion"].is_string(), "{version}");
}
