//! Egress through the lab: the node's masquerade and the outbound load
//! balancer (or the appliance), seen from the `inet` server, on the wire,
//! and in the port accounting.
use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use netplane::config::cluster::DEFAULT_CLUSTER;
use netplane_tests::{labkit::*, privileged};
use serde_json::Value;

const INET: &str = "203.0.113.10";
const FRONTEND: &str = "198.51.100.10";

/// A whoami server on `inet` for `max` clients (TCP, or UDP).
fn inet_server(udp: bool, max: u32) -> std::process::Child {
    let max = max.to_string();
    let mut args = vec!["--max", &max, "--timeout", "20"];
    if udp {
        args.push("--udp");
    }
    whoami_server_with("inet", &args)
}

fn ask(pod: &str, udp: bool) -> Value {
    let bin = netplane_bin();
    let target = format!("{INET}:7000");
    let mut cmd = vec![bin.to_str().unwrap(), "whoami", "ask", &target, "--json"];
    if udp {
        cmd.push("--udp");
    }
    let out = exec(pod, &cmd);
    assert!(
        out.status.success(),
        "{pod} -> inet: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn seen_ip(answer: &Value) -> String {
    let seen = answer["seen_as"].as_str().unwrap();
    seen.rsplit_once(':').unwrap().0.to_string()
}

fn ports_of(agent: &str) -> Vec<Value> {
    let v: Value = serde_json::from_str(&ok(&["ports", "--node", agent, "--json"])).unwrap();
    v["agents"][agent].as_array().unwrap().clone()
}

/// A cluster file: the default with `edits` applied (each must match).
fn cluster_file(name: &str, edits: &[(&str, &str)]) -> std::path::PathBuf {
    let mut text = DEFAULT_CLUSTER.to_string();
    for (from, to) in edits {
        assert!(text.contains(from), "{from}");
        text = text.replacen(from, to, 1);
    }
    let path = std::env::temp_dir().join(format!("netplane-{name}-{}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn egress_is_translated_twice_and_replies_come_back() {
    if !privileged() {
        return;
    }
    let (_turn, _guard) = lab_up();
    // Watch the load balancer's inside: what the VNet carries.
    let capture = Command::new(netplane_bin())
        .args([
            "lab", "exec", "lb", "--", "timeout", "8", "tcpdump", "-lni", "eth0", "-c", "6",
            "host", INET,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(800));

    let tcp_server = inet_server(false, 1);
    let tcp = ask("pod-0-0", false);
    let printed =
        String::from_utf8_lossy(&tcp_server.wait_with_output().unwrap().stdout).into_owned();
    assert_eq!(seen_ip(&tcp), FRONTEND, "inet saw {tcp}");
    assert!(
        printed.contains(&format!("<- {FRONTEND}:")),
        "inet printed {printed}"
    );

    let udp_server = inet_server(true, 1);
    let udp = ask("pod-1-1", true);
    udp_server.wait_with_output().unwrap();
    assert_eq!(seen_ip(&udp), FRONTEND, "inet saw {udp}");

    let p = exec("pod-0-1", &["ping", "-n", "-c", "2", "-W", "1", INET]);
    assert!(
        p.status.success(),
        "ping: {}",
        String::from_utf8_lossy(&p.stdout)
    );

    // Between node and load balancer: the node IP, never a pod IP.
    let wire = String::from_utf8_lossy(&capture.wait_with_output().unwrap().stdout).into_owned();
    assert!(
        wire.contains("IP 10.224.0.4.") || wire.contains("IP 10.224.0.4 >"),
        "capture:\n{wire}"
    );
    assert!(
        !wire.contains("10.244."),
        "a pod address crossed the VNet:\n{wire}"
    );

    // The translations are netplane's: the kernel's conntrack has none.
    for ns in ["np-node-0", "np-node-1", "np-lb"] {
        let ct = Command::new("ip")
            .args(["netns", "exec", ns, "conntrack", "-L"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&ct.stdout);
        assert!(
            !text.contains(INET),
            "{ns} conntrack holds our flows:\n{text}"
        );
    }
    // netplane nat shows both stages.
    let nat: Value = serde_json::from_str(&ok(&["nat", "--json"])).unwrap();
    let translated = |agent: &str| {
        nat["agents"][agent]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["translated"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert!(
        translated("node-0")
            .iter()
            .any(|t| t.starts_with("10.224.0.4")),
        "{nat}"
    );
    assert!(
        translated("lb").iter().any(|t| t.starts_with(FRONTEND)),
        "{nat}"
    );

    // Unsolicited from the internet to the frontend (a ping, a TCP
    // connection to a port a flow holds): dropped and counted.
    let before = counter(&stats("lb"), "drop", "nat_no_mapping");
    let p = exec("inet", &["ping", "-n", "-c", "2", "-W", "1", FRONTEND]);
    assert!(!p.status.success());
    let held = tcp["seen_as"].as_str().unwrap().to_string();
    let bin = netplane_bin();
    let out = exec(
        "inet",
        &[
            bin.to_str().unwrap(),
            "whoami",
            "ask",
            &held,
            "--timeout",
            "1",
        ],
    );
    assert!(
        !out.status.success(),
        "an unsolicited connection to {held} got through"
    );
    let after = counter(&stats("lb"), "drop", "nat_no_mapping");
    assert!(after >= before + 3, "nat_no_mapping {before} -> {after}");
}

#[test]
fn a_nodes_port_block_fills_exactly_and_empties_on_expiry() {
    if !privileged() {
        return;
    }
    let file = cluster_file(
        "exhaust",
        &[
            (
                "# allocated_outbound_ports = 1024",
                "allocated_outbound_ports = 64",
            ),
            // Short closing timers at both stages (an experiment: warned).
            ("fin_release_s = 240", "fin_release_s = 2"),
            ("rst_release_s = 15", "rst_release_s = 2"),
            ("tcp_syn_sent_s = 120", "tcp_syn_sent_s = 2"),
            ("tcp_fin_wait_s = 120", "tcp_fin_wait_s = 2"),
            ("tcp_time_wait_s = 120", "tcp_time_wait_s = 2"),
            ("tcp_close_s = 10", "tcp_close_s = 2"),
        ],
    );
    let (_turn, _guard) = lab_up_with(&["--config", file.to_str().unwrap()]);
    let bin = netplane_bin();
    let mut server = Command::new(&bin)
        .args([
            "lab",
            "exec",
            "inet",
            "--",
            bin.to_str().unwrap(),
            "whoami",
            "serve",
            "--hold",
            "--timeout",
            "25",
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let target = format!("{INET}:7000");
    let mut client = Command::new(&bin)
        .args([
            "lab",
            "exec",
            "pod-0-0",
            "--",
            bin.to_str().unwrap(),
            "whoami",
            "hold",
            &target,
        ])
        .args([
            "--count",
            "65",
            "--connect-timeout",
            "2",
            "--hold",
            "4",
            "--json",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(client.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let report: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    assert_eq!(
        (report["opened"].as_u64(), report["failed"].as_u64()),
        (Some(64), Some(1)),
        "{report}"
    );

    // While they are held: node-0's block on the frontend is full, exactly.
    let lb = ports_of("lb");
    let block = lb
        .iter()
        .find(|s| s["ports"] == "1024-1087")
        .expect("node-0's block");
    assert_eq!(block["allocated"], 64, "{block}");
    assert_eq!(block["allocated"], block["live_entries"], "{block}");
    assert!(block["failures"].as_u64().unwrap() >= 1, "{block}");
    assert!(counter(&stats("lb"), "drop", "nat_ports_exhausted") >= 1);
    let other = lb
        .iter()
        .find(|s| s["ports"] == "1088-1151")
        .expect("node-1's block");
    assert_eq!(other["allocated"], 0, "{other}");
    // The load balancer's program said so in its agent's log (aya-log).
    wait_until("the eBPF warning in the load balancer's log", || {
        std::fs::read_to_string("/run/netplane/lab/agent-lb.log")
            .is_ok_and(|l| l.contains("10.224.0.4 has no SNAT port left toward 203.0.113.10:7000"))
    });

    assert!(client.wait().unwrap().success());
    // Closed: the FIN's release timer (2 s here), then collection returns
    // every port.
    wait_until("the load balancer's ports to return", || {
        ports_of("lb")
            .iter()
            .all(|s| s["allocated"] == 0 && s["live_entries"] == 0)
    });
    wait_until("node-0's ports to return", || {
        ports_of("node-0").iter().all(|s| s["allocated"] == 0)
    });
    let peak = ports_of("lb")
        .iter()
        .find(|s| s["ports"] == "1024-1087")
        .unwrap()["peak"]
        .clone();
    assert_eq!(peak, 64);
    // The holding server would run out its timeout: end it (our child, by PID).
    server.kill().unwrap();
    server.wait().unwrap();
    std::fs::remove_file(&file).unwrap();
}

#[test]
fn user_defined_routing_leaves_through_the_appliance() {
    if !privileged() {
        return;
    }
    let file = cluster_file(
        "udr",
        &[
            (
                "type = \"loadBalancer\"",
                "type = \"userDefinedRouting\"\nappliance_ip = \"10.224.0.250\"",
            ),
            ("frontend_ips = [\"198.51.100.10\"]", ""),
        ],
    );
    let (_turn, _guard) = lab_up_with(&["--config", file.to_str().unwrap()]);
    let st: Value = serde_json::from_str(&ok(&["lab", "status", "--json"])).unwrap();
    assert!(
        st["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["role"] == "appliance" && h["ip"] == "10.224.0.250")
    );
    let server = inet_server(false, 1);
    let answer = ask("pod-1-0", false);
    server.wait_with_output().unwrap();
    assert_eq!(
        seen_ip(&answer),
        "203.0.113.2",
        "the appliance's own address: {answer}"
    );
    let p = exec("pod-0-0", &["ping", "-n", "-c", "1", "-W", "1", INET]);
    assert!(p.status.success());
    std::fs::remove_file(&file).unwrap();
}

/// A new connection in the lab produces its events: a new flow between
/// pods, a translation at the node and at the load balancer for egress, and
/// drops with their reason.
#[test]
fn flows_show_new_flows_translations_and_drops() {
    if !privileged() {
        return;
    }
    let (_turn, _guard) = lab_up();
    let server = inet_server(false, 1);
    ask("pod-0-0", false);
    server.wait_with_output().unwrap();
    let pod_server = whoami_server("pod-1-0");
    let bin = netplane_bin();
    let out = exec(
        "pod-0-1",
        &[bin.to_str().unwrap(), "whoami", "ask", "10.244.1.2:7000"],
    );
    assert!(out.status.success());
    pod_server.wait_with_output().unwrap();
    assert!(
        exec(
            "pod-0-0",
            &["ip", "addr", "add", "10.244.0.99/32", "dev", "eth0"]
        )
        .status
        .success()
    );
    let _ = exec(
        "pod-0-0",
        &[
            "ping",
            "-c",
            "1",
            "-W",
            "1",
            "-I",
            "10.244.0.99",
            "10.244.1.2",
        ],
    );

    let events = || -> Vec<Value> {
        ok(&["flows", "--json", "--last", "1000"])
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let has = |evs: &[Value], agent: &str, event: &str, f: &dyn Fn(&Value) -> bool| {
        evs.iter()
            .any(|e| e["agent"] == agent && e["event"] == event && f(e))
    };
    wait_until("the agents to log the events", || {
        let evs = events();
        has(&evs, "node-0", "translation", &|e| {
            e["src"].as_str().unwrap().starts_with("10.244.0.2:")
                && e["translated"].as_str().unwrap().starts_with("10.224.0.4:")
        }) && has(&evs, "lb", "translation", &|e| {
            e["translated"].as_str().unwrap().starts_with(FRONTEND)
        }) && has(&evs, "node-0", "new_flow", &|e| {
            e["src"].as_str().unwrap().starts_with("10.244.0.3:") && e["dst"] == "10.244.1.2:7000"
        }) && has(&evs, "node-0", "drop", &|e| {
            e["reason"] == "spoofed_source" && e["src"] == "10.244.0.99"
        })
    });
}

/// The same lab with kubenet's classic data path (CNI bridge plugin, cbr0,
/// kernel routes, iptables): the same behaviour from the pods' side, built
/// from kernel state instead of netplane's programs.
#[test]
fn kubenet_classic_behaves_the_same_from_the_pods() {
    if !privileged() {
        return;
    }
    let (_turn, _guard) = lab_up_with(&["--datapath", "kubenet-classic"]);
    // Pod to pod across nodes: routed, source kept.
    assert_tcp_preserves_source("pod-0-1", "10.244.0.3", "pod-1-0", "10.244.1.2");
    // Egress: the frontend IP, from node-0's block.
    let server = inet_server(false, 1);
    let answer = ask("pod-0-0", false);
    server.wait_with_output().unwrap();
    assert_eq!(seen_ip(&answer), FRONTEND);
    let port: u16 = answer["seen_as"]
        .as_str()
        .unwrap()
        .rsplit_once(':')
        .unwrap()
        .1
        .parse()
        .unwrap();
    assert!(
        (1024..=2047).contains(&port),
        "node-0's block is 1024-2047: {port}"
    );
    // Built the classic way: a bridge, a kernel route per other node,
    // MASQUERADE; and no netplane program anywhere.
    assert!(sh("np-node-0", &["ip", "-d", "link", "show", "cbr0"]).contains("bridge"));
    assert!(sh("np-node-0", &["ip", "route"]).contains("10.244.1.0/24 via 10.224.0.5"));
    assert!(sh("np-node-0", &["iptables", "-t", "nat", "-S"]).contains("MASQUERADE"));
    assert!(
        sh("np-lb", &["iptables", "-t", "nat", "-S"])
            .contains("--to-source 198.51.100.10:1024-2047")
    );
    let st: Value = serde_json::from_str(&ok(&["lab", "status", "--json"])).unwrap();
    assert!(st["agents"].as_array().unwrap().is_empty());
    let pins = std::fs::read_dir("/run/netplane/bpf")
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(pins, 0, "netplane pins in a classic lab");
}

/// What a command prints in a lab namespace.
fn sh(ns: &str, argv: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(argv)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The benchmarks' floor: the same lab on plain kernel routing, with no
/// netfilter rule anywhere and nothing translated.
#[test]
fn routed_lab_forwards_by_kernel_routes_alone() {
    if !privileged() {
        return;
    }
    let (_turn, _guard) = lab_up_with(&["--datapath", "routed"]);
    assert_tcp_preserves_source("pod-0-1", "10.244.0.3", "pod-1-0", "10.244.1.2");
    // Egress is routed, not translated: inet sees the pod itself.
    let server = inet_server(false, 1);
    let answer = ask("pod-0-0", false);
    server.wait_with_output().unwrap();
    assert_eq!(seen_ip(&answer), "10.244.0.2");
    for ns in ["np-node-0", "np-node-1", "np-lb"] {
        let rules = sh(ns, &["iptables-save"]);
        assert!(
            !rules.lines().any(|l| l.starts_with("-A")),
            "{ns} has netfilter rules:\n{rules}"
        );
    }
    assert!(!sh("np-node-0", &["ip", "link"]).contains("cbr0"));
    let routes = sh("np-node-0", &["ip", "route"]);
    assert!(routes.contains("10.244.1.0/24 via 10.224.0.5"), "{routes}");
    assert!(
        routes.contains("10.244.0.2 dev"),
        "ptp host route: {routes}"
    );
    let st: Value = serde_json::from_str(&ok(&["lab", "status", "--json"])).unwrap();
    assert!(st["agents"].as_array().unwrap().is_empty());
}

/// The load balancer's flows as `netplane nat --json` shows them.
fn lb_flows() -> Vec<Value> {
    let v: Value = serde_json::from_str(&ok(&["nat", "--node", "lb", "--json"])).unwrap();
    v["agents"]["lb"].as_array().unwrap().clone()
}

fn find_flow<'a>(
    flows: &'a [Value],
    proto: &str,
    from_node: &str,
    states: &[&str],
) -> Option<&'a Value> {
    flows.iter().find(|f| {
        f["proto"] == proto
            && f["original"].as_str().unwrap().starts_with(from_node)
            && states.contains(&f["state"].as_str().unwrap())
    })
}

/// Azure's SNAT port release at the load balancer, its timers shortened for
/// the test (an experiment, which every command warns about): after an RST
/// the port goes `rst_release_s` later, after a FIN `fin_release_s` later,
/// an idle TCP or UDP flow at the idle timeout. `netplane nat` shows each
/// flow's phase and time left, and `netplane ports` the ports coming back.
#[test]
fn the_load_balancer_releases_ports_on_azures_timers() {
    if !privileged() {
        return;
    }
    let file = cluster_file(
        "release",
        &[
            ("fin_release_s = 240", "fin_release_s = 8"),
            ("rst_release_s = 15", "rst_release_s = 2"),
            (
                "idle_timeout_minutes = 30",
                "idle_timeout_minutes = 30\nexperiment_idle_timeout_s = 14",
            ),
        ],
    );
    let warned = np(&["validate", file.to_str().unwrap()]);
    assert!(warned.status.success());
    let text = String::from_utf8_lossy(&warned.stdout);
    assert!(
        text.contains("experiment_idle_timeout_s = 14") && text.contains("rst_release_s = 2"),
        "{text}"
    );
    let (_turn, _guard) = lab_up_with(&["--config", file.to_str().unwrap()]);
    let t0 = std::time::Instant::now();
    let mut tcp = inet_server(false, 10);
    let mut udp = inet_server(true, 10);
    let mut held = whoami_server_with(
        "inet",
        &["--listen", "0.0.0.0:7001", "--hold", "--timeout", "40"],
    );
    let bin = netplane_bin();
    let target = format!("{INET}:7000");
    // node-0: a connection ended by an RST; node-1: one closed with FINs;
    // node-0 again: a UDP exchange; node-1 again: a connection held idle.
    let reset = exec(
        "pod-0-0",
        &[
            bin.to_str().unwrap(),
            "whoami",
            "ask",
            &target,
            "--reset",
            "--json",
        ],
    );
    assert!(
        reset.status.success(),
        "{}",
        String::from_utf8_lossy(&reset.stderr)
    );
    ask("pod-1-0", false);
    ask("pod-0-1", true);
    let mut idle = Command::new(&bin)
        .args([
            "lab",
            "exec",
            "pod-1-1",
            "--",
            bin.to_str().unwrap(),
            "whoami",
            "hold",
        ])
        .args([&format!("{INET}:7001"), "--count", "1", "--hold", "30"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let (n0, n1) = ("10.224.0.4:", "10.224.0.5:");
    let (closing, fin_states) = (&["close"][..], &["fin_wait", "close_wait", "time_wait"][..]);
    wait_until("the four flows at the load balancer", || {
        let f = lb_flows();
        find_flow(&f, "tcp", n0, closing).is_some()
            && find_flow(&f, "tcp", n1, fin_states).is_some()
            && find_flow(&f, "udp", n0, &["established"]).is_some()
            && find_flow(&f, "tcp", n1, &["established"]).is_some()
    });
    let f = lb_flows();
    let left = |v: &Value| v["idle_left_s"].as_u64().unwrap();
    assert!(
        left(find_flow(&f, "tcp", n0, closing).unwrap()) <= 2,
        "{f:?}"
    );
    assert!(
        left(find_flow(&f, "tcp", n1, fin_states).unwrap()) <= 8,
        "{f:?}"
    );
    assert!(
        left(find_flow(&f, "udp", n0, &["established"]).unwrap()) <= 14,
        "{f:?}"
    );

    eprintln!("flows seen at {:?}: {f:?}", t0.elapsed());
    // The RST's port goes first, while the FIN's is still held...
    wait_until("the RST's port to go", || {
        find_flow(&lb_flows(), "tcp", n0, closing).is_none()
    });
    assert!(find_flow(&lb_flows(), "tcp", n1, fin_states).is_some());
    // ... then the FIN's, while the idle ones still count down ...
    wait_until("the FIN's port to go", || {
        find_flow(&lb_flows(), "tcp", n1, fin_states).is_none()
    });
    let f = lb_flows();
    assert!(
        find_flow(&f, "udp", n0, &["established"]).is_some(),
        "{f:?}"
    );
    assert!(
        find_flow(&f, "tcp", n1, &["established"]).is_some(),
        "{f:?}"
    );
    // ... then the idle UDP flow and the idle TCP connection (still open at
    // both ends: without TCP reset on idle, nobody is told).
    eprintln!("FIN's port gone at {:?}", t0.elapsed());
    wait_until("the idle flows' ports to go", || lb_flows().is_empty());
    eprintln!("idle ports gone at {:?}", t0.elapsed());
    assert!(ports_of("lb").iter().all(|s| s["allocated"] == 0));
    for child in [&mut tcp, &mut udp, &mut held, &mut idle] {
        let _ = child.kill();
        let _ = child.wait();
    }
    std::fs::remove_file(&file).unwrap();
}

/// Azure's system routes: a private destination outside the VNet has next
/// hop None. The node masquerades it as kubenet would; the fabric (the
/// load balancer in the lab) drops it with `system_route_none` instead of
/// translating it toward the internet. The service CIDR never gets that
/// far: with no Service there (no API server in this lab) the node drops
/// it as `no_service`. `netplane routes` shows the system routes beside
/// the UDRs.
#[test]
fn private_ranges_outside_the_vnet_go_nowhere() {
    if !privileged() {
        return;
    }
    let (_turn, _guard) = lab_up();
    let before = counter(&stats("lb"), "drop", "system_route_none");
    let no_service = counter(&stats("node-0"), "drop", "no_service");
    let bin = netplane_bin();
    for target in ["10.0.0.10:53", "192.168.1.1:53", "172.16.0.1:53"] {
        let out = exec(
            "pod-0-0",
            &[
                bin.to_str().unwrap(),
                "whoami",
                "ask",
                target,
                "--udp",
                "--timeout",
                "1",
            ],
        );
        assert!(!out.status.success(), "{target} answered");
    }
    let after = counter(&stats("lb"), "drop", "system_route_none");
    assert!(after >= before + 2, "system_route_none {before} -> {after}");
    let after = counter(&stats("node-0"), "drop", "no_service");
    assert!(after > no_service, "no_service {no_service} -> {after}");
    let nat: Value = serde_json::from_str(&ok(&["nat", "--node", "lb", "--json"])).unwrap();
    let flows = nat["agents"]["lb"].as_array().unwrap();
    assert!(
        flows
            .iter()
            .all(|f| !f["remote"].as_str().unwrap().ends_with(":53")),
        "translated toward the internet: {flows:?}"
    );
    // The internet still is reachable.
    let mut server = inet_server(true, 1);
    ask("pod-0-0", true);
    server.wait().unwrap();

    let routes: Value =
        serde_json::from_str(&ok(&["routes", "--node", "node-0", "--json"])).unwrap();
    let system = routes["nodes"]["node-0"]["system_routes"]
        .as_array()
        .unwrap();
    let hop = |prefix: &str| {
        system
            .iter()
            .find(|r| r["address_prefix"] == prefix)
            .map(|r| r["next_hop_type"].as_str().unwrap().to_string())
    };
    assert_eq!(hop("10.224.0.0/12").as_deref(), Some("VnetLocal"));
    for none in [
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
    ] {
        assert_eq!(hop(none).as_deref(), Some("None"), "{none}");
    }
    assert_eq!(hop("0.0.0.0/0").as_deref(), Some("Internet"));
}

/// Failure injection: an agent killed between a removal's two deletes
/// leaves a claim (NAT_IN) whose translation (NAT_OUT) is gone, holding its
/// port. Orphans come only from such a death, so the next agent's first two
/// collection passes are sweeps: the port comes back within seconds of the
/// restart. (The second sweep used to wait for the 30th pass, so an agent
/// killed every 14 s, as in the soak, never returned such a port.)
#[test]
fn a_restarted_agent_returns_the_port_of_a_removal_cut_short() {
    if !privileged() {
        return;
    }
    let (_turn, _guard) = lab_up();
    let mut server = inet_server(true, 1);
    ask("pod-0-0", true);
    server.wait().unwrap();
    let held = |slots: &[Value], field: &str| -> u64 {
        slots.iter().map(|s| s[field].as_u64().unwrap()).sum()
    };
    let before = ports_of("node-0");
    assert_eq!(held(&before, "allocated"), 1, "{before:?}");
    assert_eq!(held(&before, "live_entries"), 1, "{before:?}");
    // Cut the removal short as a kill would: the forward entry goes, the
    // reverse one stays.
    let pins = netplane::datapath::Pins::of("node-0");
    let mut out = pins.hash(netplane_common::registry::NAT_OUT).unwrap();
    let key = out.keys().next().unwrap().unwrap();
    out.remove(&key).unwrap();
    let orphaned = ports_of("node-0");
    assert_eq!(held(&orphaned, "allocated"), 1, "{orphaned:?}");
    assert_eq!(held(&orphaned, "live_entries"), 0, "{orphaned:?}");

    ok(&["lab", "agent-restart", "node-0", "--kill"]);
    wait_until("the orphan's port to come back", || {
        held(&ports_of("node-0"), "allocated") == 0
    });
    let reverse = pins.hash(netplane_common::registry::NAT_IN).unwrap();
    assert_eq!(reverse.keys().count(), 0, "the claim is gone too");
}

/// Failure injection: the agent's port-peaks file cannot be written (a
/// directory stands in its place). The agent says so once, keeps running,
/// and keeps collecting: an expired translation's port still comes back.
/// (Any collector error used to end the agent while its pinned programs
/// went on allocating with nobody collecting.)
#[test]
fn the_agent_outlives_its_own_errors_and_keeps_collecting() {
    if !privileged() {
        return;
    }
    let file = cluster_file(
        "errors",
        &[
            ("udp_s = 30", "udp_s = 2"),
            ("udp_stream_s = 120", "udp_stream_s = 2"),
        ],
    );
    let (_turn, _guard) = lab_up_with(&["--config", file.to_str().unwrap()]);
    let peaks = "/run/netplane/nodes/node-0/port-peaks.json";
    let _ = std::fs::remove_file(peaks);
    std::fs::create_dir_all(format!("{peaks}/blocked")).unwrap();
    let mut server = inet_server(true, 1);
    ask("pod-0-0", true);
    server.wait().unwrap();
    wait_until("node-0's UDP translation to be collected", || {
        ports_of("node-0").iter().all(|s| s["allocated"] == 0)
    });
    let log = std::fs::read_to_string("/run/netplane/lab/agent-node-0.log").unwrap();
    assert_eq!(
        log.matches("recording port peaks failed").count(),
        1,
        "said once: {log}"
    );
    let status: Value = serde_json::from_str(&ok(&["lab", "status", "--json"])).unwrap();
    let agent = status["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["node"] == "node-0")
        .unwrap();
    assert_eq!(agent["running"], true, "{agent}");
    std::fs::remove_dir_all(peaks).unwrap();
    std::fs::remove_file(&file).unwrap();
}

/// Datagrams larger than the MTU go through both SNAT stages in fragments,
/// both ways, as on a kubenet node (whose conntrack reassembles; netplane
/// follows each datagram's first fragment): a 4,000-byte UDP question and
/// its 4,000-byte answer, and a 6,000-byte ping, with no fragment dropped.
#[test]
fn fragments_go_through_both_snat_stages_both_ways() {
    if !privileged() {
        return;
    }
    let (_turn, _guard) = lab_up();
    let untracked = |agent: &str| counter(&stats(agent), "drop", "fragment_not_tracked");
    let before = (untracked("node-0"), untracked("lb"));
    let mut server = inet_server(true, 1);
    let bin = netplane_bin();
    let target = format!("{INET}:7000");
    let out = exec(
        "pod-0-0",
        &[
            bin.to_str().unwrap(),
            "whoami",
            "ask",
            &target,
            "--udp",
            "--size",
            "4000",
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["bytes"], 4000, "{answer}");
    assert_eq!(seen_ip(&answer), FRONTEND);
    server.wait().unwrap();
    let out = ping("pod-0-0", &["-c", "2", "-W", "2", "-s", "6000", INET]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!((untracked("node-0"), untracked("lb")), before);
}

/// TCP reset on idle (AKS's outbound rule has it on): an established
/// connection that idles out at the load balancer (the idle timeout cut to
/// 3 s for the test) is reset at both ends, with sequence numbers each end
/// accepts. The pod's read fails with a reset long before its own timeout,
/// and the server in `inet` no longer holds the connection.
#[test]
fn the_load_balancer_resets_idle_connections_at_both_ends() {
    if !privileged() {
        return;
    }
    let file = cluster_file(
        "reset",
        &[(
            "idle_timeout_minutes = 30",
            "idle_timeout_minutes = 30\nexperiment_idle_timeout_s = 3",
        )],
    );
    let (_turn, _guard) = lab_up_with(&["--config", file.to_str().unwrap()]);
    let mut held = whoami_server_with(
        "inet",
        &["--listen", "0.0.0.0:7001", "--hold", "--timeout", "30"],
    );
    let bin = netplane_bin();
    let started = std::time::Instant::now();
    let out = exec(
        "pod-0-0",
        &[
            bin.to_str().unwrap(),
            "whoami",
            "ask",
            &format!("{INET}:7001"),
            "--timeout",
            "20",
        ],
    );
    let took = started.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("reset"), "the pod's read: {err}");
    assert!(
        took < std::time::Duration::from_secs(10),
        "reset after {took:?}"
    );
    // Both ends' RSTs leave together; the pod's may be read first.
    wait_until("inet to drop the connection", || {
        let established = Command::new("ip")
            .args([
                "netns",
                "exec",
                "np-inet",
                "ss",
                "-Htn",
                "state",
                "established",
                "( sport = :7001 )",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&established.stdout)
            .trim()
            .is_empty()
    });
    let _ = held.kill();
    let _ = held.wait();
    std::fs::remove_file(&file).unwrap();
}

/// A pod spraying UDP from 2,000 ports through NAT tables of 1,024 entries
/// (node and load balancer, with ports to spare) cannot stop its
/// neighbour's new TCP connection: each full table gives up the sprayer's
/// unreplied flows, counted as evictions, and accounting stays exact.
#[test]
fn a_pod_spraying_destinations_cannot_stop_its_neighbours_in_the_lab() {
    if !privileged() {
        return;
    }
    let file = cluster_file(
        "spray",
        &[
            (
                "allow_over_route_limit = false",
                "allow_over_route_limit = false\nnat_table_entries = 1024",
            ),
            (
                "# allocated_outbound_ports = 1024",
                "allocated_outbound_ports = 4096",
            ),
        ],
    );
    let (_turn, _guard) = lab_up_with(&["--config", file.to_str().unwrap()]);
    let out = exec(
        "pod-0-0",
        &[
            env!("CARGO_BIN_EXE_netplane-bench"),
            "loadgen",
            "udp-spray",
            "--to",
            INET,
            "--dport-first",
            "10000",
            "--dport-last",
            "10000",
            "--sources",
            "2000",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sprayed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(sprayed["flows"], 2000, "{sprayed}");
    let mut server = inet_server(false, 1);
    let answer = ask("pod-0-1", false);
    server.wait().unwrap();
    assert_eq!(seen_ip(&answer), FRONTEND);
    for agent in ["node-0", "lb"] {
        let slots = ports_of(agent);
        let evicted: u64 = slots.iter().map(|s| s["evicted"].as_u64().unwrap()).sum();
        assert!(evicted >= 2000 - 1024, "{agent}: {slots:?}");
        for s in &slots {
            assert_eq!(s["allocated"], s["live_entries"], "{agent}: {s}");
        }
    }
    std::fs::remove_file(&file).unwrap();
}
