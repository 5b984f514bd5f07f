//! netplane-cni as a container runtime drives it: ADD, CHECK, DEL, DEL,
//! VERSION, a bad netns, concurrent ADDs, and pool exhaustion at max pods.
use std::{
    io::Write as _,
    path::PathBuf,
    process::{Command, Stdio},
};

use netplane::config::cluster::DEFAULT_CLUSTER;
use netplane_tests::privileged;
use serde_json::Value;

const NODE_NS: &str = "np-cnitest-node";
const PODS: usize = 11;

fn plugin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("netplane-cni");
    assert!(
        bin.exists(),
        "{} missing: run `cargo build -p netplane-cli -p netplane-user --bins`",
        bin.display()
    );
    bin
}

fn pod_ns(i: usize) -> String {
    format!("np-cnitest-pod-{i}")
}

/// Where the plugin keeps state, and its network configuration.
#[derive(Clone)]
struct World {
    run_dir: PathBuf,
    conf: String,
    /// The namespace the runtime calls the plugin in.
    node_ns: &'static str,
}

impl World {
    /// node-0 of `cluster` (written into `run_dir`), called in `node_ns`.
    fn new(run_dir: &std::path::Path, cluster: &str, node_ns: &'static str) -> Self {
        let file = run_dir.join("cluster.toml");
        std::fs::write(&file, cluster).unwrap();
        let conf = serde_json::json!({
            "cniVersion": "1.0.0", "name": "netplane", "type": "netplane-cni",
            "cluster": file, "node": "node-0",
        });
        World {
            run_dir: run_dir.to_path_buf(),
            conf: conf.to_string(),
            node_ns,
        }
    }
}

/// Removes the test's namespaces and state, passed or failed.
struct Cleanup {
    run_dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for i in 0..PODS {
            let _ = Command::new("ip")
                .args(["netns", "del", &pod_ns(i)])
                .status();
        }
        let _ = Command::new("ip").args(["netns", "del", NODE_NS]).status();
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs the plugin in the node namespace; returns (exit code, JSON or Null).
fn cni(w: &World, command: &str, container: &str, netns: &str) -> (i32, Value) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", w.node_ns])
        .arg(plugin())
        .env("NETPLANE_RUN_DIR", &w.run_dir)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/nonexistent")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(w.conf.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let v = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap()
    };
    (out.status.code().unwrap_or(-1), v)
}

fn netns_path(i: usize) -> String {
    format!("/run/netns/{}", pod_ns(i))
}

#[test]
fn cni_lifecycle() {
    if !privileged() {
        return;
    }
    let run_dir = std::env::temp_dir().join(format!("netplane-cnitest-{}", std::process::id()));
    std::fs::create_dir_all(&run_dir).unwrap();
    // Max pods 10: the smallest kubenet allows, so exhaustion comes quickly.
    let w = World::new(
        &run_dir,
        &DEFAULT_CLUSTER.replace("max_pods = 110", "max_pods = 10"),
        NODE_NS,
    );
    let _cleanup = Cleanup {
        run_dir: run_dir.clone(),
    };
    ip(&["netns", "add", NODE_NS]);
    for i in 0..PODS {
        ip(&["netns", "add", &pod_ns(i)]);
    }

    // VERSION
    let (code, v) = cni(&w, "VERSION", "", "");
    assert_eq!(code, 0);
    assert!(
        v["supportedVersions"]
            .as_array()
            .unwrap()
            .contains(&Value::from("1.0.0"))
    );

    // ADD: address, gateway, the pod's interface and route, the registry.
    let (code, v) = cni(&w, "ADD", "c0", &netns_path(0));
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["cniVersion"], "1.0.0");
    assert_eq!(v["ips"][0]["address"], "10.244.0.2/24");
    assert_eq!(v["ips"][0]["gateway"], "10.244.0.1");
    assert_eq!(v["interfaces"][1]["sandbox"], netns_path(0));
    let host_veth = v["interfaces"][0]["name"].as_str().unwrap().to_string();
    assert!(ip(&["-n", &pod_ns(0), "-4", "addr", "show", "eth0"]).contains("10.244.0.2/24"));
    assert!(ip(&["-n", &pod_ns(0), "route"]).contains("default via 10.244.0.1 dev eth0"));
    assert!(ip(&["-n", NODE_NS, "link", "show", &host_veth]).contains("state UP"));
    // The host side's MAC is set, not random (addr_assign_type 3, "set by
    // user"): udev's MACAddressPolicy=persistent leaves it alone, so the
    // gateway MAC a pod learns stays the veth's.
    let mac = netplane::cni::host_veth_mac("c0", "eth0");
    let mac = mac.map(|b| format!("{b:02x}")).join(":");
    assert_eq!(v["interfaces"][0]["mac"], mac.as_str(), "{v}");
    let assign_type = ip(&[
        "netns",
        "exec",
        NODE_NS,
        "cat",
        &format!("/sys/class/net/{host_veth}/addr_assign_type"),
    ]);
    assert_eq!(
        assign_type.trim(),
        "3",
        "the host veth's MAC is not marked as set"
    );
    let record: Value = serde_json::from_slice(
        &std::fs::read(run_dir.join("nodes/node-0/pods/c0.json")).expect("registry record"),
    )
    .unwrap();
    assert_eq!(record["ip"], "10.244.0.2");
    assert_eq!(record["host_ifname"], host_veth);

    // CHECK, DEL, CHECK fails, DEL again is fine.
    assert_eq!(cni(&w, "CHECK", "c0", &netns_path(0)).0, 0);
    assert_eq!(cni(&w, "DEL", "c0", &netns_path(0)).0, 0);
    let (code, v) = cni(&w, "CHECK", "c0", &netns_path(0));
    assert_eq!((code, v["code"].as_u64()), (1, Some(101)), "{v}");
    assert_eq!(cni(&w, "DEL", "c0", &netns_path(0)).0, 0);
    let links = ip(&["-n", NODE_NS, "link", "show"]);
    assert!(!links.contains(&host_veth), "host veth left after DEL");
    assert!(!run_dir.join("nodes/node-0/pods/c0.json").exists());

    // A netns that does not exist: the spec's invalid-environment error.
    let (code, v) = cni(&w, "ADD", "ghost", "/run/netns/np-cnitest-missing");
    assert_eq!(code, 1);
    assert_eq!(v["code"], 4, "{v}");
    assert!(v["msg"].as_str().unwrap().contains("CNI_NETNS"));

    // The kernel refuses (the host veth's name is taken): a CNI I/O error
    // carrying the kernel's reason, and the address given back.
    let taken = netplane::cni::host_veth_name("clash", "eth0");
    ip(&[
        "-n",
        NODE_NS,
        "link",
        "add",
        &taken,
        "type",
        "veth",
        "peer",
        "name",
        "np-clash-peer",
    ]);
    let (code, v) = cni(&w, "ADD", "clash", &netns_path(0));
    assert_eq!((code, v["code"].as_u64()), (1, Some(5)), "{v}");
    assert!(
        v["details"].as_str().unwrap().contains("File exists"),
        "the kernel's reason: {v}"
    );
    ip(&["-n", NODE_NS, "link", "del", &taken]);
    assert!(!run_dir.join("nodes/node-0/pods/clash.json").exists());

    // Concurrent ADDs: every pod a different address.
    let handles: Vec<_> = (0..10)
        .map(|i| {
            let w = w.clone();
            std::thread::spawn(move || cni(&w, "ADD", &format!("c{i}"), &netns_path(i)))
        })
        .collect();
    let mut ips: Vec<String> = handles
        .into_iter()
        .map(|h| {
            let (code, v) = h.join().unwrap();
            assert_eq!(code, 0, "{v}");
            v["ips"][0]["address"].as_str().unwrap().to_string()
        })
        .collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 10, "duplicate addresses: {ips:?}");

    // Max pods (10) reached: the 11th pod is refused, nothing left behind.
    let (code, v) = cni(&w, "ADD", "c10", &netns_path(10));
    assert_eq!((code, v["code"].as_u64()), (1, Some(100)), "{v}");
    assert!(
        ip(&["-n", &pod_ns(10), "link", "show"])
            .lines()
            .all(|l| !l.contains("eth0"))
    );

    for i in 0..10 {
        assert_eq!(cni(&w, "DEL", &format!("c{i}"), &netns_path(i)).0, 0);
    }
    let left = std::fs::read_dir(run_dir.join("nodes/node-0/ipam"))
        .unwrap()
        .count();
    assert_eq!(left, 1, "only the lock file should remain");
}

/// The CNI store on a full disk: ADD fails with the kernel's reason and
/// leaves nothing behind (no veth, no address taken); with room again the
/// next ADD gets the first address.
#[test]
fn a_full_disk_fails_add_and_leaves_nothing_behind() {
    if !privileged() {
        return;
    }
    const NODE: &str = "np-cnifull-node";
    const POD: &str = "np-cnifull-pod";
    let run_dir = std::env::temp_dir().join(format!("netplane-cnifull-{}", std::process::id()));
    std::fs::create_dir_all(&run_dir).unwrap();
    /// Unmounts, removes and deletes what the test made.
    struct Full(PathBuf);
    impl Drop for Full {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
            let _ = std::fs::remove_dir_all(&self.0);
            for ns in ["np-cnifull-node", "np-cnifull-pod"] {
                let _ = Command::new("ip").args(["netns", "del", ns]).status();
            }
        }
    }
    let _cleanup = Full(run_dir.clone());
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=512k", "netplane-cnifull"])
        .arg(&run_dir)
        .status()
        .unwrap();
    assert!(mounted.success(), "mounting a small tmpfs");
    let w = World::new(&run_dir, DEFAULT_CLUSTER, NODE);
    ip(&["netns", "add", NODE]);
    ip(&["netns", "add", POD]);
    // Fill the disk to the last block.
    let filler = run_dir.join("filler");
    {
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    let pod_netns = format!("/run/netns/{POD}");
    let (code, v) = cni(&w, "ADD", "full", &pod_netns);
    assert_ne!(code, 0, "ADD on a full disk succeeded: {v}");
    let said = v.to_string();
    assert!(
        said.contains("No space left on device"),
        "the error names the reason: {said}"
    );
    let host_links = ip(&["-n", NODE, "-o", "link", "show"]);
    assert_eq!(
        host_links.lines().count(),
        1,
        "only lo is left in the node namespace:\n{host_links}"
    );
    let pod_links = ip(&["-n", POD, "-o", "link", "show"]);
    assert!(
        !pod_links.contains("eth0"),
        "no eth0 is left in the pod:\n{pod_links}"
    );

    // Room again: the first address, so the failed ADD took none.
    std::fs::remove_file(&filler).unwrap();
    let (code, v) = cni(&w, "ADD", "full", &pod_netns);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["ips"][0]["address"], "10.244.0.2/24", "{v}");
    assert_eq!(cni(&w, "DEL", "full", &pod_netns).0, 0);
}
