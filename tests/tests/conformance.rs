//! The conformance suite: one table of scenarios, each run on netplane's
//! data path and on classic kubenet's (`--datapath kubenet-classic`, the
//! oracle) in the same test run. What the ends observe must agree: who the
//! receiver saw as the source and whether the port was kept, whether an
//! answer came (and its size, and a transfer's hash), or what came back
//! instead (an RST, an ICMP error), and a ping reply's TTL. Where the two
//! must differ — netplane emulating Azure where the classic lab's load
//! balancer is a Linux router, or a rule netplane adds on purpose — the
//! table says why and checks netplane's side against that instead. A
//! difference nobody explained fails the test. docs/conformance.md shows
//! the table and the outcomes.
use std::{collections::BTreeMap, process::Child};

use netplane_tests::{labkit::*, privileged};
use serde_json::Value;

/// What a probe does, from its `from` host.
#[derive(Debug, Clone, Copy)]
enum Probe {
    /// `whoami ask` over TCP; `send` bytes go along and are hashed.
    Tcp { to: &'static str, send: usize },
    /// `whoami ask` over UDP with a question (and answer) of `size` bytes.
    Udp { to: &'static str, size: usize },
    /// One ping of `size` bytes.
    Ping { to: &'static str, size: usize },
    /// One ping sent from an address that is not the pod's own.
    SpoofedPing {
        to: &'static str,
        from_ip: &'static str,
    },
    /// A DNS question for `name` to kube-dns (10.0.0.10).
    Dig { name: &'static str, tcp: bool },
    /// `whoami ask` to a node's own listening port (PORT) while `pod`'s
    /// flow to `held_to`, from PORT, holds that same port of the node's
    /// address (the node stage keeps a free source port; `held_to` is in
    /// the node subnet, so no second stage changes it).
    ToHeldPort {
        to: &'static str,
        pod: &'static str,
        held_to: &'static str,
        udp: bool,
    },
}

/// What the sender observed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// The server answered: whom it saw (a lab host's name, or "frontend"),
    /// whether the source port was kept, the answer's size, and for a
    /// transfer whether its bytes arrived intact.
    Answered {
        seen: String,
        port_kept: bool,
        bytes: usize,
        intact: Option<bool>,
    },
    /// TCP: an RST; UDP: ICMP port unreachable.
    Refused,
    /// A ping's reply and its TTL.
    Echo { ttl: u8 },
    /// An ICMP error or a local routing error, by kind.
    Error(String),
    /// Nothing came back.
    Silence,
    /// DNS: the answer, by host name.
    Resolved(String),
}

/// Why netplane's outcome differs from classic kubenet's, and what
/// netplane's must be instead.
#[derive(Debug, Clone)]
struct Differs {
    why: &'static str,
    netplane: Outcome,
}

struct Scenario {
    name: &'static str,
    from: &'static str,
    probe: Probe,
    differs: Option<Differs>,
}

const INET: &str = "203.0.113.10";
const PORT: u16 = 7000;
/// Hosts that run TCP and UDP whoami servers on PORT.
const SERVERS: [&str; 5] = ["pod-0-1", "pod-1-0", "node-0", "node-1", "inet"];

fn scenarios() -> Vec<Scenario> {
    let s = |name, from, probe| Scenario {
        name,
        from,
        probe,
        differs: None,
    };
    let answered = |seen: &str, port_kept, bytes, intact| Outcome::Answered {
        seen: seen.into(),
        port_kept,
        bytes,
        intact,
    };
    vec![
        s(
            "pod → pod, same node, TCP",
            "pod-0-0",
            Probe::Tcp {
                to: "10.244.0.3:7000",
                send: 0,
            },
        ),
        s(
            "pod → pod, same node, UDP",
            "pod-0-0",
            Probe::Udp {
                to: "10.244.0.3:7000",
                size: 0,
            },
        ),
        s(
            "pod → pod, same node, ICMP",
            "pod-0-0",
            Probe::Ping {
                to: "10.244.0.3",
                size: 56,
            },
        ),
        s(
            "pod → pod, other node, TCP",
            "pod-0-0",
            Probe::Tcp {
                to: "10.244.1.2:7000",
                send: 0,
            },
        ),
        s(
            "pod → pod, other node, UDP",
            "pod-0-0",
            Probe::Udp {
                to: "10.244.1.2:7000",
                size: 0,
            },
        ),
        s(
            "pod → pod, other node, ICMP",
            "pod-0-0",
            Probe::Ping {
                to: "10.244.1.2",
                size: 56,
            },
        ),
        s(
            "pod → pod, other node, 4,000-byte UDP both ways",
            "pod-0-0",
            Probe::Udp {
                to: "10.244.1.2:7000",
                size: 4000,
            },
        ),
        s(
            "pod → pod, other node, 6,000-byte ping",
            "pod-0-0",
            Probe::Ping {
                to: "10.244.1.2",
                size: 6000,
            },
        ),
        s(
            "pod → pod, other node, 4 MB TCP transfer",
            "pod-0-0",
            Probe::Tcp {
                to: "10.244.1.2:7000",
                send: 4 << 20,
            },
        ),
        s(
            "pod → inet, TCP",
            "pod-0-0",
            Probe::Tcp {
                to: "203.0.113.10:7000",
                send: 0,
            },
        ),
        s(
            "pod → inet, UDP",
            "pod-0-1",
            Probe::Udp {
                to: "203.0.113.10:7000",
                size: 0,
            },
        ),
        s(
            "pod → inet, 4,000-byte UDP both ways",
            "pod-1-0",
            Probe::Udp {
                to: "203.0.113.10:7000",
                size: 4000,
            },
        ),
        s(
            "pod → inet, 4 MB TCP transfer",
            "pod-1-1",
            Probe::Tcp {
                to: "203.0.113.10:7000",
                send: 4 << 20,
            },
        ),
        Scenario {
            name: "pod → inet, ICMP",
            from: "pod-0-0",
            probe: Probe::Ping { to: INET, size: 56 },
            differs: Some(Differs {
                why: "Azure's load balancer is no routed hop (the fabric does not decrement the TTL); \
                      the classic lab's load balancer is a Linux router, which does",
                netplane: Outcome::Echo { ttl: 63 },
            }),
        },
        Scenario {
            name: "pod → inet, 6,000-byte ping",
            from: "pod-1-1",
            probe: Probe::Ping {
                to: INET,
                size: 6000,
            },
            differs: Some(Differs {
                why: "as above: the load balancer keeps the TTL",
                netplane: Outcome::Echo { ttl: 63 },
            }),
        },
        s(
            "pod → inet, TCP to a closed port",
            "pod-0-0",
            Probe::Tcp {
                to: "203.0.113.10:7009",
                send: 0,
            },
        ),
        s(
            "pod → inet, UDP to a closed port",
            "pod-0-0",
            Probe::Udp {
                to: "203.0.113.10:7009",
                size: 0,
            },
        ),
        s(
            "pod → pod, TCP to a closed port",
            "pod-0-0",
            Probe::Tcp {
                to: "10.244.1.2:7009",
                send: 0,
            },
        ),
        s(
            "pod → pod, UDP to a closed port",
            "pod-0-0",
            Probe::Udp {
                to: "10.244.1.2:7009",
                size: 0,
            },
        ),
        s(
            "pod → its own node's IP, TCP",
            "pod-0-0",
            Probe::Tcp {
                to: "10.224.0.4:7000",
                send: 0,
            },
        ),
        s(
            "pod → another node's IP, TCP",
            "pod-0-0",
            Probe::Tcp {
                to: "10.224.0.5:7000",
                send: 0,
            },
        ),
        s(
            "pod → another node's IP, UDP",
            "pod-0-0",
            Probe::Udp {
                to: "10.224.0.5:7000",
                size: 0,
            },
        ),
        Scenario {
            name: "node → a pod on that node, TCP",
            from: "node-0",
            probe: Probe::Tcp {
                to: "10.244.0.3:7000",
                send: 0,
            },
            differs: Some(Differs {
                why: "kubenet's node reaches its pods through cbr0 and the kernel picks cbr0's \
                      address (10.244.0.1) as the source; netplane has no bridge and no gateway \
                      address (docs/decisions.md §3), so the source is the node's own IP",
                netplane: answered("node-0", true, 0, None),
            }),
        },
        s(
            "node → a pod on another node, TCP",
            "node-0",
            Probe::Tcp {
                to: "10.244.1.2:7000",
                send: 0,
            },
        ),
        s(
            "node → a pod on another node, ICMP",
            "node-0",
            Probe::Ping {
                to: "10.244.1.2",
                size: 56,
            },
        ),
        s(
            "node → another node's listening port a pod's flow holds, TCP",
            "node-1",
            Probe::ToHeldPort {
                to: "10.224.0.4:7000",
                pod: "pod-0-0",
                held_to: "10.224.0.5:7000",
                udp: false,
            },
        ),
        s(
            "node → another node's listening port a pod's flow holds, UDP",
            "node-1",
            Probe::ToHeldPort {
                to: "10.224.0.4:7000",
                pod: "pod-0-0",
                held_to: "10.224.0.5:7000",
                udp: true,
            },
        ),
        s(
            "inet → a pod (not reachable from outside)",
            "inet",
            Probe::Tcp {
                to: "10.244.0.3:7000",
                send: 0,
            },
        ),
        s(
            "inet → a node (not reachable from outside)",
            "inet",
            Probe::Tcp {
                to: "10.224.0.4:7000",
                send: 0,
            },
        ),
        Scenario {
            name: "pod spoofing its neighbour's address",
            from: "pod-0-0",
            probe: Probe::SpoofedPing {
                to: "10.244.1.2",
                from_ip: "10.244.0.3",
            },
            differs: Some(Differs {
                why: "netplane drops a pod's packets from an address not its own (spec §7, \
                      `spoofed_source`); kubenet's bridge does not check sources, and the answer \
                      may reach the spoofer through the bridge's ARP",
                netplane: Outcome::Silence,
            }),
        },
    ]
}

/// Lab hosts' addresses to names (and the frontend).
fn names() -> BTreeMap<String, String> {
    let st: Value = serde_json::from_str(&ok(&["lab", "status", "--json"])).unwrap();
    let mut m: BTreeMap<String, String> = st["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["ip"].as_str().unwrap().to_string(),
                h["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    m.insert("198.51.100.10".into(), "frontend".into());
    m
}

fn classify_error(stderr: &str) -> Outcome {
    if stderr.contains("Connection refused") {
        Outcome::Refused
    } else if stderr.contains("unreachable") || stderr.contains("No route") {
        Outcome::Error("unreachable".into())
    } else if stderr.contains("reset") {
        Outcome::Error("reset".into())
    } else {
        Outcome::Silence
    }
}

fn whoami(from: &str, to: &str, extra: &[&str], names: &BTreeMap<String, String>) -> Outcome {
    let bin = netplane_bin();
    let mut argv = vec![
        bin.to_str().unwrap(),
        "whoami",
        "ask",
        to,
        "--json",
        "--timeout",
        "2",
    ];
    argv.extend_from_slice(extra);
    let out = exec(from, &argv);
    if !out.status.success() {
        return classify_error(&String::from_utf8_lossy(&out.stderr));
    }
    let a: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (seen, seen_port) = a["seen_as"].as_str().unwrap().rsplit_once(':').unwrap();
    let local_port = a["local"].as_str().unwrap().rsplit_once(':').unwrap().1;
    Outcome::Answered {
        seen: names.get(seen).cloned().unwrap_or_else(|| seen.to_string()),
        port_kept: seen_port == local_port,
        // A UDP answer is as large as the question; a TCP one's size only
        // says how long the address was.
        bytes: if a["proto"] == "udp" {
            a["bytes"].as_u64().unwrap() as usize
        } else {
            0
        },
        intact: a["intact"].as_bool(),
    }
}

fn ping_once(from: &str, args: &[&str]) -> Outcome {
    let mut argv = vec!["ping", "-n", "-c", "1", "-W", "2"];
    argv.extend_from_slice(args);
    let out = exec(from, &argv);
    let text = String::from_utf8_lossy(&out.stdout);
    if let Some(ttl) = text.split("ttl=").nth(1) {
        let ttl = ttl.split_whitespace().next().unwrap().parse().unwrap();
        return Outcome::Echo { ttl };
    }
    for kind in ["Unreachable", "Time to live exceeded", "Prohibited"] {
        if text.contains(kind) {
            return Outcome::Error(kind.to_lowercase());
        }
    }
    Outcome::Silence
}

fn run(s: &Scenario, names: &BTreeMap<String, String>) -> Outcome {
    match s.probe {
        Probe::Tcp { to, send } => {
            let send = send.to_string();
            let extra: &[&str] = if send == "0" { &[] } else { &["--send", &send] };
            whoami(s.from, to, extra, names)
        }
        Probe::Udp { to, size } => {
            let arg = size.to_string();
            match whoami(s.from, to, &["--udp", "--size", &arg], names) {
                // An unpadded answer's size only says how long the address
                // was (a random port may have fewer digits).
                Outcome::Answered {
                    seen,
                    port_kept,
                    intact,
                    ..
                } if size == 0 => Outcome::Answered {
                    seen,
                    port_kept,
                    bytes: 0,
                    intact,
                },
                o => o,
            }
        }
        Probe::Ping { to, size } => ping_once(s.from, &["-s", &size.to_string(), to]),
        Probe::Dig { name, tcp } => {
            let mut argv = vec!["dig", "+short", "+time=2", "+tries=1", "@10.0.0.10", name];
            if tcp {
                argv.push("+tcp");
            }
            let out = exec(s.from, &argv);
            let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
            match names.get(&answer) {
                Some(host) => Outcome::Resolved(host.clone()),
                None if answer.is_empty() => Outcome::Silence,
                None => Outcome::Resolved(answer),
            }
        }
        Probe::ToHeldPort {
            to,
            pod,
            held_to,
            udp,
        } => {
            // The pod asks node-1 from PORT; both data paths keep a free
            // source port, so its flow now holds the node's PORT too.
            let port = PORT.to_string();
            let mut extra = vec!["--from-port", &port];
            if udp {
                extra.push("--udp");
            }
            let held = whoami(pod, held_to, &extra, names);
            assert!(
                matches!(
                    held,
                    Outcome::Answered {
                        port_kept: true,
                        ..
                    }
                ),
                "{}: the pod's flow from port {PORT} did not keep it: {held:?}",
                s.name
            );
            match whoami(s.from, to, if udp { &["--udp"] } else { &[] }, names) {
                // The answer's size only says how long the address was.
                Outcome::Answered {
                    seen,
                    port_kept,
                    intact,
                    ..
                } => Outcome::Answered {
                    seen,
                    port_kept,
                    bytes: 0,
                    intact,
                },
                o => o,
            }
        }
        Probe::SpoofedPing { to, from_ip } => {
            let cidr = format!("{from_ip}/32");
            exec(s.from, &["ip", "addr", "add", &cidr, "dev", "eth0"]);
            let o = ping_once(s.from, &["-I", from_ip, to]);
            exec(s.from, &["ip", "addr", "del", &cidr, "dev", "eth0"]);
            o
        }
    }
}

/// TCP and UDP whoami servers on PORT of every host in SERVERS.
fn start_servers() -> Vec<Child> {
    let mut servers = Vec::new();
    for host in SERVERS {
        let listen = format!("0.0.0.0:{PORT}");
        for udp in [false, true] {
            let mut args = vec!["--listen", &listen, "--max", "1000", "--timeout", "300"];
            if udp {
                args.push("--udp");
            }
            servers.push(whoami_server_with(host, &args));
        }
    }
    servers
}

fn stop_servers(servers: Vec<Child>) {
    for mut s in servers {
        let _ = s.kill();
        let _ = s.wait();
    }
}

fn run_table(scenarios: &[Scenario]) -> Vec<Outcome> {
    let names = names();
    scenarios.iter().map(|s| run(s, &names)).collect()
}

/// Runs every scenario on the lab that is up, with servers on SERVERS.
fn run_all(scenarios: &[Scenario]) -> Vec<Outcome> {
    let servers = start_servers();
    let outcomes = run_table(scenarios);
    stop_servers(servers);
    outcomes
}

#[test]
fn netplane_and_classic_kubenet_agree_or_the_difference_is_explained() {
    if !privileged() {
        return;
    }
    let table = scenarios();
    assert!(table.len() >= 25);
    let netplane = {
        let (_turn, _guard) = lab_up();
        let before = counter(&stats("node-0"), "drop", "spoofed_source");
        let o = run_all(&table);
        assert!(
            counter(&stats("node-0"), "drop", "spoofed_source") > before,
            "the spoofed ping was dropped as spoofed_source"
        );
        o
    };
    let classic = {
        let (_turn, _guard) = lab_up_with(&["--datapath", "kubenet-classic"]);
        run_all(&table)
    };
    compare("lab", &table, &netplane, &classic);
}

/// The table of outcomes side by side; fails on any difference nobody
/// explained, and on docs/conformance.md's `section` table differing from
/// it (the table there is the suite's, never written by hand).
fn compare(section: &str, table: &[Scenario], netplane: &[Outcome], classic: &[Outcome]) {
    let mut report =
        String::from("| scenario | netplane | classic kubenet | |\n|---|---|---|---|\n");
    let mut failures = Vec::new();
    for ((s, n), k) in table.iter().zip(netplane).zip(classic) {
        let verdict = match &s.differs {
            None if n == k => "same".to_string(),
            None => {
                failures.push(format!(
                    "{}: netplane {n:?}, classic {k:?}, and nothing explains it",
                    s.name
                ));
                "UNEXPLAINED".into()
            }
            Some(d) if *n == d.netplane => format!("differs on purpose: {}", d.why),
            Some(d) => {
                failures.push(format!(
                    "{}: netplane {n:?}, expected {:?} ({})",
                    s.name, d.netplane, d.why
                ));
                "WRONG".into()
            }
        };
        report.push_str(&format!("| {} | {n:?} | {k:?} | {verdict} |\n", s.name));
    }
    eprintln!("{report}");
    assert!(failures.is_empty(), "{}\n\n{report}", failures.join("\n"));
    documented(section, &report);
}

/// The file whose tables the suite writes.
const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/conformance.md");

/// Checks that docs/conformance.md holds `report` between the section's
/// markers; with NETPLANE_RECORD_DOCS=1 writes it there instead.
fn documented(section: &str, report: &str) {
    let begin = format!("<!-- conformance table: {section} -->\n");
    let end = "<!-- end of table -->";
    let doc = std::fs::read_to_string(DOC).unwrap();
    let at = doc
        .find(&begin)
        .unwrap_or_else(|| panic!("docs/conformance.md has no {begin:?} marker"))
        + begin.len();
    let until = at + doc[at..].find(end).expect("the table's end marker");
    if std::env::var_os("NETPLANE_RECORD_DOCS").is_some_and(|v| v == "1") {
        std::fs::write(DOC, format!("{}{report}{}", &doc[..at], &doc[until..])).unwrap();
        return;
    }
    assert_eq!(
        doc[at..until],
        *report,
        "docs/conformance.md's {section} table is not this run's: record it with \
         NETPLANE_RECORD_DOCS=1 cargo test -p netplane-tests --test conformance"
    );
}

/// The Services both labs get through the API: one backend on node-1,
/// one on node-0 (pod-0-0's node), and one with none.
const SERVICES: [(&str, &str, &str); 3] = [
    ("remote", "10.0.1.1", "10.244.1.2"),
    ("local", "10.0.1.2", "10.244.0.3"),
    ("empty", "10.0.1.3", ""),
];

fn service_scenarios() -> Vec<Scenario> {
    let s = |name, from, probe| Scenario {
        name,
        from,
        probe,
        differs: None,
    };
    let tcp = |to| Probe::Tcp { to, send: 0 };
    let udp = |to| Probe::Udp { to, size: 0 };
    vec![
        s(
            "pod → service, backend on another node, TCP",
            "pod-0-0",
            tcp("10.0.1.1:80"),
        ),
        s(
            "pod → service, backend on another node, UDP",
            "pod-0-0",
            udp("10.0.1.1:80"),
        ),
        s(
            "pod → service, backend on another node, 1 MB transfer",
            "pod-0-0",
            Probe::Tcp {
                to: "10.0.1.1:80",
                send: 1 << 20,
            },
        ),
        s(
            "pod → service, backend on the same node, TCP",
            "pod-0-0",
            tcp("10.0.1.2:80"),
        ),
        s(
            "pod → service, backend on the same node, UDP",
            "pod-0-0",
            udp("10.0.1.2:80"),
        ),
        s(
            "pod → its own service (hairpin), TCP",
            "pod-0-1",
            tcp("10.0.1.2:80"),
        ),
        s(
            "pod → its own service (hairpin), UDP",
            "pod-0-1",
            udp("10.0.1.2:80"),
        ),
        s(
            "pod → service without endpoints, TCP",
            "pod-0-0",
            tcp("10.0.1.3:80"),
        ),
        s(
            "pod → service without endpoints, UDP",
            "pod-0-0",
            udp("10.0.1.3:80"),
        ),
        s("node → service, TCP", "node-0", tcp("10.0.1.1:80")),
        s("node → service, UDP", "node-0", udp("10.0.1.1:80")),
        s(
            "pod → DNS service, UDP",
            "pod-0-0",
            Probe::Dig {
                name: "pod-1-0.lab",
                tcp: false,
            },
        ),
        s(
            "pod → DNS service, TCP",
            "pod-0-0",
            Probe::Dig {
                name: "inet.lab",
                tcp: true,
            },
        ),
        s(
            "pod → DNS service, from the DNS pod's node",
            "pod-1-1",
            Probe::Dig {
                name: "node-0.lab",
                tcp: false,
            },
        ),
        s(
            "DNS pod → its own service (hairpin)",
            "dns",
            Probe::Dig {
                name: "pod-0-0.lab",
                tcp: false,
            },
        ),
    ]
}

/// Creates SERVICES through the lab's API server and waits until the
/// first one answers (kube-proxy or the agents have applied them).
fn publish_services() {
    with_api(false, |c| async move {
        for (name, ip, backend) in SERVICES {
            let ports = [("tcp", 80, "TCP", PORT), ("udp", 80, "UDP", PORT)];
            let endpoints: Vec<_> = match backend {
                "" => Vec::new(),
                b => {
                    let node = if b.starts_with("10.244.1.") {
                        "node-1"
                    } else {
                        "node-0"
                    };
                    vec![(b.parse().unwrap(), node, true)]
                }
            };
            netplane_lab::kube_services::publish(
                &c,
                "default",
                name,
                ip.parse().unwrap(),
                &ports,
                &endpoints,
            )
            .await?;
        }
        Ok(())
    });
}

#[test]
fn services_on_netplane_and_kube_proxy_agree() {
    if !privileged() {
        return;
    }
    let table = service_scenarios();
    let run_lab = |datapath: &str| {
        let (_turn, _guard) = lab_up_with(&["--datapath", datapath, "--source", "kubernetes"]);
        publish_services();
        let servers = start_servers();
        wait_until("the services applied", || {
            let names = BTreeMap::new();
            matches!(
                whoami("pod-0-0", "10.0.1.3:80", &[], &names),
                Outcome::Refused
            ) && matches!(
                whoami("pod-0-0", "10.0.1.1:80", &[], &names),
                Outcome::Answered { .. }
            )
        });
        let outcomes = run_table(&table);
        stop_servers(servers);
        outcomes
    };
    let netplane = run_lab("netplane");
    let classic = run_lab("kubenet-classic");
    compare("services", &table, &netplane, &classic);
}
