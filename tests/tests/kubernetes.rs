//! The agents against a real Kubernetes API server (`lab up --source
//! kubernetes`: etcd and kube-apiserver 1.20 built from Debian's source,
//! RBAC from deploy/netplane.yaml): routes follow the Node objects, the
//! data path outlives the API server, the 401st node is refused, and the
//! agents' token can do nothing but read nodes, services and endpoint
//! slices.
use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::{Node, Secret, Service};
use kube::{
    Api,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use netplane::config::NodePlan;
use netplane_lab::control_plane;
use netplane_tests::{labkit::*, privileged};
use serde_json::Value;

fn node(name: &str, ip: [u8; 4], pod_cidr: &str) -> Node {
    control_plane::node_object(&NodePlan {
        name: name.into(),
        ip: Ipv4Addr::from(ip),
        pod_cidr: pod_cidr.parse().unwrap(),
    })
}

fn create(n: Node) {
    with_api(false, |c| async move {
        control_plane::create_node(&c, &n).await
    });
}

/// The agent's own account of its nodes (`routes --json`'s `source`).
fn source_of(agent: &str) -> Value {
    let v: Value = serde_json::from_str(&ok(&["routes", "--node", agent, "--json"])).unwrap();
    v["nodes"][agent]["source"].clone()
}

/// Waits (at most 10 s) until `cond`; returns how long it took.
fn time_until(what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    wait_until(what, &mut cond);
    started.elapsed()
}

#[test]
fn routes_follow_the_node_objects() {
    if !privileged() {
        return;
    }
    let (_turn, _guard) = lab_up_with(&["--source", "kubernetes"]);
    // After startup: one route per Node object, on every node.
    let listed: Vec<String> = with_api(false, |c| async move {
        let nodes = Api::<Node>::all(c).list(&ListParams::default()).await?;
        Ok(nodes
            .items
            .iter()
            .filter_map(|n| n.spec.as_ref()?.pod_cidr.clone())
            .collect())
    });
    let mut listed_sorted = listed.clone();
    listed_sorted.sort();
    for agent in ["node-0", "node-1"] {
        let mut routes = route_prefixes(agent);
        routes.sort();
        assert_eq!(routes, listed_sorted, "{agent}");
        let source = source_of(agent);
        assert_eq!(source["source"], "kubernetes", "{source}");
        assert_eq!(source["watch"]["state"], "synced", "{source}");
    }

    // Each node agent wrote kubelet's conflist with its pod CIDR from the
    // API, and the lab's pods were attached through it.
    for (agent, cidr) in [("node-0", "10.244.0.0/24"), ("node-1", "10.244.1.0/24")] {
        let path = format!("/run/netplane/nodes/{agent}/net.d/10-netplane.conflist");
        let list: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(list["plugins"][0]["type"], "netplane-cni", "{list}");
        assert_eq!(list["plugins"][0]["podCidr"], cidr, "{list}");
        assert_eq!(list["plugins"][0]["node"], agent, "{list}");
    }
    assert_tcp_preserves_source("pod-0-0", "10.244.0.2", "pod-1-0", "10.244.1.2");

    // A Node created through the API is routed; deleted, unrouted.
    create(node("node-7", [10, 224, 0, 20], "10.244.7.0/24"));
    let took = time_until("node-7's route on node-0", || {
        route_prefixes("node-0").contains(&"10.244.7.0/24".to_string())
    });
    eprintln!("node-7 routed {took:?} after its creation");
    assert!(took < Duration::from_secs(1), "routed after {took:?}");
    wait_until("node-7's port block at the load balancer", || {
        let v: Value = serde_json::from_str(&ok(&["ports", "--node", "lb", "--json"])).unwrap();
        v["agents"]["lb"]
            .as_array()
            .is_some_and(|s| s.iter().any(|b| b["block_of"] == "node-7"))
    });
    with_api(false, |c| async move {
        Api::<Node>::all(c)
            .delete("node-7", &DeleteParams::default())
            .await?;
        Ok(())
    });
    let took = time_until("node-7's route gone", || {
        !route_prefixes("node-0").contains(&"10.244.7.0/24".to_string())
    });
    eprintln!("node-7 unrouted {took:?} after its deletion");

    // A node without a pod CIDR waits, said once; given one, it is routed.
    create(Node {
        spec: None,
        ..node("node-8", [10, 224, 0, 21], "10.244.8.0/24")
    });
    wait_until("node-8 refused for want of a pod CIDR", || {
        source_of("node-0")["refused"].as_array().is_some_and(|r| {
            r.iter()
                .any(|x| x["node"] == "node-8" && x["reason"] == "no pod CIDR yet")
        })
    });
    assert!(!route_prefixes("node-0").contains(&"10.244.8.0/24".to_string()));
    with_api(false, |c| async move {
        let patch = serde_json::json!({"spec": {"podCIDR": "10.244.8.0/24", "podCIDRs": ["10.244.8.0/24"]}});
        Api::<Node>::all(c)
            .patch("node-8", &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    });
    wait_until("node-8 routed once it has a pod CIDR", || {
        route_prefixes("node-0").contains(&"10.244.8.0/24".to_string())
    });
    let log = std::fs::read_to_string("/run/netplane/lab/agent-node-0.log").unwrap();
    assert_eq!(
        log.matches("node not routed: no pod CIDR yet").count(),
        1,
        "said once"
    );

    // deploy/netplane.yaml as a whole is what the API server accepts (its
    // DaemonSet and ConfigMap checked by a dry run: no kubelet runs here),
    // and its cluster file is valid settings for the Kubernetes source.
    let accepted = with_api(false, |c| async move {
        use k8s_openapi::api::{apps::v1::DaemonSet, core::v1::ConfigMap};
        let dry = PostParams {
            dry_run: true,
            ..Default::default()
        };
        let mut kinds = Vec::new();
        for doc in control_plane::manifest_documents()? {
            let ns = doc["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string();
            match doc["kind"].as_str() {
                Some("DaemonSet") => {
                    let d: DaemonSet = serde_json::from_value(doc)?;
                    Api::<DaemonSet>::namespaced(c.clone(), &ns)
                        .create(&dry, &d)
                        .await?;
                    kinds.push("DaemonSet");
                }
                Some("ConfigMap") => {
                    let m: ConfigMap = serde_json::from_value(doc)?;
                    let toml = m.data.as_ref().and_then(|d| d.get("cluster.toml")).cloned();
                    let path = std::env::temp_dir()
                        .join(format!("netplane-cm-{}.toml", std::process::id()));
                    std::fs::write(&path, toml.unwrap_or_default())?;
                    let settings = netplane::config::Cluster::load_settings(Some(&path));
                    std::fs::remove_file(&path)?;
                    settings?;
                    Api::<ConfigMap>::namespaced(c.clone(), &ns)
                        .create(&dry, &m)
                        .await?;
                    kinds.push("ConfigMap");
                }
                _ => {}
            }
        }
        Ok(kinds)
    });
    assert_eq!(accepted, ["ConfigMap", "DaemonSet"]);

    // The agents' token reads nodes and services (with their endpoint
    // slices), and nothing else.
    let (reads, secrets, write, write_service) = with_api(true, |c| async move {
        let nodes = Api::<Node>::all(c.clone())
            .list(&ListParams::default())
            .await
            .is_ok();
        let services = Api::<Service>::all(c.clone())
            .list(&ListParams::default())
            .await
            .is_ok();
        let resource = netplane::source::service_watch::slice_resource(&c).await?;
        let slices = Api::<kube::api::DynamicObject>::all_with(c.clone(), &resource)
            .list(&ListParams::default())
            .await
            .is_ok();
        let secrets = Api::<Secret>::all(c.clone())
            .list(&ListParams::default())
            .await;
        let write = Api::<Node>::all(c.clone())
            .create(
                &PostParams::default(),
                &node("intruder", [10, 224, 0, 30], "10.244.30.0/24"),
            )
            .await;
        let svc = netplane_lab::kube_services::service_object(
            "default",
            "intruder",
            "10.0.9.9".parse().unwrap(),
            &[("", 80, "TCP", 80)],
        );
        let write_service = Api::<Service>::namespaced(c, "default")
            .create(&PostParams::default(), &svc)
            .await;
        Ok((
            [nodes, services, slices],
            secrets.err().map(|e| e.to_string()),
            write.err().map(|e| e.to_string()),
            write_service.err().map(|e| e.to_string()),
        ))
    });
    assert_eq!(
        reads, [true; 3],
        "the agents' token lists nodes, services and endpoint slices"
    );
    for (what, err) in [
        ("list secrets", secrets),
        ("create a node", write),
        ("create a service", write_service),
    ] {
        let err = err.unwrap_or_else(|| panic!("the agents' token could {what}"));
        assert!(
            err.contains("forbidden") || err.contains("403"),
            "{what}: {err}"
        );
    }
}

/// The API server stopped under a running TCP stream and a 10 ms ping loses
/// no packet (and no second of the stream), the
/// agents say they are disconnected and keep the last state, and resync
/// when it comes back.
#[test]
fn the_data_path_outlives_the_api_server() {
    if !privileged() {
        return;
    }
    let (_turn, _guard) = lab_up_with(&["--source", "kubernetes"]);
    assert!(
        exec("pod-1-1", &["iperf3", "-s", "-1", "-D"])
            .status
            .success()
    );
    std::thread::sleep(Duration::from_millis(300));
    let stream = iperf_stream("pod-0-1", "10.244.1.3", 12);
    let ping = ping_in_background("pod-0-0", "10.244.1.2", 1500);
    std::thread::sleep(Duration::from_millis(500));
    ok(&["lab", "apiserver", "stop"]);
    wait_until("node-0 to notice", || {
        source_of("node-0")["watch"]["state"] == "disconnected"
    });
    assert!(ok(&["routes", "--node", "node-0"]).contains("unreachable since"));
    std::thread::sleep(Duration::from_secs(2));
    ok(&["lab", "apiserver", "start"]);
    wait_until("node-0 to resync", || {
        source_of("node-0")["watch"]["state"] == "synced"
    });
    assert_no_loss(ping, "pod-0-0 -> pod-1-0 while the API server was away");
    assert_stream_kept_moving(stream, "pod-0-1 -> pod-1-1 while the API server was away");
    // Resynced: a node created now is routed.
    create(node("node-5", [10, 224, 0, 9], "10.244.5.0/24"));
    wait_until("node-5 routed after the resync", || {
        route_prefixes("node-1").contains(&"10.244.5.0/24".to_string())
    });
}

/// Azure's 400-route limit holds for what the API says: the 401st node is
/// refused with the cluster file's own message, and counted.
#[test]
fn the_401st_node_is_refused_and_counted() {
    if !privileged() {
        return;
    }
    let file = std::env::temp_dir().join(format!("netplane-k8s-401-{}.toml", std::process::id()));
    let text = netplane::config::cluster::DEFAULT_CLUSTER.replacen(
        "pod_cidr = \"10.244.0.0/16\"",
        "pod_cidr = \"10.244.0.0/14\"",
        1,
    );
    std::fs::write(&file, text).unwrap();
    let (_turn, _guard) =
        lab_up_with(&["--source", "kubernetes", "--config", file.to_str().unwrap()]);
    // Two lab nodes exist; 399 more make 401, created in order.
    with_api(false, |c| async move {
        for i in 0..399u32 {
            let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 224, 2, 0)) + i);
            let n = control_plane::node_object(&NodePlan {
                name: format!("vm-{i:03}"),
                ip,
                pod_cidr: format!("10.{}.{}.0/24", 245 + (i + 2) / 256, (i + 2) % 256)
                    .parse()
                    .unwrap(),
            });
            control_plane::create_node(&c, &n).await?;
            // Distinct creation seconds are not needed: ties go by name.
        }
        Ok(())
    });
    wait_until("node-0 to route 400 nodes and refuse the 401st", || {
        let s = source_of("node-0");
        s["nodes"].as_array().is_some_and(|n| n.len() == 400)
            && s["refused"].as_array().is_some_and(|r| r.len() == 1)
    });
    let s = source_of("node-0");
    let refused = &s["refused"][0];
    assert_eq!(refused["node"], "vm-398", "{s}");
    let reason = refused["reason"].as_str().unwrap();
    assert!(reason.contains("400"), "{reason}");
    assert_eq!(route_prefixes("node-0").len(), 400);
    let metrics = ok(&[
        "lab",
        "exec",
        "node-0",
        "--",
        "curl",
        "-s",
        "http://10.224.0.4:9464/metrics",
    ]);
    let refused_count = metrics
        .lines()
        .find_map(|l| l.strip_prefix("netplane_nodes_refused_total "))
        .unwrap_or_else(|| panic!("no netplane_nodes_refused_total in:\n{metrics}"));
    assert!(refused_count.trim().parse::<f64>().unwrap() >= 1.0);
    std::fs::remove_file(&file).unwrap();
}

/// An agent whose own node has no pod CIDR yet waits, saying why, instead
/// of exiting; it starts once the API gives the node one.
#[test]
fn an_agent_waits_for_its_own_pod_cidr() {
    if !privileged() {
        return;
    }
    let (_turn, _guard) = lab_up_with(&["--source", "kubernetes"]);
    let status: Value = serde_json::from_str(&ok(&["lab", "status", "--json"])).unwrap();
    let agent = status["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["node"] == "node-1")
        .unwrap()
        .clone();
    let old = agent["pid"].as_u64().unwrap() as i32;
    // node-1 leaves the API, and its agent stops.
    with_api(false, |c| async move {
        Api::<Node>::all(c)
            .delete("node-1", &DeleteParams::default())
            .await?;
        Ok(())
    });
    nix_kill(old);
    let kubeconfig = status["kubernetes"]["agent_kubeconfig"].as_str().unwrap();
    let log_path = std::env::temp_dir().join(format!("netplane-wait-{}.log", std::process::id()));
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = std::process::Command::new(netplane_bin())
        .args([
            "agent",
            "--config",
            "/run/netplane/lab/cluster.toml",
            "--node",
            "node-1",
            "--netns",
            "np-node-1",
            "--kubeconfig",
            kubeconfig,
            "--cni-conf-dir",
            "/run/netplane/nodes/node-1/net.d",
        ])
        .stderr(log.try_clone().unwrap())
        .stdout(log)
        .spawn()
        .unwrap();
    let said = |text: &str| std::fs::read_to_string(&log_path).unwrap().contains(text);
    wait_until("the agent to say it waits for its Node", || {
        said("waiting for node node-1 in the Kubernetes API: no Node object yet")
    });
    create(Node {
        spec: None,
        ..node("node-1", [10, 224, 0, 5], "10.244.1.0/24")
    });
    wait_until("the agent to say it waits for a pod CIDR", || {
        said("waiting for node node-1 in the Kubernetes API: no pod CIDR yet")
    });
    assert!(child.try_wait().unwrap().is_none(), "the agent exited");
    with_api(false, |c| async move {
        let patch = serde_json::json!({"spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]}});
        Api::<Node>::all(c)
            .patch("node-1", &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    });
    wait_until("the agent to attach", || said("data path attached"));
    assert_tcp_preserves_source("pod-0-0", "10.244.0.2", "pod-1-0", "10.244.1.2");
    nix_kill(child.id() as i32);
    let _ = child.wait();
    let _ = std::fs::remove_file(&log_path);
}

/// SIGTERM to a process this test started or the lab recorded, and a wait
/// for it to go.
fn nix_kill(pid: i32) {
    // SAFETY: a plain kill(2) of a PID this test owns.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    wait_until("the process to end", || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true)
    });
}
