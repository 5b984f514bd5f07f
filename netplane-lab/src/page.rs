//! The web page's process (`lab up --ui`): `netplane ui` started beside the
//! agents, its URL kept in the lab's state for `lab status`, stopped by
//! `lab down`.
use std::{
    net::SocketAddr,
    os::unix::process::CommandExt as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{
    agents::{pid_alive, stop_pid},
    topology::PageProc,
};
use netplane::paths;

/// How long `netplane ui` may take to say where it listens.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts `netplane ui --listen LISTEN` and waits for its first line.
pub(super) fn start(listen: SocketAddr) -> Result<PageProc> {
    let log = paths::lab_dir().join("ui.log");
    let out = std::fs::File::create(&log)?;
    let child = Command::new(std::env::current_exe()?)
        .args(["ui", "--listen", &listen.to_string()])
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        // Its own process group: it outlives `lab up` and a ^C there.
        .process_group(0)
        .spawn()
        .context("starting netplane ui")?;
    let pid = child.id();
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(url) = text
            .lines()
            .find_map(|l| l.strip_prefix(crate::ui::LISTENING))
        {
            return Ok(PageProc {
                pid,
                url: url.trim().to_string(),
                log: log.display().to_string(),
            });
        }
        if !pid_alive(pid) || Instant::now() > deadline {
            if pid_alive(pid) {
                stop_pid(pid);
            }
            bail!("netplane ui did not start on {listen}; its log:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The page's process is alive and is ours (not a reused PID).
pub(super) fn running(p: &PageProc) -> bool {
    pid_alive(p.pid)
        && std::fs::read(format!("/proc/{}/cmdline", p.pid))
            .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == b"ui"))
}

pub(super) fn stop(p: &PageProc, progress: &mut dyn FnMut(&str)) {
    if running(p) {
        progress(&format!("stopping the web page (pid {})", p.pid));
        stop_pid(p.pid);
    }
}
