//! The VMs and their network. A namespace of the test's own
//! (`npvm-fabric`) holds a bridge, the VNet, with one tap per VM; QEMU runs
//! in it, so nothing is added outside it. Each VM shares a directory with
//! the host (virtme-ng's --rwdir): the host writes the VM's role there, the
//! guest says when it is ready, and commands go back and forth as files
//! (`cmd/N.sh` in, `out/N.out` and `out/N.rc` back).
use std::{
    cell::Cell,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::workspace_root;

/// The fabric's namespace: npvm-fabric, or $NETPLANE_VM_FABRIC (two runs
/// side by side on one machine, each with its own).
pub fn fabric_netns() -> String {
    std::env::var("NETPLANE_VM_FABRIC").unwrap_or_else(|_| "npvm-fabric".into())
}
const BRIDGE: &str = "vnet0";
/// How long a VM may take to boot and provision netplane under software
/// emulation.
const READY_TIMEOUT: Duration = Duration::from_secs(420);
/// ... and to bring up a Kubernetes node or control plane (apiserver's
/// start alone takes minutes under emulation).
const KUBERNETES_READY_TIMEOUT: Duration = Duration::from_secs(1200);

/// The default cluster's machines: (name, role, address on the VNet).
const MACHINES: [(&str, &str, &str); 3] = [
    ("node-0", "node", "10.224.0.4"),
    ("node-1", "node", "10.224.0.5"),
    ("lb", "lb", "10.224.0.1"),
];
const PREFIX: u8 = 16;
const GATEWAY: &str = "10.224.0.1";

pub struct Machine {
    pub name: String,
    dir: PathBuf,
    child: Option<Child>,
    next: Cell<u32>,
}

pub struct Cluster {
    pub machines: Vec<Machine>,
}

/// What a VM runs once it has its address.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Provision {
    /// Nothing more (`bench --vm` sets up the kernel's data paths itself).
    Bare,
    /// netplane, by vagrant/provision/netplane.sh.
    Netplane,
    /// A Kubernetes cluster (vagrant/provision/kubernetes.sh): the control
    /// plane and netplane's load balancer on `lb`, kubelet and containerd
    /// on the nodes, whose pod network is netplane's DaemonSet or, with
    /// `classic`, kubenet's bridge.
    Kubernetes { classic: bool },
}

/// How the VMs come up.
pub struct Boot {
    pub provision: Provision,
    /// The cluster file the agents read.
    pub cluster: PathBuf,
    /// The nodes' agents attach the optional XDP program too.
    pub uplink_xdp: bool,
    /// Where netplane and netplane-cni are (the host's build).
    pub bin: PathBuf,
}

impl Boot {
    /// `vm test`: netplane on the default cluster, XDP on the nodes.
    pub fn vm_test() -> Boot {
        Boot {
            provision: Provision::Netplane,
            cluster: workspace_root().join("netplane-user/src/config/default-cluster.toml"),
            uplink_xdp: true,
            bin: workspace_root().join("target/debug"),
        }
    }
}

/// virtme-ng's `vng`: on the PATH, or where pip put Python's scripts.
fn vng() -> Result<String> {
    let on_path = Command::new("sh").args(["-c", "command -v vng"]).output()?;
    if on_path.status.success() {
        return Ok(String::from_utf8_lossy(&on_path.stdout).trim().to_string());
    }
    let scripts = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()?;
    let vng = Path::new(String::from_utf8_lossy(&scripts.stdout).trim()).join("vng");
    if vng.exists() {
        return Ok(vng.display().to_string());
    }
    bail!("vng missing: virtme-ng (pip); cargo xtask setup installs it")
}

/// virtme-ng and QEMU are there (cargo xtask setup installs them).
pub fn preflight() -> Result<()> {
    vng()?;
    for (tool, what) in [
        ("qemu-system-x86_64", "qemu-system-x86 (bookworm-backports)"),
        ("busybox", "busybox-static"),
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()?
            .success();
        if !found {
            bail!("{tool} missing: {what}; cargo xtask setup installs it");
        }
    }
    if !Path::new("/dev/net/tun").exists() {
        bail!("/dev/net/tun missing: the VMs' NICs are taps");
    }
    Ok(())
}

pub(super) fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn fabric_exists() -> bool {
    Command::new("ip")
        .args(["netns", "list"])
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.split_whitespace().next() == Some(&fabric_netns()))
        })
}

impl Cluster {
    /// Builds the fabric and boots the VMs; waits until each is provisioned.
    /// Whatever was made is torn down if this fails.
    pub fn boot(vmlinuz: &Path, boot: &Boot) -> Result<Cluster> {
        if fabric_exists() {
            eprintln!(
                "== a previous run's {} is left: removing it",
                fabric_netns()
            );
            ip(&["netns", "del", &fabric_netns()])?;
        }
        let run_dir = workspace_root().join("target/vm/run");
        let _ = std::fs::remove_dir_all(&run_dir);
        std::fs::create_dir_all(&run_dir)?;
        ip(&["netns", "add", &fabric_netns()])?;
        let mut cluster = Cluster {
            machines: Vec::new(),
        };
        let fabric = |args: &[&str]| ip(&[&["-n", &fabric_netns()], args].concat());
        fabric(&["link", "set", "lo", "up"])?;
        fabric(&["link", "add", BRIDGE, "type", "bridge"])?;
        fabric(&["link", "set", BRIDGE, "up"])?;
        let xtask = std::env::current_exe()?;
        let vng = vng()?;
        let started = Instant::now();
        for (i, (name, role, address)) in MACHINES.iter().enumerate() {
            let dir = run_dir.join(name);
            std::fs::create_dir_all(dir.join("cmd"))?;
            std::fs::create_dir_all(dir.join("out"))?;
            std::fs::write(
                dir.join("role"),
                format!(
                    "role {role}\nname {name}\naddress {address}/{PREFIX}\ngateway {GATEWAY}\nroot {}\n\
                     provision {}\ncluster {}\nxdp {}\nbin {}\n",
                    workspace_root().display(),
                    match boot.provision {
                        Provision::Bare => "bare",
                        Provision::Netplane => "netplane",
                        Provision::Kubernetes { classic: false } => "kubernetes",
                        Provision::Kubernetes { classic: true } => "kubernetes-classic",
                    },
                    boot.cluster.display(),
                    if boot.uplink_xdp { "yes" } else { "no" },
                    boot.bin.display(),
                ),
            )?;
            let tap = format!("tap-{name}");
            fabric(&["tuntap", "add", &tap, "mode", "tap"])?;
            fabric(&["link", "set", &tap, "master", BRIDGE, "up"])?;
            let console = std::fs::File::create(dir.join("console.log"))?;
            let qemu = format!(
                "-netdev tap,id=vnet,ifname={tap},script=no,downscript=no \
                 -device virtio-net-pci,netdev=vnet,mac=52:54:00:00:01:{i:02x}"
            );
            let exec = format!("{} vm guest {}", xtask.display(), dir.display());
            let kubernetes = matches!(boot.provision, Provision::Kubernetes { .. });
            let child = Command::new("ip")
                .args(["netns", "exec", &fabric_netns(), &vng, "--run"])
                .arg(vmlinuz)
                // This host's /dev/kvm is a PVM host that stock kernels do
                // not boot under; and without no_timer_check a loaded host
                // sometimes panics a guest at boot.
                .args(["--disable-kvm", "--append", "no_timer_check"])
                // The control plane's VM gets a second vCPU: the API
                // server's start is most of a cluster's boot.
                .arg("--cpus")
                .arg(if kubernetes && *role == "lb" {
                    "2"
                } else {
                    "1"
                })
                .arg("--memory")
                .arg(if kubernetes { "2G" } else { "1G" })
                // kubelet and containerd write under /etc, /var and /opt:
                // a layer of the guest's own over the host's (read-only).
                .args(if kubernetes {
                    &[
                        "--overlay-rwdir=/etc",
                        "--overlay-rwdir=/var",
                        "--overlay-rwdir=/opt",
                    ][..]
                } else {
                    &[]
                })
                .arg("--rwdir")
                .arg(&dir)
                // With `=`: the value starts with a dash.
                .arg(format!("--qemu-opts={qemu}"))
                .args(["--exec", &exec])
                .stdin(Stdio::null())
                .stdout(console.try_clone()?)
                .stderr(console)
                .spawn()
                .context("starting vng")?;
            eprintln!("   {name}: booting (vng pid {})", child.id());
            cluster.machines.push(Machine {
                name: name.to_string(),
                dir,
                child: Some(child),
                next: Cell::new(0),
            });
        }
        let limit = match boot.provision {
            Provision::Kubernetes { .. } => KUBERNETES_READY_TIMEOUT,
            _ => READY_TIMEOUT,
        };
        for m in &cluster.machines {
            m.wait_ready(started, limit)?;
        }
        Ok(cluster)
    }

    /// Gives the fabric namespace an address on the VNet, so the host's
    /// tools (kubectl, say) reach the VMs from inside it.
    pub fn join_vnet(&self, address: &str) -> Result<()> {
        ip(&[
            "-n",
            &fabric_netns(),
            "addr",
            "add",
            &format!("{address}/{PREFIX}"),
            "dev",
            BRIDGE,
        ])
    }

    pub fn get(&self, name: &str) -> &Machine {
        self.machines
            .iter()
            .find(|m| m.name == name)
            .expect("a machine of the cluster")
    }

    /// Asks every VM to power off, ends the ones that do not (by PID), and
    /// removes the fabric. Idempotent.
    pub fn shut_down(&self) {
        for m in &self.machines {
            let _ = std::fs::write(m.dir.join("stop"), "");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for m in &self.machines {
            m.wait_gone(deadline);
        }
        if fabric_exists() {
            let _ = ip(&["netns", "del", &fabric_netns()]);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shut_down();
        for m in &mut self.machines {
            if let Some(mut c) = m.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl Machine {
    fn wait_ready(&self, started: Instant, limit: Duration) -> Result<()> {
        let mut said = Instant::now();
        loop {
            if self.dir.join("ready").exists() {
                eprintln!(
                    "   {}: ready after {:.0} s",
                    self.name,
                    started.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            if let Ok(why) = std::fs::read_to_string(self.dir.join("failed")) {
                bail!("{} failed to come up:\n{why}", self.name);
            }
            if !self.running() {
                let console =
                    std::fs::read_to_string(self.dir.join("console.log")).unwrap_or_default();
                bail!(
                    "{}'s VM ended before it was ready; its console:\n{console}",
                    self.name
                );
            }
            if started.elapsed() > limit {
                let console =
                    std::fs::read_to_string(self.dir.join("console.log")).unwrap_or_default();
                bail!(
                    "{} not ready after {} s; its console:\n{console}",
                    self.name,
                    limit.as_secs()
                );
            }
            if said.elapsed() > Duration::from_secs(30) {
                eprintln!(
                    "   {}: still booting ({:.0} s)",
                    self.name,
                    started.elapsed().as_secs_f64()
                );
                said = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Its vng process still runs (not yet exited; Drop reaps it).
    fn running(&self) -> bool {
        self.child.as_ref().is_some_and(|c| {
            std::fs::read_to_string(format!("/proc/{}/stat", c.id()))
                .is_ok_and(|s| !s.contains(") Z "))
        })
    }

    fn wait_gone(&self, deadline: Instant) {
        while self.running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs a shell script in the VM; its exit code and output.
    pub fn sh(&self, script: &str, timeout: Duration) -> Result<(i32, String)> {
        let n = self.next.get();
        self.next.set(n + 1);
        let tmp = self.dir.join(format!("cmd/{n}.tmp"));
        std::fs::write(&tmp, script)?;
        std::fs::rename(&tmp, self.dir.join(format!("cmd/{n}.sh")))?;
        let rc = self.dir.join(format!("out/{n}.rc"));
        let deadline = Instant::now() + timeout;
        while !rc.exists() {
            if Instant::now() > deadline {
                bail!(
                    "{}: no answer in {} s to:\n{script}",
                    self.name,
                    timeout.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let code = std::fs::read_to_string(&rc)?.trim().parse().unwrap_or(-1);
        let out =
            std::fs::read_to_string(self.dir.join(format!("out/{n}.out"))).unwrap_or_default();
        Ok((code, out))
    }

    /// As `sh`, failing unless the script exits 0.
    pub fn ok(&self, script: &str) -> Result<String> {
        let (code, out) = self.sh(script, Duration::from_secs(180))?;
        if code != 0 {
            bail!("{}: `{script}` exited {code}:\n{out}", self.name);
        }
        Ok(out)
    }
}
