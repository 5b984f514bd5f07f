//! `cargo xtask demo`: the lab up, and pod traffic that shows kubenet's
//! routing without NAT, each step with the command a user can rerun.
use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::netplane_bin;

const SERVER_PORT: &str = "7000";

pub fn run() -> Result<()> {
    let np = netplane_bin();
    let np = np.to_str().context("utf-8 path")?;
    fresh_lab(np, &["--ui", &page_listen()])?;

    section("1. Same node: pod-0-0 (10.244.0.2) -> pod-0-1 (10.244.0.3), TCP");
    exchange(np, "pod-0-0", "pod-0-1", "10.244.0.3")?;
    section("2. Across nodes: pod-0-0 (node-0) -> pod-1-0 (10.244.1.2 on node-1), TCP");
    exchange(np, "pod-0-0", "pod-1-0", "10.244.1.2")?;
    section("3. The route it took: node-0, then node-1 (the UDR next hop), then the pod");
    show(
        np,
        "pod-0-0",
        &["traceroute", "-n", "-q1", "-w1", "10.244.1.2"],
    )?;
    section("4. On the wire between the nodes (node-1's eth0): pod addresses, no NAT");
    capture_between_nodes(np)?;
    section("5. A pod lying about its address: pod-0-0 sends as 10.244.0.99");
    show(
        np,
        "pod-0-0",
        &["ip", "addr", "add", "10.244.0.99/32", "dev", "eth0"],
    )?;
    let spoofed = show(
        np,
        "pod-0-0",
        &["ping", "-c2", "-W1", "-I", "10.244.0.99", "10.244.1.2"],
    );
    show(
        np,
        "pod-0-0",
        &["ip", "addr", "del", "10.244.0.99/32", "dev", "eth0"],
    )?;
    if spoofed.is_ok() {
        bail!("the spoofed ping got an answer: anti-spoofing failed");
    }
    println!("   (no reply) the data path dropped it. node-0's counters that moved:");
    let out = Command::new(np)
        .args(["stats", "--node", "node-0", "--json"])
        .output()?;
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).context("stats --json")?;
    let node0 = &stats["nodes"]["node-0"];
    for p in node0["paths"].as_array().into_iter().flatten() {
        if p["packets"].as_u64() > Some(0) {
            println!(
                "   path {:<20} {:>6} packets",
                p["path"].as_str().unwrap_or("?"),
                p["packets"]
            );
        }
    }
    for d in node0["drops"].as_array().into_iter().flatten() {
        if d["packets"].as_u64() > Some(0) {
            println!(
                "   drop {:<20} {:>6} packets (reason {})",
                d["reason"].as_str().unwrap_or("?"),
                d["packets"],
                d["code"]
            );
        }
    }

    section("6. Egress: pod-0-0 -> the internet host 203.0.113.10, translated twice");
    println!("   node-0 masquerades the pod as its node IP; the load balancer SNATs the node IP");
    println!("   to its frontend IP, using node-0's own port block.");
    let capture = start_capture(np, "lb", "eth0", "host 203.0.113.10", 4)?;
    exchange(np, "pod-0-0", "inet", "203.0.113.10")?;
    println!("   what the load balancer's inside (the VNet) carried:");
    print!("{}", indent(&finish_capture(capture)?));
    println!("$ netplane nat");
    print!(
        "{}",
        indent(&String::from_utf8_lossy(
            &Command::new(np).arg("nat").output()?.stdout
        ))
    );
    println!("$ netplane ports --node lb");
    let ports = Command::new(np).args(["ports", "--node", "lb"]).output()?;
    print!("{}", indent(&String::from_utf8_lossy(&ports.stdout)));

    section("7. Why it went that way: the real programs on a crafted packet, nothing changed");
    println!("$ netplane trace pod-0-0 inet:7000/tcp");
    let t = Command::new(np)
        .args(["trace", "pod-0-0", "inet:7000/tcp"])
        .output()?;
    print!("{}", indent(&String::from_utf8_lossy(&t.stdout)));

    println!(
        "\nThe lab stays up. Explore it:\n  \
         {np} lab status\n  \
         {np} lab exec pod-0-0 -- ping -c3 10.244.1.3\n  \
         {np} lab exec node-0 -- tcpdump -ni eth0   # pod IPs on the wire between nodes, no NAT\n  \
         {np} stats\n  \
         {np} nat; {np} ports   # translations and SNAT port blocks\n  \
         {np} trace pod-0-1 pod-1-1:80/tcp   # any packet's walk, hop by hop\n\
         Tear it down:\n  \
         {np} lab down"
    );
    print_page_url(np)
}

/// `cargo xtask demo --kubernetes`: the lab with a real API server; nodes
/// listed by the API, the routes the agents made from them, a Node added
/// and removed through the API, and DNS through the kube-dns Service.
pub fn run_kubernetes() -> Result<()> {
    let np = netplane_bin();
    let np = np.to_str().context("utf-8 path")?;
    fresh_lab(np, &["--source", "kubernetes", "--ui", &page_listen()])?;
    let status = lab_status(np)?;
    let k = &status["kubernetes"];
    let api = Api {
        server: k["server"].as_str().context("server")?.to_string(),
        netns: k["netns"].as_str().context("netns")?.to_string(),
        kubeconfig: k["kubeconfig"].as_str().context("kubeconfig")?.to_string(),
    };

    section("1. The Node objects, as kubenet's route controller reads them (GET /api/v1/nodes)");
    print_nodes(&api.call("GET", "/api/v1/nodes", None)?);
    section("2. The routes node-0's agent made from them (one UDR per node)");
    print!("{}", indent(&run_np(np, &["routes", "--node", "node-0"])?));
    section(
        "3. A third node joins: POST /api/v1/nodes (spec.podCIDR 10.244.2.0/24, InternalIP 10.224.0.6)",
    );
    let node = serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "node-2"},
        "spec": {"podCIDR": "10.244.2.0/24", "podCIDRs": ["10.244.2.0/24"]},
        "status": {"addresses": [{"type": "InternalIP", "address": "10.224.0.6"}]},
    });
    api.call("POST", "/api/v1/nodes", Some(&node))?;
    std::thread::sleep(Duration::from_millis(300));
    print!("{}", indent(&run_np(np, &["routes", "--node", "node-0"])?));
    section("4. It leaves: DELETE /api/v1/nodes/node-2");
    api.call("DELETE", "/api/v1/nodes/node-2", None)?;
    std::thread::sleep(Duration::from_millis(300));
    print!("{}", indent(&run_np(np, &["routes", "--node", "node-0"])?));
    section("5. Pods across nodes, routed by what the API said: pod-0-0 -> pod-1-0");
    exchange(np, "pod-0-0", "pod-1-0", "10.244.1.2")?;
    section(
        "6. Services: kube-dns (10.0.0.10) in front of the DNS pod, from the API's Service and EndpointSlice",
    );
    print!(
        "{}",
        indent(&run_np(np, &["services", "--node", "node-0"])?)
    );
    section("7. A pod resolves a name through the DNS Service (the DNS pod is on node-1)");
    show(
        np,
        "pod-0-0",
        &["dig", "+short", "@10.0.0.10", "pod-1-0.lab"],
    )?;
    section(
        "8. Its walk: DNAT on node-0 to the backend on node-1, the reply's source restored on the way back",
    );
    print!(
        "{}",
        indent(&run_np(np, &["trace", "pod-0-0", "10.0.0.10:53/udp"])?)
    );
    section("9. Service traffic never leaves through the load balancer");
    print!("{}", indent(&run_np(np, &["nat", "--node", "lb"])?));
    println!(
        "\nThe lab stays up, with its API server at {} (from the lab's namespaces):\n  \
         ip netns exec {} curl --cacert /run/netplane/lab/kubernetes/ca.crt -H \"Authorization: Bearer $TOKEN\" {}/api/v1/nodes\n  \
         (TOKEN: the admin token in {})\n  \
         {np} lab apiserver stop; {np} routes   # the data path keeps the last known nodes\n\
         Tear it down:\n  \
         {np} lab down",
        api.server, api.netns, api.server, api.kubeconfig
    );
    print_page_url(np)
}

/// Where the page listens: netplane ui's default, or any free port when
/// something else holds it.
fn page_listen() -> String {
    let default = "127.0.0.1:8080";
    if std::net::TcpListener::bind(default).is_ok() {
        default.into()
    } else {
        "127.0.0.1:0".into()
    }
}

/// `netplane lab status --json`.
fn lab_status(np: &str) -> Result<serde_json::Value> {
    let out = Command::new(np)
        .args(["lab", "status", "--json"])
        .output()?;
    serde_json::from_slice(&out.stdout).context("lab status --json")
}

/// The demo's last line: the live page of the lab it leaves up.
fn print_page_url(np: &str) -> Result<()> {
    let status = lab_status(np)?;
    let url = status["ui"]
        .as_str()
        .context("lab status lists no web page")?;
    println!("\nSee it live (topology, UDR, SNAT ports, flows, traces): {url}");
    Ok(())
}

/// `netplane lab up ARGS` on a clean slate (a lab already up is taken
/// down first).
fn fresh_lab(np: &str, args: &[&str]) -> Result<()> {
    if crate::lab_is_up() {
        eprintln!("== a lab is already up: recreating it");
        crate::cmd(np, &["lab", "down"])?;
    }
    eprintln!("== netplane lab up {}", args.join(" "));
    crate::cmd(np, &[&["lab", "up"], args].concat())
}

/// The lab's API server, called with curl from inside its namespace as
/// the admin (the root namespace has no address on the lab's segment).
struct Api {
    server: String,
    netns: String,
    kubeconfig: String,
}

impl Api {
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value> {
        let text = std::fs::read_to_string(&self.kubeconfig)?;
        let token = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("token: "))
            .context("no token in the kubeconfig")?;
        let ca = std::path::Path::new(&self.kubeconfig).with_file_name("ca.crt");
        let url = format!("{}{path}", self.server);
        let auth = format!("Authorization: Bearer {token}");
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.netns,
            "curl",
            "-sS",
            // kube-apiserver 1.20 built with Go 1.19 panics deriving a field
            // manager from curl's user agent (its vendored reflect2 predates
            // Go 1.18); naming the manager avoids that path.
            "-A",
            "netplane-demo",
            "--fail-with-body",
            "-X",
            method,
        ])
        .arg("--cacert")
        .arg(&ca)
        .args(["-H", &auth, "-H", "Content-Type: application/json"]);
        if let Some(b) = body {
            cmd.args(["-d", &b.to_string()]);
        }
        println!("$ curl -X {method} {url}");
        let out = cmd.arg(&url).output()?;
        if !out.status.success() {
            bail!(
                "{method} {path}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }
}

fn print_nodes(list: &serde_json::Value) {
    println!("   NAME       INTERNAL-IP      POD-CIDR");
    for n in list["items"].as_array().into_iter().flatten() {
        let ip = n["status"]["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["type"] == "InternalIP")
            .and_then(|a| a["address"].as_str())
            .unwrap_or("-");
        println!(
            "   {:<10} {:<16} {}",
            n["metadata"]["name"].as_str().unwrap_or("-"),
            ip,
            n["spec"]["podCIDR"].as_str().unwrap_or("-")
        );
    }
}

fn run_np(np: &str, args: &[&str]) -> Result<String> {
    println!("$ netplane {}", args.join(" "));
    let out = Command::new(np).args(args).output()?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// tcpdump on node-1's uplink while pod-0-0 pings pod-1-0.
fn capture_between_nodes(np: &str) -> Result<()> {
    // Two packets: the echo request and its reply.
    let dump = start_capture(np, "node-1", "eth0", "icmp", 2)?;
    let _ = Command::new(np)
        .args([
            "lab",
            "exec",
            "pod-0-0",
            "--",
            "ping",
            "-c1",
            "-W1",
            "10.244.1.2",
        ])
        .stdout(Stdio::null())
        .status();
    print!("{}", indent(&finish_capture(dump)?));
    Ok(())
}

/// tcpdump (at most `count` packets, 5 seconds) on a lab host's interface.
fn start_capture(np: &str, host: &str, dev: &str, filter: &str, count: u32) -> Result<Child> {
    let count = count.to_string();
    println!("$ netplane lab exec {host} -- tcpdump -ni {dev} -c {count} -l {filter}");
    let dump = Command::new("timeout")
        .args([
            "5", np, "lab", "exec", host, "--", "tcpdump", "-ni", dev, "-c", &count, "-l",
        ])
        .args(filter.split(' '))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(700));
    Ok(dump)
}

fn finish_capture(dump: Child) -> Result<String> {
    Ok(String::from_utf8_lossy(&dump.wait_with_output()?.stdout).into_owned())
}

fn section(title: &str) {
    println!("\n-- {title}");
}

/// `$ netplane lab exec HOST -- ARGS`, printed and run.
fn show(np: &str, host: &str, args: &[&str]) -> Result<()> {
    println!("$ netplane lab exec {host} -- {}", args.join(" "));
    let out = Command::new(np)
        .args(["lab", "exec", host, "--"])
        .args(args)
        .output()?;
    print!("{}", indent(&String::from_utf8_lossy(&out.stdout)));
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("   {l}\n")).collect()
}

/// A whoami server in `server_host` answers one client in `client_host`;
/// both sides print the addresses they saw.
fn exchange(np: &str, client_host: &str, server_host: &str, server_ip: &str) -> Result<()> {
    let server = start_server(np, server_host)?;
    let target = format!("{server_ip}:{SERVER_PORT}");
    let result = show(np, client_host, &[np, "whoami", "ask", &target]);
    let out = server.wait_with_output()?;
    println!("   {server_host}'s server printed:");
    print!("{}", indent(&String::from_utf8_lossy(&out.stdout)));
    result
}

fn start_server(np: &str, host: &str) -> Result<Child> {
    let listen = format!("0.0.0.0:{SERVER_PORT}");
    let mut child = Command::new(np)
        .args([
            "lab", "exec", host, "--", np, "whoami", "serve", "--listen", &listen,
        ])
        .args(["--max", "1", "--timeout", "10"])
        .stdout(Stdio::piped())
        .spawn()?;
    // Wait for "listening on ..." so the client never races the bind.
    let stdout = child.stdout.take().expect("piped");
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if !line.starts_with("listening") {
        bail!("whoami server in {host} did not start: {line}");
    }
    std::thread::sleep(Duration::from_millis(20));
    // Hand the rest of stdout back to wait_with_output.
    child.stdout = Some(reader.into_inner());
    Ok(child)
}
