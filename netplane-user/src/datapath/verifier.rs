//! The verifier as a budget: every program of the object loaded under every
//! load option, with the instructions the kernel's verifier processed for
//! it (`verified_insns`) held against [`VERIFIER_BUDGET`]; and the one line
//! a user reads when the kernel refuses a program (docs/verifier.md).
use std::{collections::BTreeMap, path::PathBuf};

use anyhow::{Context, Result};
use aya::programs::{Program, ProgramError};
use netplane_common::{
    limits::{VERIFIER_BUDGET, VERIFIER_LIMIT},
    maps::programs,
};
use serde::Serialize;

use super::{Datapath, LoadOptions};

/// The load options that change what the verifier sees: flow events on or
/// off, and each level of the programs' own log (a level turns the log
/// calls below it into dead code the verifier prunes).
pub fn variants() -> Vec<LoadOptions> {
    use aya_log::Level::*;
    let mut out = Vec::new();
    for flow_events in [true, false] {
        for log_level in [Error, Warn, Info, Debug, Trace] {
            out.push(LoadOptions {
                flow_events,
                log_level,
                // The tables' size does not change what is verified; small
                // ones keep ten loads quick.
                nat_entries: 1024,
                ..LoadOptions::default()
            });
        }
    }
    out
}

/// One program under one variant.
#[derive(Debug, Clone, Serialize)]
pub struct Count {
    pub program: String,
    pub flow_events: bool,
    pub log_level: String,
    /// Instructions the verifier processed: the kernel's count when it
    /// accepted the program, the log's when it refused it.
    pub processed: Option<u32>,
    /// Why the kernel refused it (one line), if it did.
    pub refused: Option<String>,
}

impl Count {
    pub fn within_budget(&self) -> bool {
        self.refused.is_none() && self.processed.is_some_and(|n| n <= VERIFIER_BUDGET)
    }
}

/// Every program under every variant, on this kernel.
#[derive(Debug, Serialize)]
pub struct Table {
    pub kernel: String,
    pub budget: u32,
    pub limit: u32,
    pub counts: Vec<Count>,
    /// Programs in the object that `programs::ALL` does not list (a new
    /// program must join the list, so that nothing escapes the budget).
    pub unlisted: Vec<String>,
}

impl Table {
    /// Loads each program under each of [`variants`]; `progress` hears
    /// about each variant as it starts.
    pub fn measure(progress: &mut dyn FnMut(&str)) -> Result<Table> {
        let mut counts = Vec::new();
        let mut unlisted = Vec::new();
        for opts in variants() {
            let level = format!("{:?}", opts.log_level).to_lowercase();
            progress(&format!(
                "flow events {}, log level {level}",
                if opts.flow_events { "on" } else { "off" }
            ));
            let mut dp = Datapath::load(&opts)?;
            let in_object: Vec<String> = dp.bpf.programs().map(|(n, _)| n.to_string()).collect();
            for name in &in_object {
                if !programs::ALL.contains(&name.as_str()) && !unlisted.contains(name) {
                    unlisted.push(name.clone());
                }
            }
            for name in programs::ALL {
                let (processed, refused) = if in_object.iter().any(|n| n == name) {
                    match dp.verify(name) {
                        Ok(n) => (n, None),
                        Err(r) => (r.processed, Some(r.summary())),
                    }
                } else {
                    (None, Some("not in the object".to_string()))
                };
                counts.push(Count {
                    program: name.to_string(),
                    flow_events: opts.flow_events,
                    log_level: level.clone(),
                    processed,
                    refused,
                });
            }
        }
        Ok(Table {
            kernel: kernel_release(),
            budget: VERIFIER_BUDGET,
            limit: VERIFIER_LIMIT,
            counts,
            unlisted,
        })
    }

    /// The counts over budget or refused.
    pub fn failures(&self) -> Vec<&Count> {
        self.counts.iter().filter(|c| !c.within_budget()).collect()
    }

    /// Per program, its largest count over the variants (and the variant).
    pub fn worst(&self) -> BTreeMap<&str, &Count> {
        let mut worst: BTreeMap<&str, &Count> = BTreeMap::new();
        for c in &self.counts {
            let e = worst.entry(c.program.as_str()).or_insert(c);
            let bad = |x: &Count| (x.refused.is_some(), x.processed.unwrap_or(0));
            if bad(c) > bad(e) {
                *e = c;
            }
        }
        worst
    }

    /// A table per program: its least and largest count, the variant of
    /// the largest, and its share of the budget.
    pub fn render(&self) -> String {
        let mut out = format!(
            "verifier budget on kernel {}: {} instructions per program ({} % of the kernel's {})\n",
            self.kernel,
            group(self.budget),
            self.budget * 100 / self.limit,
            group(self.limit)
        );
        out += &format!(
            "{:<18} {:>10} {:>10} {:>8}  {}\n",
            "program", "least", "largest", "budget", "largest under"
        );
        for (program, w) in self.worst() {
            let least = self
                .counts
                .iter()
                .filter(|c| c.program == program)
                .filter_map(|c| c.processed)
                .min()
                .unwrap_or(0);
            let largest = w.processed.unwrap_or(0);
            let status = match &w.refused {
                Some(why) => format!("REFUSED: {why}"),
                None if largest > self.budget => "OVER BUDGET".to_string(),
                None => format!(
                    "flow events {}, log {}",
                    if w.flow_events { "on" } else { "off" },
                    w.log_level
                ),
            };
            out += &format!(
                "{program:<18} {:>10} {:>10} {:>7}%  {status}\n",
                group(least),
                group(largest),
                u64::from(largest) * 100 / u64::from(self.budget),
            );
        }
        for name in &self.unlisted {
            out +=
                &format!("{name:<18} UNLISTED: add it to netplane_common::maps::programs::ALL\n");
        }
        out
    }
}

/// The counts last recorded, per kernel series ("6.1") and program: each
/// program's largest over the variants. A count that grows by more than
/// [`GROWTH_FLAG_PERCENT`] over it is flagged, so that a change that makes
/// a program costlier to verify says so (docs/verifier.md).
pub type Baseline = BTreeMap<String, BTreeMap<String, u32>>;

/// Growth over the recorded count that a review must see.
pub const GROWTH_FLAG_PERCENT: u64 = 20;

/// "6.18.44-fc-v1300" as "6.18".
pub fn kernel_series(release: &str) -> String {
    release.split('.').take(2).collect::<Vec<_>>().join(".")
}

/// A program whose largest count grew past the flag.
#[derive(Debug, Clone, Serialize)]
pub struct Growth {
    pub program: String,
    pub recorded: u32,
    pub now: u32,
}

impl Table {
    /// Each program's largest count.
    pub fn largest(&self) -> BTreeMap<String, u32> {
        self.worst()
            .into_iter()
            .map(|(p, c)| (p.to_string(), c.processed.unwrap_or(0)))
            .collect()
    }

    /// The programs that grew by more than GROWTH_FLAG_PERCENT over the
    /// baseline's counts for this kernel series (none recorded: none).
    pub fn growth(&self, baseline: &Baseline) -> Vec<Growth> {
        let Some(recorded) = baseline.get(&kernel_series(&self.kernel)) else {
            return Vec::new();
        };
        self.largest()
            .into_iter()
            .filter_map(|(program, now)| {
                let was = *recorded.get(&program)?;
                (u64::from(now) * 100 > u64::from(was) * (100 + GROWTH_FLAG_PERCENT)).then_some(
                    Growth {
                        program,
                        recorded: was,
                        now,
                    },
                )
            })
            .collect()
    }

    /// Writes this kernel series' counts into the baseline.
    pub fn record(&self, baseline: &mut Baseline) {
        baseline.insert(kernel_series(&self.kernel), self.largest());
    }
}

/// 1234567 as "1,234,567".
fn group(n: u32) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The running kernel's release, as `uname -r` prints it.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

/// The helpers netplane's programs call that a kernel of the 5.x series
/// may lack, with the release that brought each: a refusal for an unknown
/// helper names the kernel the data path needs.
const HELPERS_SINCE: [(&str, &str); 7] = [
    ("bpf_ringbuf_output", "5.8"),
    ("bpf_ringbuf_query", "5.8"),
    ("bpf_redirect_neigh", "5.10"),
    ("bpf_redirect_peer", "5.10"),
    ("bpf_ktime_get_coarse_ns", "5.11"),
    ("bpf_check_mtu", "5.12"),
    ("bpf_loop", "5.17"),
];

/// A program the kernel refused: what a user can act on, with the
/// verifier's whole log in a file rather than on the terminal.
#[derive(Debug)]
pub struct Refusal {
    pub program: String,
    pub kernel: String,
    /// Instructions processed, from the log's last "processed N insns".
    pub processed: Option<u32>,
    /// The log's last line that says what went wrong.
    pub reason: String,
    pub log: Option<PathBuf>,
}

impl Refusal {
    /// Reads a load error; a verifier log goes to `verifier/<program>.log`
    /// under the run directory (`lab down` removes it with the rest).
    pub fn from_load_error(program: &str, err: ProgramError) -> Refusal {
        let (log_text, reason) = match &err {
            ProgramError::LoadError {
                io_error,
                verifier_log,
            } => (verifier_log.to_string(), io_error.to_string()),
            other => (String::new(), other.to_string()),
        };
        let mut refusal = Refusal::from_log(program, &log_text, &reason);
        if !log_text.is_empty() {
            refusal.log = write_log(program, &log_text).ok();
        }
        refusal
    }

    /// What a verifier log says: the count of its last "processed N insns"
    /// line and its last line that says what went wrong (`fallback` for
    /// an empty log).
    pub fn from_log(program: &str, log: &str, fallback: &str) -> Refusal {
        let processed = log
            .lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix("processed "))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok());
        let reason = log
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| {
                !l.is_empty()
                    && !l.starts_with("processed ")
                    && !l.starts_with("verification time")
                    && !l.starts_with("stack depth")
            })
            .unwrap_or(fallback)
            .to_string();
        Refusal {
            program: program.to_string(),
            kernel: kernel_release(),
            processed,
            reason,
            log: None,
        }
    }

    /// One line: the program, the kernel, the count against the limit,
    /// the helper the kernel lacks and which kernel brought it, or the
    /// verifier's last word.
    pub fn summary(&self) -> String {
        if let Some(n) = self.processed
            && n >= VERIFIER_LIMIT
        {
            return format!(
                "too large: the verifier processed {} instructions (limit {})",
                group(n),
                group(VERIFIER_LIMIT)
            );
        }
        let lacking = self
            .reason
            .split("unknown func ")
            .nth(1)
            .map(|f| f.split('#').next().unwrap_or(f).trim());
        match lacking.and_then(|f| HELPERS_SINCE.iter().find(|(h, _)| *h == f)) {
            Some((helper, since)) => format!(
                "this kernel lacks the helper {helper}, which Linux {since} brought ({})",
                self.reason
            ),
            None => self.reason.clone(),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the kernel ({}) refused program {}: {}",
            self.kernel,
            self.program,
            self.summary()
        )?;
        if let Some(log) = &self.log {
            write!(f, "; the verifier's log: {}", log.display())?;
        }
        write!(f, "; see docs/verifier.md")
    }
}

impl std::error::Error for Refusal {}

fn write_log(program: &str, text: &str) -> Result<PathBuf> {
    let dir = crate::paths::verifier_logs();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{program}.log"));
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

impl Datapath {
    /// Loads (verifies) program `name` if it is not loaded yet; returns
    /// the kernel's count of the instructions its verifier processed.
    pub fn verify(&mut self, name: &str) -> Result<Option<u32>, Refusal> {
        let plain = |reason: &str| Refusal {
            program: name.to_string(),
            kernel: kernel_release(),
            processed: None,
            reason: reason.to_string(),
            log: None,
        };
        let prog = self
            .bpf
            .program_mut(name)
            .ok_or_else(|| plain("not in the object"))?;
        let loaded = match prog {
            Program::SchedClassifier(p) if p.fd().is_err() => p.load(),
            Program::Xdp(p) if p.fd().is_err() => p.load(),
            Program::SchedClassifier(_) | Program::Xdp(_) => Ok(()),
            _ => return Err(plain("not a TC or XDP program")),
        };
        loaded.map_err(|e| Refusal::from_load_error(name, e))?;
        Ok(prog
            .info()
            .ok()
            .and_then(|i| i.verified_instruction_count()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_for_size_reads_as_the_count_against_the_limit() {
        let log = "0: (bf) r6 = r1\n...\nBPF program is too large. Processed 1000001 insn\n\
                   processed 1000001 insns (limit 1000000) max_states_per_insn 36 total_states 25790\n";
        let r = Refusal::from_log("lb_from_vnet", log, "Argument list too long");
        assert_eq!(r.processed, Some(1_000_001));
        assert_eq!(
            r.summary(),
            "too large: the verifier processed 1,000,001 instructions (limit 1,000,000)"
        );
        let line = r.to_string();
        assert!(line.starts_with("the kernel ("), "{line}");
        assert!(
            line.contains("refused program lb_from_vnet: too large"),
            "{line}"
        );
        assert!(line.ends_with("see docs/verifier.md"), "{line}");
        assert!(!line.contains('\n'), "{line}");
    }

    #[test]
    fn another_refusal_reads_as_the_verifiers_last_word() {
        let log =
            "func#0 @0\n12: R1 invalid mem access 'scalar'\nprocessed 40 insns (limit 1000000)\n";
        let r = Refusal::from_log("from_pod", log, "Permission denied");
        assert_eq!(r.processed, Some(40));
        assert_eq!(r.summary(), "12: R1 invalid mem access 'scalar'");
        let old = Refusal::from_log(
            "from_pod",
            "1234: (85) call unknown#181\nunknown func bpf_loop#181\nprocessed 900 insns\n",
            "Invalid argument",
        );
        assert_eq!(
            old.summary(),
            "this kernel lacks the helper bpf_loop, which Linux 5.17 brought (unknown func bpf_loop#181)"
        );
        let empty = Refusal::from_log("from_pod", "", "Permission denied (os error 13)");
        assert_eq!(empty.summary(), "Permission denied (os error 13)");
    }

    #[test]
    fn growth_past_a_fifth_is_flagged_per_kernel_series() {
        let count = |program: &str, n| Count {
            program: program.to_string(),
            flow_events: true,
            log_level: "info".to_string(),
            processed: Some(n),
            refused: None,
        };
        let table = Table {
            kernel: "6.1.0-57-amd64".to_string(),
            budget: VERIFIER_BUDGET,
            limit: VERIFIER_LIMIT,
            counts: vec![count("a", 1_200), count("a", 900), count("b", 1_201)],
            unlisted: Vec::new(),
        };
        let mut baseline = Baseline::new();
        assert!(table.growth(&baseline).is_empty(), "nothing recorded");
        baseline.insert(
            "6.1".to_string(),
            [("a".to_string(), 1_000), ("b".to_string(), 1_000)].into(),
        );
        let flagged: Vec<String> = table
            .growth(&baseline)
            .into_iter()
            .map(|g| g.program)
            .collect();
        assert_eq!(flagged, ["b"], "1,200 is 20 %, 1,201 more");
        table.record(&mut baseline);
        assert!(table.growth(&baseline).is_empty());
        assert_eq!(baseline["6.1"]["a"], 1_200);
        assert_eq!(kernel_series("6.18.44-fc-v1300"), "6.18");
    }

    #[test]
    fn counts_group_by_thousands() {
        assert_eq!(group(51), "51");
        assert_eq!(group(250_000), "250,000");
        assert_eq!(group(1_000_001), "1,000,001");
    }
}
