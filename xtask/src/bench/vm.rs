//! `cargo xtask bench --vm`: the suite's traffic tests with each data path
//! (E, K, R) on VMs of their own — two nodes and the load balancer with
//! `inet` as a namespace in it, booted as `vm test` boots them — for hosts
//! with KVM. E is provisioned by vagrant/provision/netplane.sh; K and R get
//! the lab's kernel data paths (classic.rs) from the scripts below. Under
//! software emulation (these machines) absolute numbers mean nothing and
//! even the ratios mostly measure the emulator; docs/bench/vm.md says so.
use std::{fmt::Write as _, time::Instant};

use anyhow::{Context, Result, ensure};
use netplane_bench_model::tools::{TcpCrr, TcpRr, UdpFlood, UdpSink};
use serde_json::{Value, json};

use super::{
    Options,
    model::{BENCH_POOL, Dp, Results, Run, Samples},
    report::fmt,
    suite::write_bench_cluster,
};
use crate::{
    vm::{
        kernel,
        machines::{self, Boot, Cluster, Machine, Provision},
    },
    workspace_root,
};

/// The default cluster's facts the kernel data paths need (E reads them
/// from the cluster file itself): (machine, node IP, pod CIDR).
const NODES: [(&str, &str, &str); 2] = [
    ("node-0", "10.224.0.4", "10.244.0.0/24"),
    ("node-1", "10.224.0.5", "10.244.1.0/24"),
];
const CLUSTER_POD_CIDR: &str = "10.244.0.0/16";
const FRONTEND: &str = "198.51.100.10";
const LB_OUTSIDE: &str = "203.0.113.1";
const INET: &str = "203.0.113.10";
/// The load balancer's first port: its blocks follow one another from here.
const FIRST_PORT: u32 = 1024;
const PODS_PER_NODE: usize = 2;
const SERVER_POD_IP: &str = "10.244.1.2";

pub fn run(opts: &Options) -> Result<()> {
    let secs = if opts.quick { 3.0 } else { 10.0 };
    let vmlinuz = kernel::ensure(kernel::Kernel::V6_12)?;
    machines::preflight()?;
    let cluster = write_bench_cluster("cluster.toml", None)?;
    let boot = |dp: Dp| Boot {
        provision: if dp == Dp::E {
            Provision::Netplane
        } else {
            Provision::Bare
        },
        cluster: cluster.clone(),
        uplink_xdp: false,
        bin: workspace_root().join("target/release"),
    };
    let started = Instant::now();
    let mut run = Run::default();
    for round in 0..opts.rounds {
        for i in 0..Dp::ALL.len() {
            let dp = Dp::ALL[(round + i) % Dp::ALL.len()];
            eprintln!(
                "== round {}/{}: {} on VMs [{:.0} s so far]",
                round + 1,
                opts.rounds,
                dp.describe(),
                started.elapsed().as_secs_f64()
            );
            let vms = Cluster::boot(&vmlinuz, &boot(dp))?;
            let measured = (|| {
                if dp != Dp::E {
                    kernel_datapath(&vms, dp)?;
                }
                measure(&vms, dp, secs)
            })();
            vms.shut_down();
            let samples = measured?;
            eprintln!(
                "   {}",
                samples
                    .iter()
                    .map(|(k, v)| format!("{k} {v:.1}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            run.samples.push((dp, round, samples));
        }
    }
    run.seconds = started.elapsed().as_secs_f64();
    let raw = json!({
        "quick": opts.quick,
        "rounds": opts.rounds,
        "seconds_per_test": secs,
        "seconds": run.seconds,
        "runs": run.samples.iter().map(|(dp, round, s)| json!({"datapath": dp.letter(), "round": round, "samples": s})).collect::<Vec<_>>(),
    });
    let dir = workspace_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("vm-results.json"),
        serde_json::to_vec_pretty(&raw)?,
    )?;
    // Summarised as the lab's runs are: medians, and ratios per round.
    let results = super::results::from_run(&run, opts)?;
    let doc = workspace_root().join("docs/bench/vm.md");
    std::fs::write(&doc, report(&results, opts, secs, run.seconds)?)?;
    eprintln!(
        "written: {} and target/bench/vm-results.json ({:.0} s)",
        doc.display(),
        run.seconds
    );
    Ok(())
}

/// The port block of node `i` at the load balancer (allocated_outbound_ports
/// = BENCH_POOL each, in node order, from FIRST_PORT).
fn block(i: usize) -> (u32, u32) {
    let lo = FIRST_PORT + i as u32 * BENCH_POOL;
    (lo, lo + BENCH_POOL - 1)
}

/// K or R on the booted VMs, as the lab builds them in namespaces
/// (netplane-lab/src/classic.rs): pods by the CNI bridge (K) or ptp
/// (R) plugin with host-local IPAM, kernel routes between nodes, and for K
/// kubenet's MASQUERADE and the load balancer's SNAT rules.
fn kernel_datapath(vms: &Cluster, dp: Dp) -> Result<()> {
    let classic = dp == Dp::K;
    for (i, (name, _, cidr)) in NODES.iter().enumerate() {
        let mut script = String::from("set -e\nsysctl -qw net.ipv4.ip_forward=1\n");
        for (_, other_ip, other_cidr) in NODES.iter().filter(|n| n.0 != *name) {
            writeln!(script, "ip route add {other_cidr} via {other_ip}")?;
        }
        let gateway = cidr.replace(".0/24", ".1");
        let conf = cni_conf(classic, cidr, &gateway);
        let plugin = if classic { "bridge" } else { "ptp" };
        for j in 0..PODS_PER_NODE {
            let pod = format!("pod-{i}-{j}");
            writeln!(
                script,
                "ip netns add {pod}\n\
                 printf '%s' '{conf}' | CNI_COMMAND=ADD CNI_CONTAINERID={pod} \
                 CNI_NETNS=/run/netns/{pod} CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni \
                 /usr/lib/cni/{plugin} >/dev/null"
            )?;
        }
        if classic {
            writeln!(
                script,
                "iptables -w -t nat -A POSTROUTING -s {cidr} ! -d {CLUSTER_POD_CIDR} -j MASQUERADE"
            )?;
        }
        vms.get(name).ok(&script)?;
    }
    let mut script = format!(
        "set -e\n\
         ip netns add inet\n\
         ip link add eth1 type veth peer name eth0 netns inet\n\
         ip addr add {LB_OUTSIDE}/24 dev eth1\nip link set eth1 up\n\
         ip -n inet addr add {INET}/24 dev eth0\n\
         ip -n inet link set lo up\nip -n inet link set eth0 up\n\
         sysctl -qw net.ipv4.ip_forward=1\n"
    );
    if classic {
        writeln!(
            script,
            "ip -n inet route add {FRONTEND}/32 via {LB_OUTSIDE}"
        )?;
        for (i, (_, node_ip, _)) in NODES.iter().enumerate() {
            let (lo, hi) = block(i);
            for (proto, to) in [
                ("tcp", format!("{FRONTEND}:{lo}-{hi}")),
                ("udp", format!("{FRONTEND}:{lo}-{hi}")),
                ("icmp", FRONTEND.to_string()),
            ] {
                writeln!(
                    script,
                    "iptables -w -t nat -A POSTROUTING -o eth1 -s {node_ip} -p {proto} \
                     -j SNAT --to-source {to}"
                )?;
            }
        }
    } else {
        for (_, node_ip, cidr) in NODES {
            writeln!(script, "ip route add {cidr} via {node_ip}")?;
        }
        writeln!(
            script,
            "ip -n inet route add {CLUSTER_POD_CIDR} via {LB_OUTSIDE}"
        )?;
    }
    vms.get("lb").ok(&script)?;
    Ok(())
}

/// The lab's CNI configuration for K (kubenet's bridge on cbr0) or R (ptp).
fn cni_conf(classic: bool, cidr: &str, gateway: &str) -> String {
    let ipam = json!({
        "type": "host-local",
        "subnet": cidr,
        "gateway": gateway,
        "routes": [{ "dst": "0.0.0.0/0" }],
        "dataDir": "/run/cni-ipam",
    });
    let conf = if classic {
        json!({
            "cniVersion": "1.0.0", "name": "kubenet", "type": "bridge", "bridge": "cbr0",
            "isGateway": true, "hairpinMode": true, "ipMasq": false, "ipam": ipam,
        })
    } else {
        json!({ "cniVersion": "1.0.0", "name": "routed", "type": "ptp", "ipMasq": false, "ipam": ipam })
    };
    conf.to_string()
}

fn bench_bin() -> String {
    workspace_root()
        .join("target/release/netplane-bench")
        .display()
        .to_string()
}

/// A loadgen server in `netns` on `m`, its JSON kept in /tmp/TAG.json.
fn serve(m: &Machine, netns: &str, tag: &str, args: &str) -> Result<()> {
    m.ok(&format!(
        "ip netns exec {netns} {} loadgen {args} >/tmp/{tag}.json 2>/tmp/{tag}.err </dev/null &\n\
         echo $! >/tmp/{tag}.pid\nsleep 1",
        bench_bin()
    ))?;
    Ok(())
}

/// Waits for a server that ends by itself; its JSON.
fn finish<T: serde::de::DeserializeOwned>(m: &Machine, tag: &str) -> Result<T> {
    let out = m.ok(&format!(
        "pid=$(cat /tmp/{tag}.pid); i=0\n\
         while kill -0 $pid 2>/dev/null && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done\n\
         cat /tmp/{tag}.json"
    ))?;
    serde_json::from_str(out.trim()).with_context(|| format!("{tag}: not JSON: {out}"))
}

/// Stops a server this run started, by its PID.
fn stop(m: &Machine, tag: &str) {
    let _ = m.ok(&format!("kill $(cat /tmp/{tag}.pid) 2>/dev/null; true"));
}

/// A loadgen client in pod-0-0 on node-0; its JSON.
fn client<T: serde::de::DeserializeOwned>(vms: &Cluster, args: &str) -> Result<T> {
    let out = vms.get("node-0").ok(&format!(
        "ip netns exec pod-0-0 {} loadgen {args}",
        bench_bin()
    ))?;
    serde_json::from_str(out.trim()).with_context(|| format!("loadgen {args}: not JSON: {out}"))
}

/// The suite's traffic tests (suite.rs), on the VMs.
fn measure(vms: &Cluster, dp: Dp, secs: f64) -> Result<Samples> {
    let (node0, node1, lb) = (vms.get("node-0"), vms.get("node-1"), vms.get("lb"));
    let mut s = Samples::new();
    if dp == Dp::E {
        same_blocks_as_netplane(lb)?;
    }
    addresses_seen(vms, dp)?;

    serve(
        node1,
        "pod-1-0",
        "sink",
        &format!("udp-sink --port 9000 --secs {} --idle-ms 1000", secs + 5.0),
    )?;
    client::<UdpFlood>(
        vms,
        &format!("udp-flood --to {SERVER_POD_IP}:9000 --payload 18 --secs {secs}"),
    )?;
    let got: UdpSink = finish(node1, "sink")?;
    s.insert("udp_pps_cross_node".into(), got.packets_per_second);

    node0.ok("ip netns exec pod-0-0 sysctl -qw net.ipv4.ip_local_port_range='1024 65535'")?;
    serve(
        node1,
        "pod-1-0",
        "echo",
        &format!("tcp-echo --port 9001 --secs {}", 2.0 * secs + 30.0),
    )?;
    let measured = (|| -> Result<()> {
        let rr: TcpRr = client(
            vms,
            &format!("tcp-rr --to {SERVER_POD_IP}:9001 --secs {secs}"),
        )?;
        s.insert("tcp_rr_p50_us".into(), rr.p50_us);
        s.insert("tcp_rr_p99_us".into(), rr.p99_us);
        let crr: TcpCrr = client(
            vms,
            &format!("tcp-crr --to {SERVER_POD_IP}:9001 --secs {secs}"),
        )?;
        s.insert("crr_pod".into(), crr.per_second);
        Ok(())
    })();
    stop(node1, "echo");
    measured?;

    serve(
        lb,
        "inet",
        "echo",
        &format!("tcp-echo --port 9002 --secs {}", secs + 30.0),
    )?;
    let crr: Result<TcpCrr> = client(
        vms,
        &format!(
            "tcp-crr --to {INET}:9002 --secs {secs} --max-connections {}",
            u64::from(BENCH_POOL) * 9 / 10
        ),
    );
    stop(lb, "echo");
    let crr = crr?;
    s.insert("crr_snat".into(), crr.per_second);
    s.insert("crr_snat_failures".into(), crr.failures as f64);

    node1.ok(
        "ip netns exec pod-1-0 iperf3 -s -1 -p 5201 >/dev/null 2>&1 </dev/null & \
         echo $! >/tmp/iperf.pid; sleep 1",
    )?;
    let out = node0.ok(&format!(
        "ip netns exec pod-0-0 iperf3 -c {SERVER_POD_IP} -p 5201 -J -t {secs}"
    ));
    stop(node1, "iperf");
    let v: Value = serde_json::from_str(out?.trim()).context("iperf3 -J output")?;
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| format!("iperf3: {}", v["error"]))?;
    s.insert("iperf_1".into(), bps / 1e9);
    Ok(s)
}

/// Before measuring: each data path does what it stands for. Pod to pod
/// keeps the source; egress reaches inet from the frontend IP through E's
/// and K's two SNAT stages, and untranslated through R.
fn addresses_seen(vms: &Cluster, dp: Dp) -> Result<()> {
    let np = workspace_root().join("target/release/netplane");
    let np = np.display();
    let expected_at_inet = if dp == Dp::R {
        "10.244.0.2:"
    } else {
        "198.51.100.10:"
    };
    for (m, netns, target, expected) in [
        (
            "node-1",
            "pod-1-0",
            format!("{SERVER_POD_IP}:7000"),
            "10.244.0.2:",
        ),
        ("lb", "inet", format!("{INET}:7000"), expected_at_inet),
    ] {
        vms.get(m).ok(&format!(
            "ip netns exec {netns} {np} whoami serve --max 1 --timeout 60 >/tmp/whoami.log 2>&1 </dev/null &\n\
             for i in $(seq 100); do grep -q listening /tmp/whoami.log && exit 0; sleep 0.2; done; exit 1"
        ))?;
        let out = vms.get("node-0").ok(&format!(
            "ip netns exec pod-0-0 {np} whoami ask {target} --timeout 20 --json"
        ))?;
        let v: Value =
            serde_json::from_str(out.trim()).with_context(|| format!("not JSON: {out}"))?;
        let seen = v["seen_as"].as_str().context("seen_as")?;
        ensure!(
            seen.starts_with(expected),
            "{}: {target} saw pod-0-0 as {seen}, not {expected}…",
            dp.describe()
        );
        eprintln!("   {target} saw pod-0-0 as {seen}");
    }
    Ok(())
}

/// K's SNAT rules use the blocks [`block`] computes; netplane's load
/// balancer must hold the same ones, or the two would not be compared on
/// equal terms.
fn same_blocks_as_netplane(lb: &Machine) -> Result<()> {
    let np = workspace_root().join("target/release/netplane");
    let out = lb.ok(&format!("{} ports --node lb --json", np.display()))?;
    let v: Value = serde_json::from_str(out.trim()).context("netplane ports --json")?;
    for (i, (node, ..)) in NODES.iter().enumerate() {
        let b = v["agents"]["lb"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|b| b["block_of"] == *node)
            .with_context(|| format!("the lb has no block of {node}: {v}"))?;
        let (lo, hi) = block(i);
        ensure!(
            b["ports"] == format!("{lo}-{hi}").as_str(),
            "{node}'s block at the lb is {}, the kernel data paths' {lo}-{hi}",
            b["ports"]
        );
    }
    Ok(())
}

/// docs/bench/vm.md: the lab's summary of the same metrics (medians,
/// and E/K, E/R taken within each round, then their median).
fn report(results: &Results, opts: &Options, secs: f64, seconds: f64) -> Result<String> {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let emulated = "software emulation (QEMU TCG: this host's /dev/kvm does not boot stock guests)";
    let mut md = String::new();
    writeln!(
        md,
        "# The benchmark on VMs\n\n\
         Measured by `cargo xtask bench --vm{}` ({} round{}, {secs:.0} s per test, {seconds:.0} s in all) \
         on a {cpus}-CPU host, three 1-vCPU VMs (two nodes and the load balancer with `inet` as a \
         namespace in it) under {emulated}, guest kernel Debian bookworm-backports 6.12.\n\n\
         **These numbers are the emulator's, not the data paths'.** Every guest instruction is \
         translated by QEMU, so per-packet work that costs nanoseconds on hardware costs \
         microseconds here, three VMs share two host CPUs, and each VM's one vCPU also runs \
         whatever else its data path needs (E's agent). The run shows that the suite works \
         on VMs, each data path on virtio-net with a kernel of its own; run it on a host with KVM \
         (`bench --vm` boots with `--disable-kvm` only where KVM does not work) for numbers that \
         mean something. The lab's results are in [../benchmarks.md](../benchmarks.md).\n",
        if opts.quick { " --quick" } else { "" },
        opts.rounds,
        if opts.rounds == 1 { "" } else { "s" },
    )?;
    writeln!(
        md,
        "Summarised as the lab's runs are: medians, and E/K and E/R taken within each round, \
         then their median (↑: higher is better, ↓: lower).\n"
    )?;
    writeln!(
        md,
        "| metric | unit | E: netplane | K: classic kubenet | R: plain routing | E/K | E/R |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|")?;
    let value = |v: Option<super::model::Spread>| v.map_or("–".to_string(), |s| fmt(s.median));
    let ratio = |v: Option<super::model::Spread>| {
        v.map_or("–".to_string(), |s| format!("{:.2}", s.median))
    };
    for x in &results.metrics {
        writeln!(
            md,
            "| `{}` {} | {}{} | {} | {} | {} | {} | {} |",
            x.name,
            x.what,
            x.unit,
            if x.higher_is_better { " ↑" } else { " ↓" },
            value(x.e),
            value(x.k),
            value(x.r),
            ratio(x.ratio_ek),
            ratio(x.ratio_er),
        )?;
    }
    writeln!(
        md,
        "\nE is provisioned by vagrant/provision/netplane.sh as `vm test` does (agents without the \
         optional XDP program, as in the lab's benchmark); K and R are set up on the same VMs as \
         the lab builds them (xtask/src/bench/vm.rs). The cluster is the benchmark's (the default \
         with a {BENCH_POOL}-port block per node); E's run checks that netplane's load balancer \
         holds the same blocks K's SNAT rules use. Raw samples: target/bench/vm-results.json."
    )?;
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_blocks_follow_one_another_and_fit_the_port_space() {
        assert_eq!(block(0), (1024, 1024 + BENCH_POOL - 1));
        assert_eq!(block(1).0, block(0).1 + 1);
        assert!(block(NODES.len() - 1).1 <= 65_535);
    }

    #[test]
    fn the_page_shows_the_lab_summary_of_what_ran() {
        let samples = |pps: f64, p99: f64| -> Samples {
            [
                ("udp_pps_cross_node".to_string(), pps),
                ("tcp_rr_p99_us".to_string(), p99),
            ]
            .into()
        };
        let run = Run {
            samples: vec![
                (Dp::E, 0, samples(200.0, 10.0)),
                (Dp::K, 0, samples(100.0, 20.0)),
                (Dp::R, 0, samples(160.0, 5.0)),
            ],
            ..Run::default()
        };
        let opts = Options {
            quick: true,
            rounds: 1,
            gate: false,
            vm: true,
        };
        let results = super::super::results::from_run(&run, &opts).unwrap();
        let md = report(&results, &opts, 3.0, 10.0).unwrap();
        // The lab's ratios, E over K and E over R, for latencies too.
        assert!(
            md.contains("| packets/s ↑ | 200.0 | 100.0 | 160.0 | 2.00 | 1.25 |"),
            "{md}"
        );
        assert!(
            md.contains("| µs ↓ | 10.0 | 20.0 | 5.000 | 0.50 | 2.00 |"),
            "{md}"
        );
        // What did not run has no row.
        assert!(!md.contains("`crr_pod`"), "{md}");
    }
}
