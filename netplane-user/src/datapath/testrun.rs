//! Test runs (BPF_PROG_TEST_RUN): one frame through a loaded program, its
//! timing, private copies of a running agent's maps for `trace`, and the
//! collector's release of claims.
use anyhow::Result;
use netplane_common::{
    maps::programs,
    nat::{ClaimRelease, RELEASE_BATCH, SnatSlot},
    registry,
};

use super::{Datapath, LoadOptions, Pins};

impl Datapath {
    /// Runs one frame through a program with BPF_PROG_TEST_RUN: a TC
    /// program gets an skb with `mark` arriving on `ifindex` (0: lo, which
    /// must then be in the caller's network namespace). Returns the verdict
    /// and the frame as the program left it.
    pub fn run(
        &mut self,
        prog: &str,
        frame: &[u8],
        ifindex: u32,
        mark: u32,
    ) -> Result<(u32, Vec<u8>)> {
        use aya::programs::{TestRun, TestRunOptions};
        let mut out = vec![0u8; frame.len() + 256];
        // struct __sk_buff up to ifindex: len, pkt_type (zero), mark, ...,
        // ifindex at byte 40.
        let mut ctx = [0u8; 44];
        ctx[8..12].copy_from_slice(&mark.to_ne_bytes());
        ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        let is_xdp = matches!(self.bpf.program(prog), Some(aya::programs::Program::Xdp(_)));
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: if is_xdp { None } else { Some(&ctx) },
            ..Default::default()
        };
        let res = if is_xdp {
            self.xdp(prog)?.test_run(opts)?
        } else {
            self.classifier(prog)?.test_run(opts)?
        };
        out.truncate(res.data_size_out as usize);
        Ok((res.return_value, out))
    }

    /// Deletes `claims` from NAT_IN and credits the port of each one that
    /// was there to its slot (SNAT_FREES), RELEASE_BATCH claims per run of
    /// `release_claims`: a delete and its credit happen in one program
    /// run, so no death of the agent comes between them (decisions §47).
    /// Returns, per claim, whether it was there.
    pub fn release_claims(&mut self, claims: &[ClaimRelease]) -> Result<Vec<bool>> {
        const SIZE: usize = size_of::<ClaimRelease>();
        let mut released = Vec::with_capacity(claims.len());
        for batch in claims.chunks(RELEASE_BATCH) {
            let frame: Vec<u8> = batch
                .iter()
                .flat_map(|c| {
                    let c = ClaimRelease { released: 0, ..*c };
                    // SAFETY: repr(C), plain integers, no padding (the
                    // size is checked in netplane-common).
                    unsafe { std::mem::transmute::<ClaimRelease, [u8; SIZE]>(c) }
                })
                .collect();
            let (_, out) = self.run(programs::RELEASE_CLAIMS, &frame, 0, 0)?;
            anyhow::ensure!(
                out.len() == frame.len(),
                "release_claims changed the frame's size"
            );
            released.extend(out.chunks_exact(SIZE).map(|c| c[SIZE - 4..] != [0; 4]));
        }
        Ok(released)
    }

    /// Average time one run of `prog` on a fresh copy of `frame` takes,
    /// over `runs` runs, as the kernel measures each (BPF_PROG_TEST_RUN's
    /// own timing; one run per call, since repeated runs inside one call
    /// see the frame as the previous run left it).
    pub fn time(&mut self, prog: &str, frame: &[u8], runs: u32) -> Result<std::time::Duration> {
        self.time_frames(prog, std::iter::repeat_n(frame, runs as usize))
    }

    /// Average time of one run of `prog` per frame, one run per frame (for
    /// cases where every run must see a different packet, like new flows).
    pub fn time_frames<'f>(
        &mut self,
        prog: &str,
        frames: impl IntoIterator<Item = &'f [u8]>,
    ) -> Result<std::time::Duration> {
        use aya::programs::{TestRun, TestRunOptions};
        let mut out = Vec::new();
        let (mut total, mut runs) = (std::time::Duration::ZERO, 0u32);
        let program = self.classifier(prog)?;
        for frame in frames {
            out.resize(frame.len() + 256, 0);
            let opts = TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..Default::default()
            };
            total += program.test_run(opts)?.duration;
            runs += 1;
        }
        Ok(total / runs.max(1))
    }

    /// A private copy of a running agent's data path: the object loaded
    /// anew, its maps filled from the agent's pins. Running packets through
    /// it changes nothing the agent uses (counters and translations land in
    /// the copy).
    pub fn snapshot(pins: &Pins) -> Result<Datapath> {
        let mut dp = Datapath::load(&LoadOptions::default())?;
        macro_rules! copy_hash {
            ($def:expr) => {{
                let src = pins.hash($def)?;
                let mut dst = dp.hash($def)?;
                for e in src.iter() {
                    let (k, v) = e?;
                    dst.insert(k, v, 0)?;
                }
            }};
        }
        macro_rules! copy_array {
            ($def:expr) => {{
                let src = pins.array($def)?;
                let mut dst = dp.array($def)?;
                for i in 0..src.len() {
                    dst.set(i, src.get(&i, 0)?, 0)?;
                }
            }};
        }
        copy_hash!(registry::LOCAL_PODS);
        dp.refill_pod_slots()?;
        copy_hash!(registry::LB_BACKENDS);
        copy_hash!(registry::LB_FRONTENDS);
        copy_hash!(registry::NAT_OUT);
        copy_hash!(registry::NAT_IN);
        copy_hash!(registry::PORT_OWNED);
        copy_array!(registry::NODE_CONFIG);
        copy_array!(registry::NAT_CONFIG);
        copy_array!(registry::SNAT_SLOTS);
        {
            // The bitmaps are not pinned: made again from the copied marks.
            let slots: Vec<SnatSlot> = dp
                .array(registry::SNAT_SLOTS)?
                .iter()
                .collect::<Result<_, _>>()?;
            super::make_port_bitmaps(&mut dp, &slots)?;
        }
        // Services: what a new flow would find (its own flow is made in
        // the copy).
        copy_hash!(registry::SERVICES);
        copy_hash!(registry::SERVICE_BACKENDS);
        copy_array!(registry::SERVICE_CONFIG);
        {
            let src = pins.lpm_trie(registry::ROUTES)?;
            let mut dst = dp.routes_map()?;
            for e in src.iter() {
                let (k, v) = e?;
                dst.insert(&k, v, 0)?;
            }
        }
        Ok(dp)
    }
}
