//! The lab's Kubernetes control plane (`lab up --source kubernetes`): etcd
//! and a real kube-apiserver (built by `cargo xtask apiserver` from
//! Debian's source) in their own namespace on the VNet segment, where the
//! nodes reach it as AKS's nodes reach theirs. Served with a CA and a
//! certificate carrying its IP (rustls wants an IP SAN), token
//! authentication and RBAC. The lab registers its nodes as Node objects,
//! applies deploy/netplane.yaml's ServiceAccount and ClusterRole, and gives
//! the agents a token of that ServiceAccount: they run with its
//! permissions only (get, list and watch nodes, services and
//! endpointslices).
use std::{
    future::Future,
    net::Ipv4Addr,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::{
    authentication::v1::{TokenRequest, TokenRequestSpec},
    core::v1::{Namespace, Node, NodeAddress, NodeSpec, NodeStatus, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use serde::Deserialize;

use netplane::{
    config::{Cluster, NodePlan},
    paths,
    sys::{self, ip_in},
};

use super::{
    agents::{pid_alive, stop_pid},
    topology::{ControlPlane, NETNS_PREFIX, VNET_BRIDGE, VNET_NETNS, new_netns},
};

/// The control plane's namespace (np-control-plane).
pub const NAME: &str = "control-plane";
pub const API_PORT: u16 = 6443;
/// How long `up` waits for the API server to serve.
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// The manifests the lab takes its RBAC from (and users deploy).
pub const DEPLOY_MANIFEST: &str = include_str!("../../deploy/netplane.yaml");
/// The agents' ServiceAccount (deploy/netplane.yaml).
pub const SERVICE_ACCOUNT: (&str, &str) = ("kube-system", "netplane");

pub fn netns() -> String {
    format!("{NETNS_PREFIX}{NAME}")
}

pub(super) fn dir() -> PathBuf {
    paths::lab_dir().join("kubernetes")
}

/// The address the lab gives the API server: the node subnet's last
/// usable one (the nodes count up from .4).
pub fn address(cluster: &Cluster) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(cluster.network.node_subnet.broadcast()) - 1)
}

/// kube-apiserver: $NETPLANE_KUBE_APISERVER, or beside this build's target
/// directory (target/kubernetes/, where `cargo xtask apiserver` puts it),
/// or on PATH.
pub fn apiserver_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("NETPLANE_KUBE_APISERVER") {
        return Ok(p.into());
    }
    let exe = std::env::current_exe()?;
    if let Some(target) = exe.parent().and_then(Path::parent) {
        let built = target.join("kubernetes/kube-apiserver");
        if built.exists() {
            return Ok(built);
        }
    }
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("kube-apiserver"))
                .find(|c| c.exists())
        })
        .context("kube-apiserver not found: run `cargo xtask apiserver` (builds it from Debian's Kubernetes source), or set NETPLANE_KUBE_APISERVER")
}

/// Starts etcd and the API server, and prepares the cluster's objects.
pub(super) fn start(cluster: &Cluster, progress: &mut dyn FnMut(&str)) -> Result<ControlPlane> {
    let apiserver = apiserver_binary()?;
    let ns = netns();
    let ip = address(cluster);
    progress(&format!("Kubernetes control plane {ip}:{API_PORT} in {ns}"));
    new_netns(&ns)?;
    ip_in(
        VNET_NETNS,
        &[
            "link", "add", "vn-cp", "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ],
    )?;
    ip_in(
        VNET_NETNS,
        &["link", "set", "vn-cp", "master", VNET_BRIDGE, "up"],
    )?;
    let prefix = cluster.network.node_subnet.prefix_len();
    ip_in(
        &ns,
        &["addr", "add", &format!("{ip}/{prefix}"), "dev", "eth0"],
    )?;
    ip_in(&ns, &["link", "set", "eth0", "up"])?;

    let dir = dir();
    std::fs::create_dir_all(&dir)?;
    let pki = Pki::write(&dir, ip)?;
    let admin_token = random_token()?;
    std::fs::write(
        dir.join("tokens.csv"),
        format!("{admin_token},admin,admin,\"system:masters\"\n"),
    )?;
    let server = format!("https://{ip}:{API_PORT}");
    let kubeconfig = dir.join("admin.kubeconfig");
    std::fs::write(
        &kubeconfig,
        kubeconfig_text(&server, &pki.ca, "admin", &admin_token),
    )?;

    let etcd_pid = spawn_in(
        &ns,
        "etcd",
        &[
            "--name=netplane-lab",
            &format!("--data-dir={}", dir.join("etcd").display()),
            "--listen-client-urls=http://127.0.0.1:2379",
            "--advertise-client-urls=http://127.0.0.1:2379",
            "--listen-peer-urls=http://127.0.0.1:2380",
            "--initial-advertise-peer-urls=http://127.0.0.1:2380",
            "--initial-cluster=netplane-lab=http://127.0.0.1:2380",
        ],
        &dir.join("etcd.log"),
    )?;
    let issuer = "https://kubernetes.default.svc.cluster.local";
    let apiserver_args: Vec<String> = vec![
        apiserver.display().to_string(),
        "--etcd-servers=http://127.0.0.1:2379".into(),
        "--bind-address=0.0.0.0".into(),
        format!("--secure-port={API_PORT}"),
        "--insecure-port=0".into(),
        format!("--advertise-address={ip}"),
        format!("--cert-dir={}", dir.display()),
        format!("--tls-cert-file={}", pki.cert.display()),
        format!("--tls-private-key-file={}", pki.key.display()),
        format!("--client-ca-file={}", pki.ca.display()),
        format!("--token-auth-file={}", dir.join("tokens.csv").display()),
        "--authorization-mode=RBAC".into(),
        format!(
            "--service-cluster-ip-range={}",
            cluster.network.service_cidr
        ),
        format!("--service-account-issuer={issuer}"),
        format!("--service-account-key-file={}", pki.sa_pub.display()),
        format!(
            "--service-account-signing-key-file={}",
            pki.sa_key.display()
        ),
        "--allow-privileged=true".into(),
    ];
    let mut cp = ControlPlane {
        ip,
        server: server.clone(),
        kubeconfig: kubeconfig.display().to_string(),
        agent_kubeconfig: dir.join("agent.kubeconfig").display().to_string(),
        etcd_pid,
        apiserver_pid: 0,
        apiserver_args,
        dns_pid: 0,
        kube_proxy_pids: Vec::new(),
    };
    cp.apiserver_pid = start_apiserver(&cp)?;
    progress(&format!(
        "etcd (pid {etcd_pid}) and kube-apiserver (pid {}) started; logs in {}",
        cp.apiserver_pid,
        dir.display()
    ));
    let nodes = cluster.nodes();
    let agent_token = in_netns(&ns, async {
        let client = admin_client(&cp).await?;
        wait_ready(&client, &cp).await?;
        apply_rbac(&client).await?;
        for n in &nodes {
            create_node(&client, &node_object(n)).await?;
        }
        service_account_token(&client).await
    })?;
    progress(&format!(
        "{} Node objects registered; agents use ServiceAccount {}/{}",
        nodes.len(),
        SERVICE_ACCOUNT.0,
        SERVICE_ACCOUNT.1
    ));
    std::fs::write(
        &cp.agent_kubeconfig,
        kubeconfig_text(&server, &pki.ca, "netplane", &agent_token),
    )?;
    Ok(cp)
}

/// `lab apiserver stop|start`: takes the running lab's API server away or
/// brings it back (the agents keep forwarding meanwhile, and resync).
pub fn set_apiserver(running: bool, progress: &mut dyn FnMut(&str)) -> Result<()> {
    let mut state = super::topology::load_state()?.context("the lab is down")?;
    let cp = state
        .kubernetes
        .as_mut()
        .context("this lab has no Kubernetes control plane (lab up --source kubernetes)")?;
    let alive = pid_alive(cp.apiserver_pid);
    match (running, alive) {
        (false, true) => {
            stop_apiserver(cp);
            progress(&format!(
                "kube-apiserver (pid {}) stopped",
                cp.apiserver_pid
            ));
        }
        (true, false) => {
            cp.apiserver_pid = start_apiserver(cp)?;
            let cp2 = cp.clone();
            in_netns(&netns(), async move {
                let client = admin_client(&cp2).await?;
                wait_ready(&client, &cp2).await
            })?;
            progress(&format!(
                "kube-apiserver (pid {}) serving",
                cp.apiserver_pid
            ));
        }
        _ => progress(if alive {
            "kube-apiserver is already running"
        } else {
            "kube-apiserver is already stopped"
        }),
    }
    super::topology::save_state(&state)
}

/// Starts kube-apiserver from its recorded command line; returns its PID.
pub fn start_apiserver(cp: &ControlPlane) -> Result<u32> {
    let (bin, args) = cp.apiserver_args.split_first().context("no command line")?;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    spawn_in(&netns(), bin, &args, &dir().join("kube-apiserver.log"))
}

/// Stops kube-apiserver (by PID, if it is ours).
pub fn stop_apiserver(cp: &ControlPlane) {
    stop_ours(cp.apiserver_pid, "kube-apiserver");
}

/// Stops what `start` started (by PID, checked against its command line).
pub(super) fn stop(cp: &ControlPlane, progress: &mut dyn FnMut(&str)) {
    let kube_proxies = cp.kube_proxy_pids.iter().map(|&p| (p, "kube-proxy"));
    let rest = [
        (cp.dns_pid, "dnsmasq"),
        (cp.apiserver_pid, "kube-apiserver"),
        (cp.etcd_pid, "etcd"),
    ];
    for (pid, what) in kube_proxies.chain(rest) {
        if pid != 0 && pid_alive(pid) {
            progress(&format!("stopping {what} (pid {pid})"));
        }
        stop_ours(pid, what);
    }
}

fn stop_ours(pid: u32, what: &str) {
    let ours = std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| String::from_utf8_lossy(&c).contains(what));
    if pid != 0 && ours && pid_alive(pid) {
        stop_pid(pid);
    }
}

/// Runs `program` inside the network namespace `ns` in its own process
/// group (it outlives `lab up`), output to `log`.
pub(super) fn spawn_in(ns: &str, program: &str, args: &[&str], log: &Path) -> Result<u32> {
    let out = std::fs::File::create(log)?;
    let netns = std::fs::File::open(Path::new("/run/netns").join(ns))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0);
    sys::spawn_in_netns(&mut cmd, &netns);
    let child = cmd.spawn().with_context(|| format!("starting {program}"))?;
    Ok(child.id())
}

/// Runs a future on a thread inside `ns` (the API server is reachable only
/// from the lab's namespaces; the root namespace gets no address).
pub fn in_netns<T: Send>(ns: &str, fut: impl Future<Output = Result<T>> + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            sys::enter_netns(ns)?;
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(fut)
        })
        .join()
        .unwrap_or_else(|_| bail!("the control plane's thread panicked"))
    })
}

/// A client with the admin kubeconfig (call inside the namespace).
pub async fn admin_client(cp: &ControlPlane) -> Result<Client> {
    netplane::source::kubernetes::client(Some(Path::new(&cp.kubeconfig))).await
}

async fn wait_ready(client: &Client, cp: &ControlPlane) -> Result<()> {
    let started = Instant::now();
    loop {
        let ready = client
            .request_text(http::Request::get("/readyz").body(Vec::new())?)
            .await;
        let ns: Api<Namespace> = Api::all(client.clone());
        if ready.is_ok_and(|r| r.trim() == "ok") && ns.get_opt(SERVICE_ACCOUNT.0).await?.is_some() {
            return Ok(());
        }
        if !pid_alive(cp.apiserver_pid) || started.elapsed() > READY_TIMEOUT {
            let log = std::fs::read_to_string(dir().join("kube-apiserver.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            bail!(
                "kube-apiserver did not become ready; the end of its log:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Creates deploy/netplane.yaml's ServiceAccount, ClusterRole and
/// ClusterRoleBinding (the rest needs nodes with a container runtime).
async fn apply_rbac(client: &Client) -> Result<()> {
    let pp = PostParams::default();
    for json in manifest_documents()? {
        match json["kind"].as_str() {
            Some("ServiceAccount") => {
                let sa: ServiceAccount = serde_json::from_value(json)?;
                let ns = sa.metadata.namespace.clone().unwrap_or_default();
                Api::<ServiceAccount>::namespaced(client.clone(), &ns)
                    .create(&pp, &sa)
                    .await?;
            }
            Some("ClusterRole") => {
                let r: ClusterRole = serde_json::from_value(json)?;
                Api::<ClusterRole>::all(client.clone())
                    .create(&pp, &r)
                    .await?;
            }
            Some("ClusterRoleBinding") => {
                let b: ClusterRoleBinding = serde_json::from_value(json)?;
                Api::<ClusterRoleBinding>::all(client.clone())
                    .create(&pp, &b)
                    .await?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// deploy/netplane.yaml's documents, as JSON.
pub fn manifest_documents() -> Result<Vec<serde_json::Value>> {
    serde_yaml_ng::Deserializer::from_str(DEPLOY_MANIFEST)
        .map(|doc| {
            let value = serde_yaml_ng::Value::deserialize(doc)?;
            Ok(serde_json::to_value(&value)?)
        })
        .collect()
}

/// A Node object as kubelet registers one and the controller manager
/// completes it: spec.podCIDR(s) and an InternalIP.
pub fn node_object(n: &NodePlan) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(n.name.clone()),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: Some(n.pod_cidr.to_string()),
            pod_cidrs: Some(vec![n.pod_cidr.to_string()]),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(vec![NodeAddress {
                type_: "InternalIP".into(),
                address: n.ip.to_string(),
            }]),
            ..Default::default()
        }),
    }
}

/// Creates a Node; its status (addresses) is kept on create.
pub async fn create_node(client: &Client, node: &Node) -> Result<()> {
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), node)
        .await
        .with_context(|| format!("creating Node {:?}", node.metadata.name))?;
    Ok(())
}

/// A token of the agents' ServiceAccount (TokenRequest, a year).
async fn service_account_token(client: &Client) -> Result<String> {
    let (ns, name) = SERVICE_ACCOUNT;
    let req = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            expiration_seconds: Some(365 * 24 * 3600),
            ..Default::default()
        },
        ..Default::default()
    };
    let sa: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let made: TokenRequest = sa
        .create_subresource("token", name, &PostParams::default(), &req)
        .await
        .context("TokenRequest for the agents' ServiceAccount")?;
    made.status
        .map(|s| s.token)
        .context("the TokenRequest came back without a token")
}

fn kubeconfig_text(server: &str, ca: &Path, user: &str, token: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: netplane-lab
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: {user}
  user:
    token: {token}
contexts:
- name: netplane-lab
  context:
    cluster: netplane-lab
    user: {user}
current-context: netplane-lab
",
        ca = ca.display()
    )
}

/// 32 random bytes from the kernel, hex.
fn random_token() -> Result<String> {
    let mut b = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// The control plane's keys and certificates, as files.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    sa_key: PathBuf,
    sa_pub: PathBuf,
}

impl Pki {
    fn write(dir: &Path, ip: Ipv4Addr) -> Result<Self> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "netplane lab CA");
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate()?;
        let mut server = CertificateParams::new(vec![
            ip.to_string(),
            "127.0.0.1".into(),
            "kubernetes".into(),
            "kubernetes.default".into(),
            "kubernetes.default.svc".into(),
        ])?;
        server
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        let cert = server.signed_by(&key, &issuer)?;
        let sa_key = KeyPair::generate()?;
        let pki = Self {
            ca: dir.join("ca.crt"),
            cert: dir.join("apiserver.crt"),
            key: dir.join("apiserver.key"),
            sa_key: dir.join("service-accounts.key"),
            sa_pub: dir.join("service-accounts.pub"),
        };
        std::fs::write(&pki.ca, ca_cert.pem())?;
        std::fs::write(&pki.cert, cert.pem())?;
        std::fs::write(&pki.key, key.serialize_pem())?;
        std::fs::write(&pki.sa_key, sa_key.serialize_pem())?;
        std::fs::write(&pki.sa_pub, sa_key.public_key_pem())?;
        Ok(pki)
    }
}
