//! `cargo xtask vm vagrant`: the users' deployment in `vagrant/`, run for
//! real on this machine. It builds the box from Debian's repository
//! (`vagrant/box/build.sh`: no Vagrant Cloud here), starts a libvirtd of its
//! own inside a network namespace (its bridges, DHCP and NAT stay there),
//! runs `vagrant up` with the libvirt provider, checks the README's demo on
//! the VMs, then `vagrant destroy` and stops the daemons by PID, also when a
//! step fails. Not in CI: software emulation makes it take minutes.
use std::{
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use super::machines::ip;
use crate::workspace_root;

/// Debian packages: Vagrant and its libvirt provider, the daemon and its
/// QEMU driver, the box's builder, and libvirt's DHCP server.
pub const PACKAGES: &[&str] = &[
    "vagrant",
    "vagrant-libvirt",
    "libvirt-daemon-system",
    "libvirt-daemon-driver-qemu",
    "mmdebstrap",
    "dnsmasq-base",
];
const NETNS: &str = "npvagrant";
const BOX_NAME: &str = "netplane/bookworm";
/// How vagrant-libvirt names the box's image in libvirt's storage pool.
const BOX_VOLUME_PREFIX: &str = "netplane-VAGRANTSLASH-bookworm_vagrant_box_image";
const LIBVIRT_URI: &str = "qemu:///system";
/// The networks the Vagrantfile and vagrant-libvirt define.
const NETWORKS: &[&str] = &["netplane-vnet", "netplane-internet", "vagrant-libvirt"];
const NODES: &[&str] = &["node-0", "node-1"];
const UP_LIMIT: Duration = Duration::from_secs(30 * 60);

fn dir() -> PathBuf {
    workspace_root().join("target/vagrant")
}

/// Options of `cargo xtask vm vagrant`.
pub struct Options {
    /// libvirt's domain type: "qemu" (software emulation) or "kvm".
    pub driver: String,
    /// The cluster file (None: the default cluster); the demo expects the
    /// default cluster's two nodes, with either outbound type.
    pub cluster: Option<PathBuf>,
}

pub fn test(opts: &Options) -> Result<()> {
    let started = Instant::now();
    let box_file = ensure_box()?;
    let libvirt = Libvirt::start()?;
    let result = (|| -> Result<()> {
        let vagrant = Vagrant::new(opts)?;
        vagrant.add_box(&box_file)?;
        // A run that was killed may have left machines behind.
        vagrant.run(&["destroy", "-f"], Duration::from_secs(300))?;
        delete_box_volumes();
        eprintln!("== vagrant up (libvirt, driver {})", opts.driver);
        let t = Instant::now();
        vagrant.run(&["up", "--provider", "libvirt"], UP_LIMIT)?;
        eprintln!("   up in {:.0} s", t.elapsed().as_secs_f64());
        let machines = vagrant.machines()?;
        let outbound = if machines.iter().any(|m| m == "appliance") {
            "appliance"
        } else {
            "lb"
        };
        let result = demo(&vagrant.ssh()?, outbound);
        eprintln!("== vagrant destroy");
        let destroyed = vagrant.run(&["destroy", "-f"], Duration::from_secs(300));
        result.and(destroyed)
    })();
    delete_box_volumes();
    for net in NETWORKS {
        let _ = virsh(&["net-destroy", net]);
        let _ = virsh(&["net-undefine", net]);
    }
    libvirt.stop();
    result?;
    eprintln!(
        "== vm vagrant: passed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The box file, built again when `build.sh` changed since.
fn ensure_box() -> Result<PathBuf> {
    let script = workspace_root().join("vagrant/box/build.sh");
    let out = dir().join("netplane-bookworm.box");
    if modified(&out).is_some_and(|b| modified(&script).is_some_and(|s| b > s)) {
        eprintln!("== box: {} (up to date)", out.display());
        return Ok(out);
    }
    eprintln!("== box: building {} (vagrant/box/build.sh)", out.display());
    crate::step("sh", &[path_str(&script)?, path_str(&out)?], &[])?;
    Ok(out)
}

fn modified(p: &Path) -> Option<SystemTime> {
    fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().context("the path is not UTF-8")
}

fn virsh(args: &[&str]) -> Result<String> {
    let out = Command::new("virsh")
        .args(["-q", "-c", LIBVIRT_URI])
        .args(args)
        .output()
        .context("running virsh")?;
    if !out.status.success() {
        bail!(
            "virsh {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The box's image in the storage pool: vagrant-libvirt reuses one of the
/// same name, so a rebuilt box would not reach the VMs if it stayed.
fn delete_box_volumes() {
    let Ok(list) = virsh(&["vol-list", "default"]) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        if name.starts_with(BOX_VOLUME_PREFIX) {
            let _ = virsh(&["vol-delete", "--pool", "default", name]);
        }
    }
}

/// virtlogd and libvirtd, started by this run inside [`NETNS`].
struct Libvirt {
    daemons: Vec<Child>,
}

impl Libvirt {
    fn start() -> Result<Libvirt> {
        stop_leftovers();
        if virsh(&["version"]).is_ok() {
            bail!(
                "a libvirtd already answers on {LIBVIRT_URI}; this command starts its own \
                 in a private network namespace, so stop that one first"
            );
        }
        let run = dir().join("run");
        fs::create_dir_all(&run)?;
        ip(&["netns", "add", NETNS])?;
        let mut libvirt = Libvirt {
            daemons: Vec::new(),
        };
        let started = (|| -> Result<()> {
            ip(&["-n", NETNS, "link", "set", "lo", "up"])?;
            for daemon in ["virtlogd", "libvirtd"] {
                let log = fs::File::create(run.join(format!("{daemon}.log")))?;
                let child = Command::new("ip")
                    .args(["netns", "exec", NETNS, daemon])
                    .stdout(log.try_clone()?)
                    .stderr(log)
                    .spawn()
                    .with_context(|| format!("starting {daemon}"))?;
                libvirt.daemons.push(child);
            }
            let pids: Vec<String> = libvirt.daemons.iter().map(|c| c.id().to_string()).collect();
            fs::write(run.join("pids"), pids.join("\n"))?;
            let deadline = Instant::now() + Duration::from_secs(30);
            while virsh(&["version"]).is_err() {
                ensure!(
                    Instant::now() < deadline,
                    "libvirtd did not answer in 30 s (see target/vagrant/run/libvirtd.log)"
                );
                std::thread::sleep(Duration::from_millis(300));
            }
            Ok(())
        })();
        if let Err(e) = started {
            libvirt.stop();
            return Err(e);
        }
        eprintln!("== libvirtd running in namespace {NETNS}");
        Ok(libvirt)
    }

    fn stop(mut self) {
        // libvirtd first: virtlogd writes the VMs' logs until they are gone.
        for child in self.daemons.iter_mut().rev() {
            stop_pid(child.id());
            let _ = child.wait();
        }
        let _ = ip(&["netns", "del", NETNS]);
        let _ = fs::remove_file(dir().join("run/pids"));
    }
}

/// The daemons of a run that was killed, by the PIDs it recorded (only
/// while the PID still names one of them), and its namespace.
fn stop_leftovers() {
    let pids = fs::read_to_string(dir().join("run/pids")).unwrap_or_default();
    for pid in pids.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if matches!(comm.trim(), "libvirtd" | "virtlogd") {
            eprintln!("   stopping {} (pid {pid}) of an earlier run", comm.trim());
            stop_pid(pid);
        }
    }
    let _ = ip(&["netns", "del", NETNS]);
}

/// SIGTERM, then SIGKILL after 10 s.
fn stop_pid(pid: u32) {
    let alive = || Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid);
    let _ = Command::new("kill").arg(pid.to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    if alive() {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
}

fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'))
    })
}

/// Vagrant, run inside [`NETNS`] (it reaches the VMs over libvirt's
/// management network there), with its state under target/vagrant.
struct Vagrant {
    env: Vec<(&'static str, String)>,
}

impl Vagrant {
    fn new(opts: &Options) -> Result<Vagrant> {
        let d = dir();
        let bin = workspace_root().join("target/release");
        let mut env = vec![
            ("VAGRANT_HOME", d.join("home").display().to_string()),
            ("VAGRANT_DOTFILE_PATH", d.join("dot").display().to_string()),
            ("VAGRANT_DEFAULT_PROVIDER", "libvirt".into()),
            ("NETPLANE_BOX", BOX_NAME.into()),
            ("NETPLANE_BIN", bin.display().to_string()),
            ("NETPLANE_LIBVIRT_DRIVER", opts.driver.clone()),
        ];
        if let Some(c) = &opts.cluster {
            let c = fs::canonicalize(c).with_context(|| format!("{}", c.display()))?;
            env.push(("NETPLANE_CLUSTER", c.display().to_string()));
        }
        Ok(Vagrant { env })
    }

    /// The machines the Vagrantfile defines, as Vagrant lists them.
    fn machines(&self) -> Result<Vec<String>> {
        let out = self.command(&["status", "--machine-readable"]).output()?;
        ensure!(
            out.status.success(),
            "vagrant status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Lines: timestamp,target,type,data...
        let text = String::from_utf8_lossy(&out.stdout);
        let mut names: Vec<String> = text
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                (f.len() > 3 && f[2] == "state").then(|| f[1].to_string())
            })
            .collect();
        names.dedup();
        Ok(names)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", NETNS, "vagrant"])
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v.as_str())))
            .current_dir(workspace_root().join("vagrant"));
        c
    }

    /// The box, added again when the file is newer than the added copy.
    fn add_box(&self, file: &Path) -> Result<()> {
        let added = dir().join("home/boxes/netplane-VAGRANTSLASH-bookworm");
        if modified(&added).is_some_and(|a| modified(file).is_some_and(|f| a > f)) {
            return Ok(());
        }
        eprintln!("== vagrant box add {BOX_NAME}");
        self.run(
            &["box", "add", "--force", "--name", BOX_NAME, path_str(file)?],
            Duration::from_secs(300),
        )
    }

    /// Runs vagrant, its output in target/vagrant/vagrant.log and its
    /// progress lines ("==> machine: ...") on stderr, within `limit`.
    fn run(&self, args: &[&str], limit: Duration) -> Result<()> {
        let log_path = dir().join("vagrant.log");
        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        use std::io::Write;
        writeln!(log, "$ vagrant {}", args.join(" "))?;
        let mut child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(log.try_clone()?)
            .spawn()
            .context("running vagrant")?;
        let pid = child.id();
        let watchdog = std::thread::spawn(move || {
            let deadline = Instant::now() + limit;
            while Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(500));
                if !Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid) {
                    return false;
                }
            }
            stop_pid(pid);
            true
        });
        for line in BufReader::new(child.stdout.take().context("stdout")?).lines() {
            let line = line?;
            writeln!(log, "{line}")?;
            if line.starts_with("==> ") || line.contains("netplane.sh:") {
                eprintln!("   {}", line.trim());
            }
        }
        let status = child.wait()?;
        let timed_out = watchdog.join().unwrap_or(false);
        ensure!(
            !timed_out,
            "vagrant {} took longer than {} s",
            args.join(" "),
            limit.as_secs()
        );
        ensure!(
            status.success(),
            "vagrant {} failed ({status}); see {}",
            args.join(" "),
            log_path.display()
        );
        Ok(())
    }

    /// An ssh client config for the machines (`vagrant ssh` starts Ruby on
    /// every call; plain ssh with this config does not).
    fn ssh(&self) -> Result<Ssh> {
        let out = self.command(&["ssh-config"]).output()?;
        ensure!(
            out.status.success(),
            "vagrant ssh-config: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let config = dir().join("ssh-config");
        fs::write(&config, &out.stdout)?;
        Ok(Ssh { config })
    }
}

struct Ssh {
    config: PathBuf,
}

impl Ssh {
    /// `script` as root on `machine`; its stdout, or an error with both
    /// streams.
    fn ok(&self, machine: &str, script: &str) -> Result<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", NETNS, "timeout", "120", "ssh", "-F"])
            .arg(&self.config)
            .args([machine, "sudo", "sh", "-c"])
            .arg(shell_quote(script))
            .output()?;
        ensure!(
            out.status.success(),
            "{machine}: `{script}` failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

const NP: &str = "/opt/netplane/bin/netplane";

/// The README's demo on the machines, each step checked; `outbound` is
/// "lb" or "appliance" (userDefinedRouting).
fn demo(ssh: &Ssh, outbound: &str) -> Result<()> {
    eprintln!("== the agents: systemd units");
    for m in NODES.iter().chain(&[outbound]) {
        let state = ssh.ok(m, "systemctl is-active netplane-agent")?;
        ensure!(state.trim() == "active", "{m}: netplane-agent is {state}");
    }
    eprintln!("   active on node-0, node-1 and {outbound}");
    // What inet sees: a frontend IP of the load balancer (its port blocks
    // say which), or the appliance's own outside address.
    let slot = node0_slot(ssh, outbound)?;
    let seen_from = slot["snat_ip"].as_str().context("snat_ip")?.to_string();

    eprintln!("== pod to pod across machines, the source kept");
    serve(ssh, "node-1", Some("pod-1-0"))?;
    let seen = ask(ssh, "10.244.1.2:7000")?;
    ensure!(seen.starts_with("10.244.0.2:"), "pod-1-0 saw {seen}");
    eprintln!("   pod-1-0 saw {seen}");

    eprintln!("== egress through both SNAT stages, seen from inet");
    serve(ssh, "inet", None)?;
    let seen = ask(ssh, "203.0.113.10:7000")?;
    ensure!(
        seen.starts_with(&format!("{seen_from}:")),
        "inet saw {seen}, not {seen_from}"
    );
    eprintln!("   inet saw {seen}");

    eprintln!("== netplane routes, nat and ports on the machines");
    let routes = ssh.ok("node-0", &format!("{NP} routes"))?;
    ensure!(
        routes.contains("10.244.1.0/24") && routes.contains("10.224.0.5"),
        "node-0's routes lack node-1's pod CIDR: {routes}"
    );
    let nat0 = ssh.ok("node-0", &format!("{NP} nat --json"))?;
    ensure!(
        nat0.contains("10.224.0.4:"),
        "node-0 translated nothing: {nat0}"
    );
    let nat_out = ssh.ok(outbound, &format!("{NP} nat --json"))?;
    ensure!(
        nat_out.contains(&format!("{seen_from}:")),
        "{outbound} translated nothing to {seen_from}: {nat_out}"
    );
    let slot = node0_slot(ssh, outbound)?;
    ensure!(
        slot["allocated"].as_u64() >= Some(1),
        "{outbound} holds no port for node-0: {slot}"
    );
    eprintln!("   node-0 routes to node-1's pods; node-0 and {outbound} hold the translations");

    eprintln!("== no kernel route to a pod on the nodes");
    for m in NODES {
        let n = ssh.ok(
            m,
            "ip route show table all | grep -c '^10\\.244\\.' || true",
        )?;
        ensure!(n.trim() == "0", "{m}: kernel routes to pods: {n}");
    }
    Ok(())
}

/// The outbound agent's SNAT slot node-0's flows use, from `netplane ports`:
/// node-0's block at the load balancer, the appliance's one slot.
fn node0_slot(ssh: &Ssh, outbound: &str) -> Result<Value> {
    let ports: Value = serde_json::from_str(&ssh.ok(outbound, &format!("{NP} ports --json"))?)
        .with_context(|| format!("{outbound}: netplane ports --json"))?;
    ports["agents"][outbound]
        .as_array()
        .into_iter()
        .flatten()
        .find(|b| outbound == "appliance" || b["block_of"] == "node-0")
        .cloned()
        .with_context(|| format!("{outbound}: no SNAT slot for node-0: {ports}"))
}

/// A whoami server answering one client, on `machine` (in `netns` if set).
fn serve(ssh: &Ssh, machine: &str, netns: Option<&str>) -> Result<()> {
    let exec = netns.map_or(String::new(), |n| format!("ip netns exec {n} "));
    ssh.ok(
        machine,
        &format!(
            "{exec}{NP} whoami serve --max 1 --timeout 150 >/tmp/whoami.log 2>&1 </dev/null &
             for i in $(seq 100); do grep -q listening /tmp/whoami.log && exit 0; sleep 0.2; done; exit 1"
        ),
    )?;
    Ok(())
}

/// `whoami ask` from pod-0-0 on node-0: the address the server saw.
fn ask(ssh: &Ssh, target: &str) -> Result<String> {
    let out = ssh.ok(
        "node-0",
        &format!("ip netns exec pod-0-0 {NP} whoami ask {target} --timeout 20 --json"),
    )?;
    let v: Value = serde_json::from_str(out.trim()).with_context(|| format!("not JSON: {out}"))?;
    Ok(v["seen_as"].as_str().context("seen_as")?.to_string())
}
