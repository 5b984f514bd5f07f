//! `cargo xtask vm k8s`: netplane as the network of a real Kubernetes 1.20
//! cluster on the VMs. Everything is built here from Debian's packages and
//! source (no registry is reachable): the components and the e2e suite
//! (`kubernetes`), the pause and agnhost images and netplane's own
//! (`cargo xtask image`). The load balancer's VM runs the control plane and
//! netplane's load balancer; each node VM runs containerd, kubelet and
//! kube-proxy (vagrant/provision/kubernetes.sh). Then, as a user would:
//! `kubectl apply -f deploy/`, and a Deployment of agnhost over the nodes
//! (tests/k8s/web.yaml), which `checks` proves; `--conformance` runs
//! Kubernetes' own sig-network tests (`conformance`). docs/kubernetes.md,
//! "A real cluster", says how and why.
mod checks;
mod conformance;
mod pki;
mod results;

/// `vm k8s-conformance --record`: the last run's record, made again.
pub use conformance::record_again as record_conformance_again;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{kernel, machines};
use crate::{image, kubernetes, workspace_root};

/// The host's address on the VNet (in the fabric namespace), for kubectl.
const HOST_ON_VNET: &str = "10.224.0.254";
const NODES: [&str; 2] = ["node-0", "node-1"];
/// The images, as the components and the e2e suite name them (its repo
/// list points its registries at `localhost`: conformance.rs).
pub const PAUSE_IMAGE: &str = "localhost/pause:3.2";
pub const AGNHOST_IMAGE: &str = "localhost/e2e-test-images/agnhost:2.21";

pub struct Options {
    pub kernel: kernel::Kernel,
    /// kubenet's bridge plugin and kube-proxy instead of netplane: the oracle.
    pub classic: bool,
    /// Kubernetes' sig-network conformance tests after the checks.
    pub conformance: bool,
    /// Leave the cluster up after the checks (passed or not) until
    /// target/vm/k8s/up is removed.
    pub keep: bool,
}

/// target/vm/k8s: credentials, kubeconfigs and images, read by the guests.
pub fn dir() -> PathBuf {
    workspace_root().join("target/vm/k8s")
}

pub fn run(opts: &Options) -> Result<()> {
    let started = Instant::now();
    let mut wanted = kubernetes::CLUSTER.to_vec();
    if opts.conformance {
        wanted.extend_from_slice(kubernetes::CONFORMANCE);
    }
    kubernetes::ensure(&wanted)?;
    images(opts.classic)?;
    let vmlinuz = kernel::ensure(opts.kernel)?;
    machines::preflight()?;
    // A run's credentials are its own: written anew every time.
    pki::write(&dir(), &NODES)?;
    eprintln!(
        "== a Kubernetes cluster on VMs ({}; Linux {}): booting",
        if opts.classic {
            "kubenet-classic: bridge plugin, kube-proxy"
        } else {
            "netplane"
        },
        opts.kernel.name()
    );
    let boot = machines::Boot {
        provision: machines::Provision::Kubernetes {
            classic: opts.classic,
        },
        ..machines::Boot::vm_test()
    };
    let cluster = machines::Cluster::boot(&vmlinuz, &boot)?;
    eprintln!(
        "   VMs provisioned after {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let result = (|| -> Result<()> {
        cluster.join_vnet(HOST_ON_VNET)?;
        let kubectl = Kubectl::admin();
        eprintln!(
            "   kubectl: ip netns exec {} {} --kubeconfig {}",
            machines::fabric_netns(),
            kubectl.bin.display(),
            kubectl.config.display()
        );
        bring_up(&kubectl, opts.classic)?;
        if !opts.classic {
            checks::run(&cluster, &kubectl)?;
        }
        if opts.conformance {
            conformance::run(&kubectl, opts.classic, opts.kernel.name())?;
        }
        Ok(())
    })();
    if let Err(e) = &result {
        eprintln!("   failed: {e:#}");
        print_log_tails();
    }
    if opts.keep {
        keep_up(&Kept {
            classic: opts.classic,
            kernel: opts.kernel.name().into(),
        })?;
    }
    cluster.shut_down();
    result?;
    eprintln!(
        "== vm k8s: passed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The last lines of every daemon's log on every VM: what CI's output
/// keeps of a failed run (the full logs stay under target/vm/run/).
fn print_log_tails() {
    let run = workspace_root().join("target/vm/run");
    eprintln!("   the guests' logs: {}/*/log/", run.display());
    let Ok(machines) = std::fs::read_dir(&run) else {
        return;
    };
    for m in machines.flatten() {
        let Ok(logs) = std::fs::read_dir(m.path().join("log")) else {
            continue;
        };
        let mut logs: Vec<PathBuf> = logs
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        logs.sort();
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("--- {} (last 8 of {} lines)", log.display(), lines.len());
            for l in &lines[lines.len().saturating_sub(8)..] {
                eprintln!("    {}", l.chars().take(300).collect::<String>());
            }
        }
    }
}

/// What a kept cluster runs, in target/vm/k8s/up: for a later
/// `vm k8s-conformance`.
#[derive(serde::Serialize, serde::Deserialize)]
struct Kept {
    classic: bool,
    kernel: String,
}

/// Waits, the cluster up, until the user removes target/vm/k8s/up.
fn keep_up(kept: &Kept) -> Result<()> {
    let up = dir().join("up");
    std::fs::write(&up, serde_json::to_string(kept)?)?;
    eprintln!(
        "== the cluster stays up: kubectl as above; `cargo xtask vm k8s-conformance` \
         runs the conformance focus on it; `rm {}` tears it down",
        up.display()
    );
    while up.exists() {
        std::thread::sleep(Duration::from_secs(1));
    }
    Ok(())
}

/// `vm k8s-conformance`: the conformance focus again, on the cluster a
/// `vm k8s --keep` keeps up (no fifteen minutes of booting).
pub fn conformance_on_kept() -> Result<()> {
    let up = dir().join("up");
    let kept: Kept = std::fs::read_to_string(&up)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .with_context(|| {
            format!(
                "no kept cluster ({} missing): start one with `cargo xtask vm k8s --keep`",
                up.display()
            )
        })?;
    conformance::run(&Kubectl::admin(), kept.classic, &kept.kernel)
}

/// The images the nodes import: pause and agnhost (cached), and netplane's
/// own, rebuilt from this tree.
fn images(classic: bool) -> Result<()> {
    let images = dir().join("images");
    std::fs::create_dir_all(&images)?;
    let pause = images.join("pause.tar");
    if !pause.exists() {
        eprintln!("== image {PAUSE_IMAGE}: build/pause from the tree, static");
        let bin = dir().join("pause");
        let src = kubernetes::dir().join("src/build/pause/linux/pause.c");
        crate::cmd(
            "gcc",
            &[
                "-Os",
                "-static",
                "-Wall",
                "-Werror",
                "-DVERSION=v3.2-netplane",
                "-o",
                bin.to_str().expect("utf-8 path"),
                src.to_str().expect("utf-8 path"),
            ],
        )?;
        image::TestImage {
            name: PAUSE_IMAGE,
            files: vec![(bin, "/pause".into())],
            links: vec![],
            entrypoint: "/pause",
            cmd: "",
        }
        .build(&pause)?;
    }
    let agnhost = images.join("agnhost.tar");
    if !agnhost.exists() {
        eprintln!("== image {AGNHOST_IMAGE}: test/images/agnhost from the tree");
        agnhost_image().build(&agnhost)?;
    }
    let netplane = images.join("netplane.tar");
    let _ = std::fs::remove_file(&netplane);
    if !classic {
        image::build()?;
        std::fs::copy(image::archive(), &netplane)?;
    }
    Ok(())
}

/// agnhost as its Dockerfile makes it, from this machine's Debian packages
/// instead of Alpine's: the e2e suite runs shell commands in it (sh, curl,
/// nc, ip), so those are there too, with busybox for the rest of a shell's
/// tools. The shell is dash: busybox's own would run its `nc` applet, which
/// lacks the `-z` the suite uses, instead of OpenBSD's.
fn agnhost_image() -> image::TestImage<'static> {
    let mut links: Vec<(String, String)> = BUSYBOX_TOOLS
        .iter()
        .map(|t| (format!("/bin/{t}"), "busybox".to_string()))
        .collect();
    links.push(("/agnhost-2".into(), "agnhost".into()));
    image::TestImage {
        name: AGNHOST_IMAGE,
        files: vec![
            (kubernetes::dir().join("agnhost"), "/agnhost".into()),
            ("/bin/dash".into(), "/bin/sh".into()),
            ("/bin/busybox".into(), "/bin/busybox".into()),
            ("/usr/bin/curl".into(), "/usr/bin/curl".into()),
            ("/bin/nc.openbsd".into(), "/bin/nc".into()),
            ("/sbin/ip".into(), "/sbin/ip".into()),
        ],
        links,
        entrypoint: "/agnhost",
        cmd: "pause",
    }
}

/// The shell and the tools the e2e suite's commands use, from busybox.
const BUSYBOX_TOOLS: &[&str] = &[
    "cat", "echo", "sleep", "ls", "hostname", "wget", "timeout", "grep", "test", "[", "true",
    "false", "printf", "mkdir", "rm", "env", "ps", "kill", "nslookup", "head", "tail", "awk",
    "sed", "cut", "tr", "wc", "date", "id", "touch", "dd", "seq", "stat", "uname",
];

/// Waits for both nodes, deploys the pod network (netplane's DaemonSet
/// from deploy/, or nothing more with kubenet-classic), then the workload.
fn bring_up(kubectl: &Kubectl, classic: bool) -> Result<()> {
    let t = Instant::now();
    kubectl.until("both nodes registered", Duration::from_secs(600), |k| {
        Ok(k.run(&["get", "nodes", "-o", "name"])?.lines().count() == NODES.len())
    })?;
    let cidrs = |k: &Kubectl| {
        k.run(&[
            "get",
            "nodes",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.spec.podCIDR}{\"\\n\"}{end}",
        ])
    };
    kubectl.until(
        "pod CIDRs given by the controller manager",
        Duration::from_secs(600),
        |k| Ok(cidrs(k)?.lines().all(|l| l.contains('/'))),
    )?;
    for line in cidrs(kubectl)?.lines() {
        eprintln!("   {line} (node IPAM)");
    }
    if !classic {
        let deploy = workspace_root().join("deploy");
        eprintln!("== kubectl apply -f deploy/");
        kubectl.apply(&deploy)?;
        kubectl.run(&[
            "-n",
            "kube-system",
            "rollout",
            "status",
            "daemonset/netplane",
            "--timeout=900s",
        ])?;
        eprintln!(
            "   DaemonSet netplane ready on every node ({:.0} s)",
            t.elapsed().as_secs_f64()
        );
    }
    kubectl.run(&[
        "wait",
        "--for=condition=Ready",
        "node",
        "--all",
        "--timeout=600s",
    ])?;
    eprintln!("   nodes Ready ({:.0} s)", t.elapsed().as_secs_f64());
    // The cluster's DNS (dnsmasq on the control plane's VM) behind the
    // kube-dns Service.
    let dns = workspace_root().join("tests/k8s/cluster-dns.yaml");
    kubectl.apply(&dns)?;
    let web = workspace_root().join("tests/k8s/web.yaml");
    kubectl.apply(&web)?;
    kubectl.run(&["rollout", "status", "deployment/web", "--timeout=900s"])?;
    eprintln!(
        "   Deployment web ready ({:.0} s)",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// kubectl from the tree, run in the fabric namespace (on the VNet).
pub struct Kubectl {
    bin: PathBuf,
    config: PathBuf,
}

impl Kubectl {
    fn admin() -> Kubectl {
        Kubectl {
            bin: kubernetes::dir().join("kubectl"),
            config: dir().join("admin.kubeconfig"),
        }
    }

    pub fn config(&self) -> &Path {
        &self.config
    }

    /// Runs kubectl; its stdout, or its stderr in the error.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &machines::fabric_netns()])
            .arg(&self.bin)
            .arg("--kubeconfig")
            .arg(&self.config)
            .args(["--request-timeout", "60s"])
            .args(args)
            .output()
            .context("running kubectl")?;
        if !out.status.success() {
            bail!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// `kubectl apply -f`, retried: an API server under emulation sometimes
    /// times out a request (admission's quota evaluation, say).
    pub fn apply(&self, file: &Path) -> Result<()> {
        let file = file.to_str().expect("utf-8 path");
        let what = format!("kubectl apply -f {file}");
        self.until(&what, Duration::from_secs(300), |k| {
            k.run(&["apply", "-f", file]).map(|_| true)
        })
    }

    /// Retries `done` every 2 s until it holds, saying so every 30 s.
    pub fn until(
        &self,
        what: &str,
        limit: Duration,
        done: impl Fn(&Kubectl) -> Result<bool>,
    ) -> Result<()> {
        let started = Instant::now();
        let mut said = Instant::now();
        let mut last = String::new();
        loop {
            match done(self) {
                Ok(true) => {
                    eprintln!("   {what} ({:.0} s)", started.elapsed().as_secs_f64());
                    return Ok(());
                }
                Ok(false) => {}
                Err(e) => last = format!("{e:#}"),
            }
            if started.elapsed() > limit {
                bail!("{what}: not after {} s (last: {last})", limit.as_secs());
            }
            if said.elapsed() > Duration::from_secs(30) {
                eprintln!(
                    "   waiting: {what} ({:.0} s)",
                    started.elapsed().as_secs_f64()
                );
                said = Instant::now();
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }
}
