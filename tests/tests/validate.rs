//! The cluster file's rules: a matrix of broken files, each expected to be
//! refused with exactly one named rule; malformed input never panics; the
//! `validate` command's exit code and JSON.
use netplane::config::cluster::{Cluster, ConfigError, DEFAULT_CLUSTER, Violation};

/// The default file with `from` replaced by `to` (which must occur).
fn edited(from: &str, to: &str) -> String {
    assert!(
        DEFAULT_CLUSTER.contains(from),
        "default file lacks {from:?}"
    );
    DEFAULT_CLUSTER.replacen(from, to, 1)
}

fn violations(text: &str) -> Vec<Violation> {
    match Cluster::parse("case", text) {
        Ok(_) => Vec::new(),
        Err(ConfigError::Invalid { violations, .. }) => violations,
        Err(e) => panic!("expected rule violations, got: {e}"),
    }
}

const NODE1: &str = "name = \"node-1\"\nip = \"10.224.0.5\"";

#[test]
fn bad_config_matrix() {
    let udr = |extra: &str| {
        edited(
            "type = \"loadBalancer\"",
            &format!("type = \"userDefinedRouting\"\n{extra}"),
        )
        .replace("frontend_ips = [\"198.51.100.10\"]", "")
    };
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "NAT tables too small",
            edited(
                "allow_over_route_limit = false",
                "allow_over_route_limit = false\nnat_table_entries = 100",
            ),
            "limits.nat_table_entries",
            "must be 1024 to 4194304 translations",
        ),
        (
            "pod CIDR in a reserved range",
            edited(
                "pod_cidr = \"10.244.0.0/16\"",
                "pod_cidr = \"172.30.0.0/16\"",
            ),
            "network.pod_cidr",
            "overlaps 172.30.0.0/16, which AKS reserves",
        ),
        (
            "service CIDR in link-local",
            edited(
                "service_cidr = \"10.0.0.0/16\"",
                "service_cidr = \"169.254.0.0/16\"",
            )
            .replace("10.0.0.10", "169.254.0.10"),
            "network.service_cidr",
            "overlaps 169.254.0.0/16, which AKS reserves",
        ),
        (
            "VNet in 172.31/16",
            edited(
                "vnet_cidr = \"10.224.0.0/12\"",
                "vnet_cidr = \"172.31.0.0/16\"",
            )
            .replace(
                "node_subnet = \"10.224.0.0/16\"",
                "node_subnet = \"172.31.0.0/16\"",
            )
            .replace("10.224.0.4", "172.31.0.4")
            .replace("10.224.0.5", "172.31.0.5"),
            "network.vnet_cidr",
            "overlaps 172.31.0.0/16, which AKS reserves",
        ),
        (
            "service CIDR in TEST-NET-1",
            edited(
                "service_cidr = \"10.0.0.0/16\"",
                "service_cidr = \"192.0.2.0/24\"",
            )
            .replace("10.0.0.10", "192.0.2.10"),
            "network.service_cidr",
            "overlaps 192.0.2.0/24, which AKS reserves",
        ),
        (
            "pod CIDR overlaps the VNet",
            edited(
                "pod_cidr = \"10.244.0.0/16\"",
                "pod_cidr = \"10.230.0.0/16\"",
            ),
            "network.pod_cidr",
            "must not overlap network.vnet_cidr 10.224.0.0/12",
        ),
        (
            "service CIDR overlaps the VNet",
            edited(
                "service_cidr = \"10.0.0.0/16\"",
                "service_cidr = \"10.225.0.0/16\"",
            )
            .replace("10.0.0.10", "10.225.0.10"),
            "network.service_cidr",
            "must not overlap network.vnet_cidr 10.224.0.0/12",
        ),
        (
            "service CIDR overlaps the pod CIDR",
            edited(
                "service_cidr = \"10.0.0.0/16\"",
                "service_cidr = \"10.244.128.0/17\"",
            )
            .replace("10.0.0.10", "10.244.128.10"),
            "network.service_cidr",
            "must not overlap network.pod_cidr 10.244.0.0/16",
        ),
        (
            "node subnet outside the VNet",
            edited(
                "node_subnet = \"10.224.0.0/16\"",
                "node_subnet = \"10.250.0.0/16\"",
            )
            .replace("10.224.0.4", "10.250.0.4")
            .replace("10.224.0.5", "10.250.0.5"),
            "network.node_subnet",
            "must be inside network.vnet_cidr 10.224.0.0/12",
        ),
        (
            "DNS IP outside the service CIDR",
            edited(
                "dns_service_ip = \"10.0.0.10\"",
                "dns_service_ip = \"10.1.0.10\"",
            ),
            "network.dns_service_ip",
            "must be inside network.service_cidr 10.0.0.0/16",
        ),
        (
            "DNS IP is the first address",
            edited(
                "dns_service_ip = \"10.0.0.10\"",
                "dns_service_ip = \"10.0.0.1\"",
            ),
            "network.dns_service_ip",
            "must not be the network address or the first address (.1 is the kubernetes service)",
        ),
        (
            "host bits in the pod CIDR",
            edited(
                "pod_cidr = \"10.244.0.0/16\"",
                "pod_cidr = \"10.244.0.1/16\"",
            ),
            "network.pod_cidr",
            "host bits set; the network is 10.244.0.0/16",
        ),
        (
            "max pods below 10",
            edited("max_pods = 110", "max_pods = 9"),
            "network.max_pods",
            "kubenet allows 10 to 250 pods per node",
        ),
        (
            "max pods above 250",
            edited("max_pods = 110", "max_pods = 251"),
            "network.max_pods",
            "kubenet allows 10 to 250 pods per node",
        ),
        (
            "max pods beyond a /26",
            edited("node_pod_prefix = 24", "node_pod_prefix = 26"),
            "network.max_pods",
            "a /26 holds only 61 pods (network, broadcast and the .1 gateway excluded)",
        ),
        (
            "node prefix wider than the pod CIDR",
            edited("node_pod_prefix = 24", "node_pod_prefix = 15"),
            "network.node_pod_prefix",
            "must be between the pod CIDR's /16 and /30",
        ),
        (
            "node IP outside the node subnet",
            edited("ip = \"10.224.0.5\"", "ip = \"10.225.0.5\""),
            "nodes[1].ip",
            "must be inside network.node_subnet 10.224.0.0/16",
        ),
        (
            "node IP Azure reserves",
            edited("ip = \"10.224.0.5\"", "ip = \"10.224.0.3\""),
            "nodes[1].ip",
            "Azure reserves the first four and the last address of a subnet",
        ),
        (
            "duplicate node IP",
            edited("ip = \"10.224.0.5\"", "ip = \"10.224.0.4\""),
            "nodes[1].ip",
            "duplicate node IP",
        ),
        (
            "duplicate node name",
            edited("name = \"node-1\"", "name = \"node-0\""),
            "nodes[1].name",
            "duplicate node name",
        ),
        (
            "node name not a DNS label",
            edited("name = \"node-1\"", "name = \"Node_1\""),
            "nodes[1].name",
            "must be a DNS label: 1-63 of a-z, 0-9 and '-', not starting or ending with '-'",
        ),
        (
            "node pod CIDR outside the cluster",
            edited(NODE1, &format!("{NODE1}\npod_cidr = \"10.245.0.0/24\"")),
            "nodes[1].pod_cidr",
            "must be inside network.pod_cidr 10.244.0.0/16",
        ),
        (
            "node pod CIDR of the wrong size",
            edited(NODE1, &format!("{NODE1}\npod_cidr = \"10.244.8.0/25\"")),
            "nodes[1].pod_cidr",
            "must be a /24 (network.node_pod_prefix)",
        ),
        (
            "overlapping node pod CIDRs",
            edited(
                "ip = \"10.224.0.4\"",
                "ip = \"10.224.0.4\"\npod_cidr = \"10.244.7.0/24\"",
            )
            .replace(NODE1, &format!("{NODE1}\npod_cidr = \"10.244.7.0/24\"")),
            "nodes.pod_cidr",
            "overlaps 10.244.7.0/24 of node-0",
        ),
        (
            "no nodes",
            edited(
                "name = \"netplane-lab\"",
                "name = \"netplane-lab\"\nnodes = []",
            )
            .split("[[nodes]]")
            .next()
            .unwrap()
            .to_string()
                + &DEFAULT_CLUSTER[DEFAULT_CLUSTER.find("[outbound]").unwrap()..],
            "nodes",
            "a cluster needs at least one node",
        ),
        (
            "load balancer without frontend IPs",
            edited("frontend_ips = [\"198.51.100.10\"]", "frontend_ips = []"),
            "outbound.frontend_ips",
            "loadBalancer needs at least one frontend IP",
        ),
        (
            "more frontend IPs than the data path draws from",
            edited(
                "frontend_ips = [\"198.51.100.10\"]",
                &format!(
                    "frontend_ips = [{}]",
                    (1..=17)
                        .map(|i| format!("\"198.51.100.{i}\""))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
            "outbound.frontend_ips",
            "netplane's data path draws a node's ports from at most 16 frontend IPs (MAX_FRONTENDS); more would never be used",
        ),
        (
            "duplicate frontend IP",
            edited(
                "frontend_ips = [\"198.51.100.10\"]",
                "frontend_ips = [\"198.51.100.10\", \"198.51.100.10\"]",
            ),
            "outbound.frontend_ips[1]",
            "duplicate frontend IP",
        ),
        (
            "frontend IP inside the VNet",
            edited(
                "frontend_ips = [\"198.51.100.10\"]",
                "frontend_ips = [\"10.224.9.9\"]",
            ),
            "outbound.frontend_ips[0]",
            "a frontend IP is public: must not be inside network.vnet_cidr 10.224.0.0/12",
        ),
        (
            "ports not a multiple of 8",
            edited(
                "# allocated_outbound_ports = 1024",
                "allocated_outbound_ports = 100",
            ),
            "outbound.allocated_outbound_ports",
            "must be 0 (Azure's default table) or a multiple of 8 up to 64000",
        ),
        (
            "ports above 64000",
            edited(
                "# allocated_outbound_ports = 1024",
                "allocated_outbound_ports = 64008",
            ),
            "outbound.allocated_outbound_ports",
            "must be 0 (Azure's default table) or a multiple of 8 up to 64000",
        ),
        (
            "port blocks do not fit the frontends",
            edited(
                "# allocated_outbound_ports = 1024",
                "allocated_outbound_ports = 32008",
            ),
            "outbound.allocated_outbound_ports",
            "2 nodes x 32008 ports = 64016 > 64000 x 1 frontend IP(s) = 64000: add frontend IPs or allocate fewer ports",
        ),
        (
            "idle timeout below 4 minutes",
            edited("idle_timeout_minutes = 30", "idle_timeout_minutes = 3"),
            "outbound.idle_timeout_minutes",
            "Azure allows 4 to 120 minutes",
        ),
        (
            "idle timeout above 120 minutes",
            edited("idle_timeout_minutes = 30", "idle_timeout_minutes = 121"),
            "outbound.idle_timeout_minutes",
            "Azure allows 4 to 120 minutes",
        ),
        (
            "port range upside down",
            edited("port_range = [1024, 65535]", "port_range = [2000, 1999]"),
            "outbound.port_range",
            "must be [low, high] with 1 <= low <= high <= 65535",
        ),
        (
            "appliance IP with a load balancer",
            edited(
                "idle_timeout_minutes = 30",
                "idle_timeout_minutes = 30\nappliance_ip = \"10.225.0.4\"",
            ),
            "outbound.appliance_ip",
            "only for outbound type userDefinedRouting",
        ),
        (
            "userDefinedRouting without an appliance",
            udr(""),
            "outbound.appliance_ip",
            "userDefinedRouting needs the appliance's IP",
        ),
        (
            "appliance outside the VNet",
            udr("appliance_ip = \"10.240.0.4\""),
            "outbound.appliance_ip",
            "must be inside network.vnet_cidr 10.224.0.0/12",
        ),
        (
            "appliance on a node's IP",
            udr("appliance_ip = \"10.224.0.5\""),
            "outbound.appliance_ip",
            "is a node's IP",
        ),
        (
            "zero UDP timeout",
            edited("udp_s = 30", "udp_s = 0"),
            "timeouts.udp_s",
            "must be at least 1 second",
        ),
        (
            "zero TIME_WAIT timeout",
            edited("tcp_time_wait_s = 120", "tcp_time_wait_s = 0"),
            "timeouts.tcp_time_wait_s",
            "must be at least 1 second",
        ),
        (
            "zero FIN release at the load balancer",
            edited("fin_release_s = 240", "fin_release_s = 0"),
            "outbound.fin_release_s",
            "must be at least 1 second",
        ),
        (
            "zero experimental idle timeout",
            edited(
                "idle_timeout_minutes = 30",
                "idle_timeout_minutes = 30\nexperiment_idle_timeout_s = 0",
            ),
            "outbound.experiment_idle_timeout_s",
            "must be at least 1 second",
        ),
        (
            "more pods than max pods in the lab",
            edited("pods_per_node = 2", "pods_per_node = 111"),
            "lab.pods_per_node",
            "more than network.max_pods (110)",
        ),
    ];
    assert!(cases.len() >= 25);
    let mut failures = Vec::new();
    for (name, text, field, rule) in &cases {
        let v = violations(text);
        let got: Vec<(&str, &str)> = v
            .iter()
            .map(|v| (v.field.as_str(), v.rule.as_str()))
            .collect();
        if got != [(*field, *rule)] {
            failures.push(format!(
                "{name}:\n  want [({field:?}, {rule:?})]\n  got  {got:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn several_errors_are_reported_at_once() {
    let text = edited("max_pods = 110", "max_pods = 300")
        .replace("ip = \"10.224.0.5\"", "ip = \"10.224.0.4\"");
    let fields: Vec<String> = violations(&text).into_iter().map(|v| v.field).collect();
    assert!(
        fields.contains(&"network.max_pods".to_string()),
        "{fields:?}"
    );
    assert!(fields.contains(&"nodes[1].ip".to_string()), "{fields:?}");
}

#[test]
fn userdefinedrouting_with_an_appliance_is_valid() {
    let text = edited(
        "type = \"loadBalancer\"",
        "type = \"userDefinedRouting\"\nappliance_ip = \"10.225.0.4\"",
    )
    .replace("frontend_ips = [\"198.51.100.10\"]", "");
    assert_eq!(violations(&text), Vec::new());
}

#[test]
fn malformed_input_gets_an_error_never_a_panic() {
    let parse_errors = [
        ("not TOML", "this is [not toml".to_string()),
        (
            "wrong type",
            edited("max_pods = 110", "max_pods = \"many\""),
        ),
        (
            "unknown field",
            edited("max_pods = 110", "max_pods = 110\nmax_pod = 3"),
        ),
        (
            "IPv6 node IP",
            edited("ip = \"10.224.0.4\"", "ip = \"fd00::4\""),
        ),
        (
            "IPv6 CIDR",
            edited("pod_cidr = \"10.244.0.0/16\"", "pod_cidr = \"fd00::/64\""),
        ),
        (
            "prefix out of range",
            edited(
                "pod_cidr = \"10.244.0.0/16\"",
                "pod_cidr = \"10.244.0.0/33\"",
            ),
        ),
        (
            "unknown outbound type",
            edited("type = \"loadBalancer\"", "type = \"natGateway\""),
        ),
        ("negative number", edited("max_pods = 110", "max_pods = -1")),
        ("empty file", String::new()),
    ];
    for (name, text) in parse_errors {
        match Cluster::parse("case", &text) {
            Err(ConfigError::Parse { message, .. }) => assert!(!message.is_empty(), "{name}"),
            other => panic!("{name}: expected a parse error, got {other:?}"),
        }
    }
    // Fuzz-ish: every single-byte corruption of the default file, at a
    // stride, either parses or errors; none panics.
    let bytes = DEFAULT_CLUSTER.as_bytes();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (0..bytes.len()).step_by(3) {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut m = bytes.to_vec();
        m[i] = b"0123456789./:=[]\"x-# \n"[(seed % 22) as usize];
        let text = String::from_utf8_lossy(&m);
        let _ = std::panic::catch_unwind(|| Cluster::parse("fuzz", &text))
            .unwrap_or_else(|_| panic!("panicked on a corruption at byte {i}"));
    }
}

#[test]
fn validate_command_exit_code_and_json() {
    let bin = {
        let exe = std::env::current_exe().unwrap();
        exe.parent().unwrap().parent().unwrap().join("netplane")
    };
    let dir = std::env::temp_dir().join(format!("netplane-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    let bad = dir.join("bad.toml");
    std::fs::write(&good, DEFAULT_CLUSTER).unwrap();
    std::fs::write(
        &bad,
        edited("max_pods = 110", "max_pods = 300")
            .replace("ip = \"10.224.0.5\"", "ip = \"10.224.0.4\""),
    )
    .unwrap();

    let out = std::process::Command::new(&bin)
        .args(["validate", good.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new(&bin)
        .args(["validate", bad.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], false);
    let errors = v["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "{v}");
    assert!(
        errors
            .iter()
            .all(|e| e["field"].is_string() && e["value"].is_string() && e["rule"].is_string())
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
