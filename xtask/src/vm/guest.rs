//! Inside a VM (`xtask vm guest DIR`, started by virtme-ng): the NIC gets
//! its address, vagrant/provision/netplane.sh brings the machine up in its
//! role exactly as the Vagrantfile's provisioner does, then the host's
//! commands are run until it asks the VM to stop.
use std::{
    collections::HashMap,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// A command from the host may run this long.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(170);

pub fn run(dir: &Path) -> Result<()> {
    match provision(dir) {
        Ok(()) => std::fs::write(dir.join("ready"), "")?,
        Err(e) => std::fs::write(dir.join("failed"), format!("{e:#}"))?,
    }
    serve(dir)
}

fn sh(script: &str) -> Result<String> {
    let out = Command::new("sh").args(["-c", script]).output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("`{script}` failed:\n{text}");
    }
    Ok(text)
}

/// The virtio NIC (the only one), named eth0 as in the lab.
fn nic() -> Result<String> {
    for e in std::fs::read_dir("/sys/class/net")?.flatten() {
        let driver = std::fs::read_link(e.path().join("device/driver")).unwrap_or_default();
        if driver.to_string_lossy().ends_with("virtio_net") {
            return Ok(e.file_name().to_string_lossy().into_owned());
        }
    }
    bail!("no virtio-net interface in /sys/class/net")
}

fn provision(dir: &Path) -> Result<()> {
    let text = std::fs::read_to_string(dir.join("role"))?;
    let role: HashMap<&str, &str> = text.lines().filter_map(|l| l.split_once(' ')).collect();
    let get = |k: &str| {
        role.get(k)
            .copied()
            .with_context(|| format!("role file: {k}"))
    };
    let (kind, name, address, gateway, root) = (
        get("role")?,
        get("name")?,
        get("address")?,
        get("gateway")?,
        get("root")?,
    );
    sh("ip link set lo up")?;
    let nic = nic()?;
    if nic != "eth0" {
        sh(&format!(
            "ip link set {nic} down && ip link set {nic} name eth0"
        ))?;
    }
    sh(&format!(
        "ip addr add {address} dev eth0 && ip link set eth0 up"
    ))?;
    if kind == "node" {
        sh(&format!("ip route add default via {gateway}"))?;
    }
    let (cluster, xdp, bin) = (get("cluster")?, get("xdp")? == "yes", get("bin")?);
    let machine = Kubernetes {
        root,
        kind,
        name,
        address,
        cluster,
        bin,
    };
    match get("provision")? {
        "netplane" => {}
        "kubernetes" => return machine.provision(dir, false),
        "kubernetes-classic" => return machine.provision(dir, true),
        _ => return Ok(()),
    }
    let log_dir = dir.join("log");
    let args: Vec<&str> = match kind {
        "node" => vec!["node", name],
        _ => vec!["lb"],
    };
    let out = Command::new("sh")
        .arg(format!("{root}/vagrant/provision/netplane.sh"))
        .args(&args)
        .env("NETPLANE_BIN", bin)
        .env("NETPLANE_CLUSTER", cluster)
        .env("NETPLANE_AGENT", "background")
        .env("NETPLANE_LOG_DIR", &log_dir)
        .env("NETPLANE_INET", "namespace")
        // The optional XDP early drop, natively on virtio-net.
        .env(
            "NETPLANE_AGENT_ARGS",
            if kind == "node" && xdp {
                "--uplink-xdp"
            } else {
                ""
            },
        )
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(dir.join("provision.log"), &text)?;
    if !out.status.success() {
        bail!("provisioning {name} failed:\n{text}");
    }
    Ok(())
}

/// A Kubernetes machine (vagrant/provision/kubernetes.sh): the node's
/// containerd, kubelet and kube-proxy; or on `lb`, netplane's load
/// balancer (as `vm test` has it, the internet host beside it) and the
/// control plane.
struct Kubernetes<'a> {
    root: &'a str,
    kind: &'a str,
    name: &'a str,
    address: &'a str,
    cluster: &'a str,
    bin: &'a str,
}

impl Kubernetes<'_> {
    fn provision(&self, dir: &Path, classic: bool) -> Result<()> {
        let (root, name) = (self.root, self.name);
        let log_dir = dir.join("log");
        let script = |script: &str, args: &[&str]| -> Result<()> {
            let out = Command::new("sh")
                .arg(format!("{root}/vagrant/provision/{script}"))
                .args(args)
                .env("K8S_BIN", format!("{root}/target/kubernetes"))
                .env("K8S_CONF", format!("{root}/target/vm/k8s"))
                .env("K8S_LOG_DIR", &log_dir)
                .env("K8S_DATAPATH", if classic { "classic" } else { "netplane" })
                .env("NETPLANE_BIN", self.bin)
                .env("NETPLANE_CLUSTER", self.cluster)
                .env("NETPLANE_AGENT", "background")
                .env("NETPLANE_LOG_DIR", &log_dir)
                .env("NETPLANE_INET", "namespace")
                .output()?;
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let log = dir.join("provision.log");
            let before = std::fs::read_to_string(&log).unwrap_or_default();
            std::fs::write(&log, before + &text)?;
            if !out.status.success() {
                bail!("{script} {} on {name} failed:\n{text}", args.join(" "));
            }
            Ok(())
        };
        if self.kind == "node" {
            let ip = self.address.split('/').next().unwrap_or(self.address);
            script("kubernetes.sh", &["node", name, ip])
        } else {
            script("netplane.sh", &["lb"])?;
            script("kubernetes.sh", &["control-plane"])
        }
    }
}

/// Runs the host's commands in order (cmd/N.sh), each with its output and
/// exit code written back, until the host writes `stop`.
fn serve(dir: &Path) -> Result<()> {
    let mut next = 0u32;
    while !dir.join("stop").exists() {
        let script = dir.join(format!("cmd/{next}.sh"));
        if !script.exists() {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        let out_path = dir.join(format!("out/{next}.out"));
        let out = std::fs::File::create(&out_path)?;
        let mut child = Command::new("sh")
            .arg(&script)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        let started = Instant::now();
        let code = loop {
            if let Some(s) = child.try_wait()? {
                break s.code().unwrap_or(-1);
            }
            if started.elapsed() > COMMAND_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                break -2;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let rc = dir.join(format!("out/{next}.rc.tmp"));
        std::fs::write(&rc, code.to_string())?;
        std::fs::rename(&rc, dir.join(format!("out/{next}.rc")))?;
        next += 1;
    }
    Ok(())
}
