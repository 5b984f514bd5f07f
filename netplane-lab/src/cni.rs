//! Pods are attached as kubelet would: by running a CNI plugin (netplane-cni,
//! or the reference bridge and ptp plugins for the comparison labs).
use std::{
    net::Ipv4Addr,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

use netplane::sys::{self};

use super::topology::{Host, NETNS_PREFIX, new_netns};

/// Creates a pod as kubelet would: the runtime makes the pod's network
/// namespace, then runs the CNI plugin (netplane-cni) in the node's
/// namespace with the CNI_* environment and the network configuration on
/// stdin.
/// With `conf_dir` (a Kubernetes lab), the configuration is the conflist
/// the node's agent wrote there, as kubelet would read it; otherwise one
/// pointing at the lab's cluster file.
pub(super) fn attach_pod(
    pod: &Host,
    cluster_file: &str,
    conf_dir: Option<&std::path::Path>,
) -> Result<()> {
    let node = pod.node.as_deref().expect("pods have nodes");
    new_netns(&pod.netns)?;
    let conf = match conf_dir {
        Some(dir) => plugin_conf(&dir.join(netplane::cni::CONFLIST_FILE))?,
        None => serde_json::json!({
            "cniVersion": netplane::cni::CNI_VERSION,
            "name": "netplane",
            "type": "netplane-cni",
            "cluster": cluster_file,
            "node": node,
        }),
    };
    cni_add(&cni_plugin()?, pod, &conf)
}

/// The first plugin of a conflist with the list's cniVersion and name, as
/// the CNI library hands it to the plugin.
fn plugin_conf(conflist: &std::path::Path) -> Result<serde_json::Value> {
    let list: serde_json::Value = serde_json::from_slice(
        &std::fs::read(conflist).with_context(|| format!("reading {}", conflist.display()))?,
    )?;
    let mut conf = list["plugins"][0].clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    conf["name"] = list["name"].clone();
    Ok(conf)
}

/// The CNI plugin binary next to this one.
pub fn cni_plugin() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe.with_file_name("netplane-cni"))
}

/// CNI ADD for a lab pod (in its own, existing namespace); the address the
/// plugin gives must be the one the lab planned.
pub fn cni_add(plugin: &std::path::Path, pod: &Host, conf: &serde_json::Value) -> Result<()> {
    let node = pod.node.as_deref().expect("pods have nodes");
    let netns = format!("/run/netns/{}", pod.netns);
    let result = run_cni(plugin, node, "ADD", &pod.name, &netns, conf)?;
    let ip = result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse::<Ipv4Addr>().ok())
        .with_context(|| format!("no address in the CNI result: {result}"))?;
    if ip != pod.ip {
        bail!(
            "{} gave {} the address {ip}, the lab planned {}",
            plugin.display(),
            pod.name,
            pod.ip
        );
    }
    Ok(())
}

/// Runs a CNI plugin in a node's namespace, as a container runtime would:
/// CNI_* in the environment (CNI_ARGS as kubelet sends them, with
/// IgnoreUnknown=1 so plugins that know no K8S_* keys accept them), the network configuration on stdin, the
/// result (or the spec's error) on stdout.
pub fn run_cni(
    plugin: &std::path::Path,
    node: &str,
    command: &str,
    container_id: &str,
    netns_path: &str,
    conf: &serde_json::Value,
) -> Result<serde_json::Value> {
    use std::io::Write as _;
    let node_ns = std::fs::File::open(format!("/run/netns/{NETNS_PREFIX}{node}"))?;
    let mut cmd = Command::new(plugin);
    cmd.env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container_id)
        .env("CNI_NETNS", netns_path)
        .env("CNI_IFNAME", "eth0")
        .env(
            "CNI_ARGS",
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={container_id}"),
        )
        .env(
            "CNI_PATH",
            plugin.parent().unwrap_or(std::path::Path::new("/")),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    sys::spawn_in_netns(&mut cmd, &node_ns);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("running {}", plugin.display()))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(conf.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{} {command} for {container_id} failed: {}",
            plugin.display(),
            text.trim()
        );
    }
    if text.trim().is_empty() {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_str(&text).with_context(|| format!("{} printed {text}", plugin.display()))
}
