//! `vm k8s --conformance`: Kubernetes' own e2e suite (e2e.test, built from
//! the tree) against the cluster, focused on sig-network's conformance
//! tests for pod networking and ClusterIP and NodePort Services. Its repo
//! list points the suite's registries at `localhost`, where the images
//! built here are (nothing is pulled). ginkgo's summary is printed; its
//! full output and JUnit report stay under target/vm/k8s/.
use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};

use super::{Kubectl, dir, results};
use crate::{kubernetes, vm::machines::fabric_netns};

/// The tests, by the words of their names (a ginkgo focus). DNS's are left
/// out: no cluster DNS server can be built here (docs/kubernetes.md).
pub const FOCUS: &str = r"\[sig-network\] (Networking Granular Checks: Pods should function for (intra-pod|node-pod) communication: (http|udp)|Services should (serve a basic endpoint from pods|serve multiport endpoints from pods|be able to create a functioning NodePort service)) .*\[Conformance\]";

/// Where a run's output and report go.
pub fn report_dir(classic: bool) -> PathBuf {
    dir().join(if classic {
        "conformance-classic"
    } else {
        "conformance-netplane"
    })
}

pub fn run(kubectl: &Kubectl, classic: bool, guest_kernel: &str) -> Result<()> {
    let report = report_dir(classic);
    let _ = std::fs::remove_dir_all(&report);
    std::fs::create_dir_all(&report)?;
    let repo_list = dir().join("repo-list.yaml");
    std::fs::write(
        &repo_list,
        "promoterE2eRegistry: localhost/e2e-test-images\ngcRegistry: localhost\n",
    )?;
    eprintln!(
        "== conformance ({}): e2e.test {}, focus {FOCUS}",
        if classic {
            "kubenet-classic"
        } else {
            "netplane"
        },
        kubernetes::VERSION
    );
    results::start(&report, classic, guest_kernel)?;
    let started = Instant::now();
    let log_path = report.join("e2e.log");
    let mut child = Command::new("ip")
        .args(["netns", "exec", &fabric_netns()])
        .arg(kubernetes::dir().join("e2e.test"))
        .arg(format!("--kubeconfig={}", kubectl.config().display()))
        .arg(format!(
            "--kubectl-path={}",
            kubernetes::dir().join("kubectl").display()
        ))
        .args(["--provider=skeleton", "--num-nodes=2"])
        .arg(format!("--ginkgo.focus={FOCUS}"))
        .args(["--ginkgo.noColor", "--ginkgo.succinct"])
        .arg(format!("--report-dir={}", report.display()))
        .env("KUBE_TEST_REPO_LIST", &repo_list)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting e2e.test")?;
    // Both streams into the log; the lines that say how it goes, here.
    let stderr = child.stderr.take().expect("piped");
    let err_log = report.join("e2e.stderr.log");
    let copier = std::thread::spawn(move || -> std::io::Result<()> {
        let mut f = std::fs::File::create(err_log)?;
        std::io::copy(&mut BufReader::new(stderr), &mut f)?;
        Ok(())
    });
    let mut log = String::new();
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        let t = line.trim_start();
        if t.starts_with("•")
            || t.starts_with("Ran ")
            || t.starts_with("SUCCESS!")
            || t.starts_with("FAIL!")
            || t.starts_with("[Fail]")
            || t.starts_with("[sig-network]")
        {
            eprintln!("   {t}");
        }
        log.push_str(&line);
        log.push('\n');
    }
    let status = child.wait()?;
    let _ = copier.join();
    std::fs::write(&log_path, &log)?;
    eprintln!(
        "   e2e.test ended ({status}) after {:.0} s; output {}, JUnit report {}",
        started.elapsed().as_secs_f64(),
        log_path.display(),
        report.join("junit_01.xml").display()
    );
    // ginkgo's JUnit report is the record; its absence is a failed run.
    let record = results::record(&report)?;
    print_record(&record);
    let failed = record.tests.iter().filter(|t| !t.passed).count();
    if !status.success() || failed > 0 || record.tests.is_empty() {
        bail!(
            "the conformance focus failed ({status}): {failed} of {} tests failed",
            record.tests.len()
        );
    }
    Ok(())
}

/// Re-records the last run of a data path from its report directory.
pub fn record_again(classic: bool) -> Result<()> {
    print_record(&results::record(&report_dir(classic))?);
    Ok(())
}

fn print_record(record: &results::Record) {
    for t in &record.tests {
        eprintln!(
            "   {} {}{}",
            if t.passed { "passed" } else { "FAILED" },
            t.name,
            t.failure
                .as_deref()
                .map(|f| format!(": {f}"))
                .unwrap_or_default()
        );
    }
    eprintln!("   recorded in docs/k8s-conformance/ (results.md: both data paths side by side)");
}
