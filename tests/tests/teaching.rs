//! The teaching guides run as written: every ```sh block of
//! docs/teaching.md, in order, on a fresh lab, with `netplane` on PATH.
//! For each block the table below names the facts the guide states; each
//! must appear in the guide's own output block under it *and* in what the
//! block really printed, so neither the lab nor the guide can drift alone.
//! The Japanese guide must hold the same commands and show the same facts.
use std::{path::PathBuf, process::Command, time::Duration};

use netplane_tests::{labkit::*, privileged};

/// A command block, by its first line, and the facts its output shows
/// (regular expressions).
struct Step {
    starts: &'static str,
    facts: &'static [&'static str],
}

const STEPS: &[Step] = &[
    Step {
        starts: "netplane lab up",
        facts: &[],
    },
    Step {
        starts: "netplane routes --node node-0",
        facts: &[r"10\.244\.1\.0/24\s+VirtualAppliance\s+10\.224\.0\.5\s+node-1"],
    },
    Step {
        starts: "netplane lab exec node-1 -- tcpdump",
        facts: &[
            r"IP 10\.244\.0\.2 > 10\.244\.1\.2: ICMP echo request",
            r"IP 10\.244\.1\.2 > 10\.244\.0\.2: ICMP echo reply",
            r"ttl=62",
        ],
    },
    Step {
        starts: "netplane lab exec pod-0-0 -- traceroute",
        facts: &[
            r" 1  10\.224\.0\.4",
            r" 2  10\.224\.0\.5",
            r" 3  10\.244\.1\.2",
        ],
    },
    Step {
        starts: "netplane lab exec pod-1-0 -- netplane whoami serve",
        facts: &[r"the server saw 10\.244\.0\.2:\d+ \(unchanged\)"],
    },
    Step {
        starts: "netplane trace pod-0-0 pod-1-0",
        facts: &[
            r"ROUTES\[10\.244\.1\.2\] -> next hop 10\.224\.0\.5",
            r"deliver to local pod pod-1-0",
            r"ttl 62",
        ],
    },
    Step {
        starts: "netplane lab exec lb -- tcpdump",
        facts: &[
            r"the server saw 198\.51\.100\.10:\d+ \(translated\)",
            r"IP 10\.224\.0\.4\.\d+ > 203\.0\.113\.10\.7000: Flags \[S\]",
        ],
    },
    Step {
        starts: "netplane nat",
        facts: &[
            r"tcp\s+10\.224\.0\.4:\d+\s+203\.0\.113\.10:7000\s+198\.51\.100\.10:\d+\s+time_wait",
            r"tcp\s+10\.244\.0\.2:\d+\s+203\.0\.113\.10:7000\s+10\.224\.0\.4:\d+\s+time_wait",
        ],
    },
    Step {
        starts: "netplane lab exec pod-0-0 -- netplane whoami ask 172.16.0.1:53",
        facts: &[
            r"no answer from 172\.16\.0\.1:53/udp",
            r"system_route_none \(20\)\s+1",
            r"Default  172\.16\.0\.0/12\s+None",
        ],
    },
    Step {
        starts: "netplane lab down >/dev/null 2>&1; netplane lab up --datapath kubenet-classic",
        facts: &[
            r" 1  10\.244\.0\.1 ",
            r"10\.244\.1\.0/24 via 10\.224\.0\.5 dev eth0",
            r"-A POSTROUTING -s 10\.244\.0\.0/24 ! -d 10\.244\.0\.0/16 -j MASQUERADE",
        ],
    },
    Step {
        starts: "netplane lab exec inet -- ping",
        facts: &[r"Network is unreachable", r"nat_no_mapping \(13\)\s+1"],
    },
    Step {
        starts: "netplane plan --nodes 400",
        facts: &[
            r"routes \(limit 400\)\s+401",
            r"PROBLEM: 401 routes exceed the route table limit of 400",
            r"routes \(limit 400\)\s+400 ",
        ],
    },
    Step {
        starts: "sed 's|service_cidr",
        facts: &[r"network\.service_cidr = 10\.224\.0\.0/16: must not overlap network\.vnet_cidr"],
    },
    Step {
        starts: "sed 's/# allocated_outbound_ports = 1024/allocated_outbound_ports = 64/'",
        facts: &[
            r"64 of 65 connections to 203\.0\.113\.10:7000 opened, 1 failed",
            r"198\.51\.100\.10\s+1024-1087\s+node-0\s+64\s+64\s+64\s+[1-9]",
            r"1088-1151\s+node-1\s+64\s+0\s+0\s+0 ",
        ],
    },
    Step {
        starts: "sed 's/# allocated_outbound_ports = 1024/allocated_outbound_ports = 40000/'",
        facts: &[
            r"2 nodes x 40000 ports = 80000 > 64000 x 1 frontend IP\(s\)",
            r"198\.51\.100\.10\s+1024-41023\s+node-0\s+40000",
            r"198\.51\.100\.10\s+41024-65023\s+node-1\s+24000",
            r"198\.51\.100\.11\s+1024-17023\s+node-1\s+16000",
        ],
    },
    Step {
        starts: "netplane lab down >/dev/null 2>&1; netplane lab up --config /tmp/64.toml",
        // 64 ports back every 15 s: 256 in the minute, give or take the
        // ports of the last seconds.
        facts: &[r"(2[4-6]\d) opened, \d+ failed"],
    },
    Step {
        starts: "sed -e 's/type = \"loadBalancer\" /type = \"userDefinedRouting\"/'",
        facts: &[
            r"the server saw 203\.0\.113\.2:\d+ \(translated\)",
            r"203\.0\.113\.2\s+1024-65535\s+all nodes",
        ],
    },
    Step {
        starts: "netplane lab down >/dev/null 2>&1; netplane lab up --source kubernetes",
        facts: &[
            r"(?m)^10\.244\.1\.2$",
            r"kube-system/kube-dns:dns\s+10\.0\.0\.10:53/udp\s+\d+ 10\.244\.1\.4:53",
        ],
    },
    Step {
        starts: "netplane lab service empty",
        facts: &[r"10\.0\.1\.3:80/tcp: Connection refused"],
    },
    Step {
        starts: "netplane plan --nodes 50 --max-pods 30 --mode azure-cni",
        facts: &[
            r"addresses needed\s+1581",
            r"subnet prefix\s+21 ",
            r"cluster pod CIDR prefix\s+18 ",
            r"routes \(limit 400\)\s+51 ",
            r"routes \(limit 400\)\s+0 ",
        ],
    },
    Step {
        starts: "netplane lab down",
        facts: &[],
    },
];

/// The guide's ```sh blocks, each with the plain ``` block right after it
/// (its output), if any.
fn blocks(guide: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut lines = guide.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim() != "```sh" {
            continue;
        }
        let cmd: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        while lines.peek().is_some_and(|l| l.trim().is_empty()) {
            lines.next();
        }
        let mut expected = String::new();
        if lines.peek().is_some_and(|l| l.trim() == "```") {
            lines.next();
            let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
            expected = body.join("\n");
        }
        out.push((cmd.join("\n"), expected));
    }
    out
}

fn guide(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../docs")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn regex(fact: &str) -> regex::Regex {
    regex::Regex::new(fact).unwrap_or_else(|e| panic!("fact {fact:?}: {e}"))
}

/// Both guides hold the same commands, in STEPS' order, and each states
/// its step's facts in the output it shows. Needs no lab.
#[test]
fn the_guides_state_the_facts_the_steps_check() {
    let en = blocks(&guide("teaching.md"));
    let ja = blocks(&guide("teaching.ja.md"));
    let commands = |b: &[(String, String)]| b.iter().map(|(c, _)| c.clone()).collect::<Vec<_>>();
    assert_eq!(
        commands(&en),
        commands(&ja),
        "the Japanese guide runs other commands"
    );
    assert_eq!(
        en.len(),
        STEPS.len(),
        "a command block the steps do not know, or the other way"
    );
    for (step, ((cmd, en_out), (_, ja_out))) in STEPS.iter().zip(en.iter().zip(&ja)) {
        assert!(
            cmd.starts_with(step.starts),
            "block {cmd:?} is not the step {:?}",
            step.starts
        );
        for fact in step.facts {
            for (lang, shown) in [("en", en_out), ("ja", ja_out)] {
                assert!(
                    regex(fact).is_match(shown),
                    "{lang}: the output shown under {:?} does not state {fact:?}",
                    step.starts
                );
            }
        }
    }
}

/// Every block run in order on a fresh lab; each fact found in what it
/// printed.
#[test]
fn the_lessons_run_as_written() {
    if !privileged() {
        return;
    }
    let (_turn, _guard) = lab_turn();
    let bin_dir = netplane_bin().parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut failures = Vec::new();
    for (step, (cmd, _)) in STEPS.iter().zip(blocks(&guide("teaching.md"))) {
        let out = Command::new("timeout")
            .args(["--kill-after=5", "240", "bash", "-c"])
            // Both streams in one, in the order they were written.
            .arg(format!("exec 2>&1\n{cmd}\nwait"))
            .env("PATH", &path)
            .current_dir(&root)
            .output()
            .unwrap();
        let printed = String::from_utf8_lossy(&out.stdout).into_owned();
        eprintln!("$ {cmd}\n{printed}");
        // What each block printed, for refreshing the guides' output blocks.
        if let Some(dir) = std::env::var_os("NETPLANE_TEACHING_OUT") {
            let n = STEPS.iter().position(|s| std::ptr::eq(s, step)).unwrap();
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(PathBuf::from(&dir).join(format!("{n:02}.txt")), &printed).unwrap();
        }
        for fact in step.facts {
            if !regex(fact).is_match(&printed) {
                failures.push(format!(
                    "{:?}: {fact:?} not in what it printed",
                    step.starts
                ));
            }
        }
        // Servers in the background end on their own; give their ports back.
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
