//! The lab from a test: run `netplane`, take the lab (one at a time),
//! exchange traffic, read counters.
use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
};

use serde_json::Value;

pub fn netplane_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NETPLANE_BIN") {
        return p.into();
    }
    // target/debug/deps/lab-HASH -> target/debug/netplane
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("netplane");
    assert!(
        bin.exists(),
        "{} missing: run `cargo build -p netplane-cli -p netplane-user --bins` (cargo xtask test does)",
        bin.display()
    );
    bin
}

pub fn np(args: &[&str]) -> Output {
    Command::new(netplane_bin())
        .args(args)
        .output()
        .expect("run netplane")
}

pub fn ok(args: &[&str]) -> String {
    let out = np(args);
    assert!(
        out.status.success(),
        "netplane {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn exec(host: &str, cmd: &[&str]) -> Output {
    let mut args = vec!["lab", "exec", host, "--"];
    args.extend_from_slice(cmd);
    np(&args)
}

pub fn stats(node: &str) -> Value {
    let v: Value = serde_json::from_str(&ok(&["stats", "--node", node, "--json"])).unwrap();
    v["nodes"][node].clone()
}

pub fn counter(stats: &Value, kind: &str, name: &str) -> u64 {
    let (list, key) = if kind == "drop" {
        ("drops", "reason")
    } else {
        ("paths", "path")
    };
    stats[list]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e[key] == name)
        .unwrap_or_else(|| panic!("no {kind} counter {name}"))["packets"]
        .as_u64()
        .unwrap()
}

/// Tears the lab down when the test ends, passed or failed.
pub struct LabGuard;
impl Drop for LabGuard {
    fn drop(&mut self) {
        let _ = np(&["lab", "down"]);
    }
}

pub fn np_namespaces() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("np-"))
        .map(String::from)
        .collect()
}

/// A whoami server in `host` for one client; returns once it listens.
pub fn whoami_server(host: &str) -> Child {
    whoami_server_with(host, &["--max", "1", "--timeout", "15"])
}

/// A whoami server in `host` with these `whoami serve` arguments; returns
/// once it listens.
pub fn whoami_server_with(host: &str, serve_args: &[&str]) -> Child {
    let bin = netplane_bin();
    let mut child = Command::new(&bin)
        .args([
            "lab",
            "exec",
            host,
            "--",
            bin.to_str().unwrap(),
            "whoami",
            "serve",
        ])
        .args(serve_args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("listening"), "server in {host}: {line:?}");
    child.stdout = Some(reader.into_inner());
    child
}

/// TCP from `client` to `server`; both sides must see the client's pod IP.
pub fn assert_tcp_preserves_source(client: &str, client_ip: &str, server: &str, server_ip: &str) {
    let srv = whoami_server(server);
    let bin = netplane_bin();
    let target = format!("{server_ip}:7000");
    let out = exec(
        client,
        &[bin.to_str().unwrap(), "whoami", "ask", &target, "--json"],
    );
    let server_out = srv.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{client} -> {server}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    let seen = answer["seen_as"].as_str().unwrap();
    assert!(
        seen.starts_with(&format!("{client_ip}:")),
        "{server} saw {seen}, not {client_ip}"
    );
    let printed = String::from_utf8_lossy(&server_out.stdout);
    assert!(
        printed.contains(&format!("<- {client_ip}:")),
        "{server} printed {printed}"
    );
}

pub fn ping(host: &str, args: &[&str]) -> Output {
    let mut cmd = vec!["ping", "-n", "-W", "1"];
    cmd.extend_from_slice(args);
    exec(host, &cmd)
}

/// One lab at a time: tests in this file take turns.
pub static LAB: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes the lab for one test: clean start, torn down at the end.
pub fn lab_up() -> (std::sync::MutexGuard<'static, ()>, LabGuard) {
    lab_up_with(&[])
}

/// Takes the lab with extra `lab up` arguments (a `--config FILE`, say).
pub fn lab_up_with(extra: &[&str]) -> (std::sync::MutexGuard<'static, ()>, LabGuard) {
    let turn = LAB.lock().unwrap_or_else(|e| e.into_inner());
    assert!(
        np_namespaces().is_empty(),
        "np- namespaces exist already: run `netplane lab down` first"
    );
    let guard = LabGuard;
    let mut args = vec!["lab", "up"];
    args.extend_from_slice(extra);
    ok(&args);
    (turn, guard)
}

/// Takes the lab's turn without bringing it up (the caller's commands do),
/// torn down at the end all the same.
pub fn lab_turn() -> (std::sync::MutexGuard<'static, ()>, LabGuard) {
    let turn = LAB.lock().unwrap_or_else(|e| e.into_inner());
    assert!(
        np_namespaces().is_empty(),
        "np- namespaces exist already: run `netplane lab down` first"
    );
    (turn, LabGuard)
}

/// Background traffic: a fast ping from one pod to another.
pub fn ping_in_background(from: &str, to: &str, count: u32) -> Child {
    Command::new(netplane_bin())
        .args([
            "lab",
            "exec",
            from,
            "--",
            "ping",
            "-n",
            "-i",
            "0.01",
            "-W",
            "1",
            "-c",
            &count.to_string(),
            to,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Background traffic: an iperf3 TCP stream of `secs` seconds (JSON out),
/// to an `iperf3 -s` already running on `to`.
pub fn iperf_stream(from: &str, to: &str, secs: u32) -> Child {
    Command::new(netplane_bin())
        .args(["lab", "exec", from, "--", "iperf3", "-c", to, "-t"])
        .arg(secs.to_string())
        .arg("-J")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The stream ended cleanly and every one-second interval moved bytes.
pub fn assert_stream_kept_moving(stream: Child, what: &str) {
    let out = stream.wait_with_output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).expect("iperf3 JSON");
    assert!(v["error"].is_null(), "{what}: iperf3: {}", v["error"]);
    for interval in v["intervals"].as_array().unwrap() {
        let bytes = interval["sum"]["bytes"].as_u64().unwrap();
        assert!(
            bytes > 0,
            "{what}: a one-second interval moved nothing: {interval}"
        );
    }
}

pub fn assert_no_loss(ping: Child, what: &str) {
    let out = ping.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let tail: Vec<&str> = text.lines().rev().take(3).collect();
    assert!(
        text.contains(" 0% packet loss"),
        "{what}: ping lost packets:\n{}",
        tail.join("\n")
    );
}

pub fn route_prefixes(node: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(&ok(&["routes", "--node", node, "--json"])).unwrap();
    v["nodes"][node]["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["address_prefix"].as_str().unwrap().to_string())
        .collect()
}

pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// `whoami ask --json` from a lab host; panics unless it was answered.
/// Returns the address (without the port) the server saw.
pub fn seen_from(host: &str, target: &str) -> String {
    let bin = netplane_bin();
    let out = exec(
        host,
        &[bin.to_str().unwrap(), "whoami", "ask", target, "--json"],
    );
    assert!(
        out.status.success(),
        "{host} -> {target}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    let seen = answer["seen_as"].as_str().unwrap();
    seen.rsplit_once(':').unwrap().0.to_string()
}

/// Runs `f` with a client of the lab's API server (admin, or the agents'
/// ServiceAccount), from inside the control plane's namespace.
pub fn with_api<T: Send, F: std::future::Future<Output = anyhow::Result<T>> + Send>(
    agent: bool,
    f: impl FnOnce(kube::Client) -> F + Send,
) -> T {
    use netplane_lab::{self as lab, control_plane};
    let state = lab::load_state().unwrap().expect("lab up");
    let cp = state.kubernetes.expect("lab up --source kubernetes");
    let kubeconfig = if agent {
        cp.agent_kubeconfig.clone()
    } else {
        cp.kubeconfig.clone()
    };
    control_plane::in_netns(&control_plane::netns(), async move {
        let client =
            netplane::source::kubernetes::client(Some(std::path::Path::new(&kubeconfig))).await?;
        f(client).await
    })
    .unwrap()
}

/// The PID of `node`'s agent, as `lab status --json` gives it.
pub fn agent_pid(node: &str) -> u64 {
    let st: Value = serde_json::from_str(&ok(&["lab", "status", "--json"])).unwrap();
    st["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["node"] == node)
        .unwrap_or_else(|| panic!("no agent {node} in {st}"))["pid"]
        .as_u64()
        .unwrap()
}

/// Stops node-0's lab agent (SIGTERM, waits for it to go) and starts
/// another in its namespace on `config` with `extra` arguments; returns it
/// once its status file names it. The caller ends it with SIGTERM (by its
/// PID); if the test fails first, dropping it does.
pub fn replace_node0_agent(config: &str, extra: &[&str]) -> OwnAgent {
    let pid = agent_pid("node-0");
    terminate(pid);
    wait_until("the lab's agent to stop", || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z"))
    });
    let agent = Command::new(netplane_bin())
        .args(["agent", "--config", config, "--node", "node-0"])
        .args(["--netns", "np-node-0"])
        .args(extra)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let agent_pid = format!("\"pid\": {}", agent.id());
    wait_until("the new agent", || {
        std::fs::read_to_string("/run/netplane/nodes/node-0/agent.json")
            .is_ok_and(|s| s.contains(&agent_pid))
    });
    OwnAgent(agent)
}

/// An agent a test started; stopped on drop if it still runs.
pub struct OwnAgent(pub Child);

impl Drop for OwnAgent {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            terminate(u64::from(self.0.id()));
            let _ = self.0.wait();
        }
    }
}

/// Sends SIGTERM to a process this test started (or the lab's agent).
pub fn terminate(pid: u64) {
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
}
