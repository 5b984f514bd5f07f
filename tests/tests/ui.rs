//! The web page (`netplane ui`, `lab up --ui`) against the running lab:
//! every JSON endpoint with the CLI's shapes and its bad requests, the live
//! event stream, an agent going down and coming back, and the page itself
//! in headless Chromium driven over WebDriver (chromedriver).
use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use netplane_tests::{labkit::*, privileged};
use serde_json::Value;

/// GET `url` with curl: the status code and the JSON body.
fn get(url: &str) -> (u16, Value) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "30", "-w", "\n%{http_code}", url])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, code) = text.rsplit_once('\n').expect("curl wrote the status");
    let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("{url}: {e}: {body:?}"));
    (code.trim().parse().expect("a status code"), json)
}

fn get_ok(url: &str) -> Value {
    let (code, v) = get(url);
    assert_eq!(code, 200, "{url}: {v}");
    v
}

/// The page's base URL, as `lab status --json` lists it.
fn page_url() -> String {
    let st: Value = serde_json::from_str(&ok(&["lab", "status", "--json"])).unwrap();
    st["ui"]
        .as_str()
        .expect("lab status lists the page's URL")
        .trim_end_matches('/')
        .to_string()
}

/// The names of the lab's hosts with `role`.
fn hosts(role: &str) -> Vec<String> {
    let st: Value = serde_json::from_str(&ok(&["lab", "status", "--json"])).unwrap();
    st["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["role"] == role)
        .map(|h| h["name"].as_str().unwrap().to_string())
        .collect()
}

fn cli_json(args: &[&str]) -> Value {
    serde_json::from_str(&ok(args)).unwrap()
}

/// The first events of the live stream, read for `secs`.
fn events_for(base: &str, secs: u32) -> Vec<(String, Value)> {
    let out = Command::new("curl")
        .args(["-sN", "--max-time", &secs.to_string()])
        .arg(format!("{base}/api/events"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut events = Vec::new();
    let mut name = String::new();
    for line in text.lines() {
        if let Some(n) = line.strip_prefix("event: ") {
            name = n.to_string();
        } else if let Some(d) = line.strip_prefix("data: ") {
            events.push((name.clone(), serde_json::from_str(d).unwrap()));
        }
    }
    events
}

#[test]
fn the_api_serves_the_clis_views_and_says_what_was_wrong() {
    if !privileged() {
        return;
    }
    let (_turn, _guard) = lab_up_with(&["--ui", "127.0.0.1:0"]);
    let base = page_url();

    // The page and its assets come from the binary.
    let html = Command::new("curl").args(["-s", &base]).output().unwrap();
    assert!(String::from_utf8_lossy(&html.stdout).contains("<script src=\"/app.js\">"));

    // Every endpoint the index lists answers.
    let index = get_ok(&format!("{base}/api"));
    let listed: Vec<&str> = index["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert!(listed.len() >= 9, "{index}");

    // The topology holds every node and pod of the lab, agents running.
    let topo = get_ok(&format!("{base}/api/topology"));
    let nodes: Vec<&str> = topo["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, hosts("node"), "{topo}");
    let pods: Vec<&str> = topo["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|n| n["pods"].as_array().unwrap())
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(pods, hosts("pod"), "{topo}");
    assert_eq!(topo["outbound"]["name"], "lb");
    assert_eq!(topo["outbound"]["frontends"][0], "198.51.100.10");
    assert_eq!(topo["inet"], "203.0.113.10");
    assert!(
        topo["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["agent"]["running"] == true)
    );

    // The same shapes as the CLI's --json (nothing moves in an idle lab).
    for (path, args) in [
        ("routes", vec!["routes", "--json"]),
        ("ports", vec!["ports", "--json"]),
        ("stats", vec!["stats", "--json"]),
        ("pods", vec!["pods", "--json"]),
        (
            "routes?node=node-1",
            vec!["routes", "--node", "node-1", "--json"],
        ),
        ("ports?node=lb", vec!["ports", "--node", "lb", "--json"]),
    ] {
        let (mut web, mut cli) = (get_ok(&format!("{base}/api/{path}")), cli_json(&args));
        if path == "stats" {
            // The agents' RSS moves between two reads: present, then set aside.
            for v in [&mut web, &mut cli] {
                for (agent, s) in v["nodes"].as_object_mut().unwrap() {
                    let rss = s["memory"]["agent_rss_bytes"].take();
                    assert!(rss.as_u64().unwrap_or(0) > 0, "{agent}'s RSS: {rss}");
                    assert!(s["memory"]["kernel"]["bytes"].as_u64().unwrap() > 0);
                }
            }
        }
        assert_eq!(web, cli, "/api/{path}");
    }
    let nat = get_ok(&format!("{base}/api/nat"));
    assert_eq!(
        nat["agents"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["lb", "node-0", "node-1"]
    );
    let status = get_ok(&format!("{base}/api/status"));
    assert_eq!(status["ui"].as_str().unwrap().trim_end_matches('/'), base);

    // A trace walks the same hops as the CLI's, with both translations.
    let web = get_ok(&format!("{base}/api/trace?from=pod-0-0&to=inet:7000/tcp"));
    let cli = cli_json(&["trace", "pod-0-0", "inet:7000/tcp", "--json"]);
    let hops = |t: &Value, walk: &str| -> Vec<(String, String)> {
        t[walk]["hops"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| (h["host"].to_string(), h["program"].to_string()))
            .collect()
    };
    assert_eq!(hops(&web, "forward"), hops(&cli, "forward"));
    assert_eq!(hops(&web, "reply"), hops(&cli, "reply"));
    assert_eq!(web["forward"]["starts_at"], "pod-0-0");
    assert_eq!(web["forward"]["ends_at"], "inet");
    let out0 = web["forward"]["hops"][0]["packet_out"].as_str().unwrap();
    let out1 = web["forward"]["hops"][1]["packet_out"].as_str().unwrap();
    assert!(out0.starts_with("tcp 10.224.0.4:"), "{web}");
    assert!(out1.starts_with("tcp 198.51.100.10:"), "{web}");
    assert_eq!(web["reply"]["ends_at"], "pod-0-0", "{web}");

    // Bad requests: a 4xx with a JSON error that names the problem.
    for (path, code, says) in [
        ("trace?from=pod-9-9&to=inet", 404, "no pod \"pod-9-9\""),
        ("trace?from=node-0&to=inet", 400, "node-0 is not a pod"),
        ("trace?from=pod-0-0&to=10.1.2", 400, "to: 10.1.2 is neither"),
        ("trace?from=pod-0-0&to=inet:http/tcp", 400, "port http"),
        ("trace?from=pod-0-0&to=inet:80/sctp", 400, "protocol sctp"),
        (
            "trace?from=pod-0-0&to=inet&source_ip=10.0.0.300",
            400,
            "source_ip",
        ),
        ("trace?from=pod-0-0", 400, "missing field `to`"),
        ("ports?node=node-7", 404, "no agent \"node-7\""),
        ("stats?nodes=node-0", 400, "unknown field `nodes`"),
        ("pods?node=lb", 404, "no node \"lb\""),
        ("flows?last=many", 400, "last"),
        ("flows?last=100000", 400, "at most 1000"),
        ("nothing-here", 404, "GET /api lists them"),
    ] {
        let (got, body) = get(&format!("{base}/api/{path}"));
        assert_eq!(got, code, "/api/{path}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(says),
            "/api/{path}: {error:?} lacks {says:?}"
        );
    }

    // The live stream: the topology, then port use and counters, each
    // sample within a second.
    let events = events_for(&base, 3);
    let count = |name: &str| events.iter().filter(|(n, _)| n == name).count();
    assert_eq!(count("topology"), 1, "{events:?}");
    assert!(count("ports") >= 3, "{events:?}");
    assert!(count("stats") >= 3, "{events:?}");
    let (_, ports) = events.iter().find(|(n, _)| n == "ports").unwrap();
    assert_eq!(ports["agents"], cli_json(&["ports", "--json"])["agents"]);

    // Flow events reach the stream: a ping to inet is a new translated flow.
    let stream = Command::new("curl")
        .args(["-sN", "--max-time", "4"])
        .arg(format!("{base}/api/events"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    assert!(ping("pod-1-0", &["-c1", "203.0.113.10"]).status.success());
    let out = stream.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| l.starts_with("data: ")
            && l.contains("\"translation\"")
            && l.contains("10.244.1.2")),
        "no translation event for pod-1-0's ping in:\n{text}"
    );
    // ... and /api/flows, filtered to node-1, holds it too.
    let flows = get_ok(&format!("{base}/api/flows?node=node-1&last=20"));
    let events = flows["events"].as_array().unwrap();
    assert!(events.iter().all(|e| e["agent"] == "node-1"), "{flows}");
    assert!(
        events.iter().any(|e| e["event"] == "translation"
            && e["src"].as_str().unwrap_or("").starts_with("10.244.1.2")),
        "{flows}"
    );

    // A pod added through the CNI plugin appears on the page, and goes
    // when it is deleted.
    let state = netplane_lab::load_state().unwrap().expect("lab up");
    let conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "netplane", "type": "netplane-cni",
        "cluster": state.cluster_file, "node": "node-0",
    });
    let plugin = netplane_bin().with_file_name("netplane-cni");
    assert!(
        Command::new("ip")
            .args(["netns", "add", "np-uitest"])
            .status()
            .unwrap()
            .success()
    );
    let cni = |command: &str| {
        netplane_lab::run_cni(
            &plugin,
            "node-0",
            command,
            "uitest",
            "/run/netns/np-uitest",
            &conf,
        )
        .unwrap()
    };
    cni("ADD");
    let pod_names = || -> Vec<String> {
        let (_, t) = events_for(&base, 2)
            .into_iter()
            .rfind(|(n, _)| n == "topology")
            .expect("a topology event");
        t["nodes"][0]["pods"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(pod_names().contains(&"uitest".to_string()));
    cni("DEL");
    assert!(!pod_names().contains(&"uitest".to_string()));
    let _ = Command::new("ip")
        .args(["netns", "del", "np-uitest"])
        .status();

    // An agent killed: the page says so and keeps serving its pins; the
    // restarted agent is seen running again.
    let pid = agent_pid("node-1");
    // SAFETY: kill(2) on the lab agent's PID, which lab status gave.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    let node1_running =
        || get_ok(&format!("{base}/api/topology"))["nodes"][1]["agent"]["running"].as_bool();
    wait_until("the page to see node-1's agent down", || {
        node1_running() == Some(false)
    });
    // The stream pushed the change too (its latest topology says so).
    let events = events_for(&base, 2);
    let (_, topo) = events.iter().rfind(|(n, _)| n == "topology").unwrap();
    assert_eq!(topo["nodes"][1]["agent"]["running"], false, "{topo}");
    assert!(get_ok(&format!("{base}/api/ports?node=node-1"))["agents"]["node-1"].is_array());
    ok(&["lab", "agent-restart", "node-1"]);
    wait_until("the page to see node-1's agent back", || {
        node1_running() == Some(true)
    });
    assert!(ping("pod-0-0", &["-c1", "10.244.1.2"]).status.success());
}

#[test]
fn netplane_ui_says_where_it_listens_and_refuses_a_taken_port() {
    let mut first = Reap(
        Command::new(netplane_bin())
            .args(["ui", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(first.0.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let url = line
        .strip_prefix("netplane ui listening on ")
        .unwrap_or_else(|| panic!("{line:?}"))
        .trim();
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    // Agents or not (another test's lab may be up), it answers: their
    // ports, or a 503 that says none runs.
    let (code, body) = get(&format!("{url}api/ports"));
    match code {
        200 => assert!(body["agents"].is_object(), "{body}"),
        503 => assert!(
            body["error"].as_str().unwrap().contains("no agent"),
            "{body}"
        ),
        _ => panic!("{code}: {body}"),
    }
    let second = Command::new(netplane_bin())
        .args(["ui", "--listen", &addr])
        .output()
        .unwrap();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains(&format!("listening on {addr}")), "{err}");
    let bad = np(&["ui", "--listen", "localhost:eighty"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--listen"));
}

/// Ends a process this test started, however the test ends.
struct Reap(Child);
impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---- The page in a real browser ----

/// Where the browser test's screenshots go: docs/ui with
/// NETPLANE_UI_SCREENSHOTS=1 (to refresh the docs), else target/.
fn screenshot_dir() -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = if std::env::var_os("NETPLANE_UI_SCREENSHOTS").is_some() {
        root.join("docs/ui")
    } else {
        root.join("target/ui-screenshots")
    };
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// chromedriver on a free port, ended by PID when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (cargo xtask setup installs chromium-driver)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(100));
        }
        Driver { child, port }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_page_draws_the_lab_fills_port_bars_traces_and_speaks_japanese() {
    if !privileged() {
        return;
    }
    // A 64-port block per node at the load balancer, as in lesson 5.
    let file = std::env::temp_dir().join(format!("netplane-ui-{}.toml", std::process::id()));
    let text = netplane::config::cluster::DEFAULT_CLUSTER.replacen(
        "# allocated_outbound_ports = 1024",
        "allocated_outbound_ports = 64",
        1,
    );
    assert!(text.contains("allocated_outbound_ports = 64"));
    std::fs::write(&file, text).unwrap();
    let (_turn, _guard) = lab_up_with(&["--config", file.to_str().unwrap(), "--ui", "127.0.0.1:0"]);
    let base = page_url();
    let driver = Driver::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(browse(driver.port, &base)).unwrap();
}

async fn browse(driver_port: u16, base: &str) -> anyhow::Result<()> {
    use fantoccini::ClientBuilder;
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                     "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync",
                     "--window-size=1400,1000"],
        }),
    );
    let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{driver_port}"))
        .await?;
    let result = page_checks(&c, base).await;
    c.close().await?;
    result
}

/// Polls the page with `script` (returning a value) until `ok` holds.
async fn wait_for(
    c: &fantoccini::Client,
    what: &str,
    script: &str,
    ok: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = c.execute(script, vec![]).await?;
        if ok(&v) {
            return Ok(v);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "timed out waiting for {what}: last {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn screenshot(c: &fantoccini::Client, name: &str, section: &str) -> anyhow::Result<()> {
    c.execute(
        &format!("document.getElementById('{section}').scrollIntoView(); return true;"),
        vec![],
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(screenshot_dir().join(name), c.screenshot().await?)?;
    Ok(())
}

async fn page_checks(c: &fantoccini::Client, base: &str) -> anyhow::Result<()> {
    use fantoccini::Locator;
    c.goto(base).await?;

    // Every node and pod of the lab is drawn.
    let mut names = hosts("node");
    names.extend(hosts("pod"));
    names.extend(["lb".to_string(), "inet".to_string()]);
    let want = serde_json::to_string(&names)?;
    wait_for(
        c,
        "every host drawn",
        &format!("return {want}.every(n => document.getElementById('host-' + n) !== null);"),
        |v| v == &Value::Bool(true),
    )
    .await?;

    // A trace from a pod to inet, drawn over the diagram: both translations
    // with the right addresses, and the reply.
    c.find(Locator::Id("trace-from"))
        .await?
        .select_by_value("pod-0-0")
        .await?;
    let to = c.find(Locator::Id("trace-to")).await?;
    to.clear().await?;
    to.send_keys("inet:7000/tcp").await?;
    c.find(Locator::Id("trace-go")).await?.click().await?;
    let walk = wait_for(
        c,
        "the forward walk drawn",
        "const w = document.querySelector('.walk-forward'); return w ? w.dataset.hosts : null;",
        |v| v.is_string(),
    )
    .await?;
    assert_eq!(walk, "pod-0-0 node-0 lb inet");
    let reply = c
        .execute(
            "return document.querySelector('.walk-reply').dataset.hosts;",
            vec![],
        )
        .await?;
    assert_eq!(reply, "inet lb node-0 pod-0-0");
    let listed = c.find(Locator::Id("trace-result")).await?.text().await?;
    for seen in [
        "tcp 10.244.0.2:40000 -> 203.0.113.10:7000",
        "tcp 10.224.0.4:40000 -> 203.0.113.10:7000",
        "tcp 198.51.100.10:",
        "masquerade: source -> 10.224.0.4:40000",
        "outbound rule: source -> 198.51.100.10:",
    ] {
        assert!(listed.contains(seen), "the trace lacks {seen:?}:\n{listed}");
    }
    screenshot(c, "trace.png", "topology-section").await?;

    // Japanese labels, and back.
    c.find(Locator::Id("lang")).await?.click().await?;
    let h2 = c
        .execute(
            "return [document.documentElement.lang, document.querySelector('#topology-section h2').textContent, document.querySelector('#ports-section h2').textContent];",
            vec![],
        )
        .await?;
    assert_eq!(h2, serde_json::json!(["ja", "トポロジー", "SNAT ポート"]));
    screenshot(c, "japanese.png", "topology-section").await?;
    c.find(Locator::Id("lang")).await?.click().await?;
    let h2 = c
        .execute(
            "return document.querySelector('#topology-section h2').textContent;",
            vec![],
        )
        .await?;
    assert_eq!(h2, "Topology");

    // A bad target: the page shows the server's error.
    to.clear().await?;
    to.send_keys("inet:80/sctp").await?;
    c.find(Locator::Id("trace-go")).await?.click().await?;
    let err = wait_for(
        c,
        "the trace error shown",
        "const e = document.getElementById('trace-error'); return e.hidden ? null : e.textContent;",
        |v| v.is_string(),
    )
    .await?;
    assert!(err.as_str().unwrap().contains("protocol sctp"), "{err}");

    // node-0's 64-port block at the load balancer: 64 held connections
    // fill its bar, the 65th fails, and the page shows it.
    let block = "document.querySelector('.port-row[data-agent=\"lb\"][data-ports=\"1024-1087\"]')";
    let row_state = format!(
        "const r = {block}; return r ? [Number(r.dataset.allocated), Number(r.dataset.failures), r.classList.contains('exhausted')] : null;"
    );
    wait_for(c, "node-0's empty block", &row_state, |v| {
        v == &serde_json::json!([0, 0, false])
    })
    .await?;
    let bin = netplane_bin();
    let bin = bin.to_str().unwrap();
    let _server = Reap(
        Command::new(bin)
            .args([
                "lab",
                "exec",
                "inet",
                "--",
                bin,
                "whoami",
                "serve",
                "--hold",
                "--timeout",
                "30",
            ])
            .stdout(Stdio::null())
            .spawn()?,
    );
    std::thread::sleep(Duration::from_millis(500));
    let _client = Reap(
        Command::new(bin)
            .args([
                "lab",
                "exec",
                "pod-0-0",
                "--",
                bin,
                "whoami",
                "hold",
                "203.0.113.10:7000",
            ])
            .args([
                "--count",
                "65",
                "--connect-timeout",
                "2",
                "--hold",
                "8",
                "--json",
            ])
            .stdout(Stdio::null())
            .spawn()?,
    );
    let full = wait_for(c, "node-0's block full with a failure", &row_state, |v| {
        v[0] == 64 && v[1].as_u64() >= Some(1) && v[2] == true
    })
    .await?;
    assert_eq!(full[0], 64);
    let label = c
        .execute(&format!("return {block}.textContent;"), vec![])
        .await?;
    assert!(label.as_str().unwrap().contains("64 / 64"), "{label}");
    assert!(label.as_str().unwrap().contains("EXHAUSTED"), "{label}");
    // node-1's block did not move.
    let other = c
        .execute(
            "return document.querySelector('.port-row[data-agent=\"lb\"][data-ports=\"1088-1151\"]').dataset.allocated;",
            vec![],
        )
        .await?;
    assert_eq!(other, "0");
    screenshot(c, "ports.png", "ports-section").await?;

    // The counters and the flows, filtered to the load balancer: its
    // translations, and the 65th connection's drop with its reason.
    wait_for(
        c,
        "the load balancer's drop counted",
        "const e = document.querySelector('#counters [data-agent=\"lb\"]'); return e ? e.textContent : '';",
        |v| v.as_str().is_some_and(|t| t.contains("nat_ports_exhausted")),
    )
    .await?;
    c.find(Locator::Id("flows-node"))
        .await?
        .select_by_value("lb")
        .await?;
    wait_for(
        c,
        "the load balancer's flows",
        "const rows = [...document.querySelectorAll('#flows tbody tr')]; return [rows.length, rows.every(r => r.dataset.agent === 'lb'), rows.some(r => r.classList.contains('translation')), rows.some(r => r.classList.contains('drop') && r.textContent.includes('nat_ports_exhausted'))];",
        |v| v[0].as_u64() > Some(0) && v[1] == true && v[2] == true && v[3] == true,
    )
    .await?;
    screenshot(c, "flows.png", "counters-section").await?;
    Ok(())
}
