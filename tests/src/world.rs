//! The packet tables' world: netplane::fixture (node-0 with pods A and B),
//! plus running frames through it.
use aya::programs::{TestRun, TestRunOptions, TestRunResult};
use netplane::ebpf::Datapath;
pub use netplane::fixture::*;

/// A `struct __sk_buff` prefix for ctx_in: len, pkt_type (must be 0), mark.
pub fn skb_ctx(mark: u32) -> [u8; 12] {
    let mut ctx = [0u8; 12];
    ctx[8..12].copy_from_slice(&mark.to_ne_bytes());
    ctx
}

/// Runs one frame through a program (TC with an skb mark, or XDP) and
/// returns the verdict and the output frame.
pub fn test_run(
    dp: &mut Datapath,
    prog: &str,
    input: &[u8],
    mark: u32,
) -> anyhow::Result<(TestRunResult, Vec<u8>)> {
    let mut out = vec![0u8; input.len() + 256];
    let ctx = skb_ctx(mark);
    let is_xdp = matches!(dp.bpf.program(prog), Some(aya::programs::Program::Xdp(_)));
    let opts = TestRunOptions {
        data_in: Some(input),
        data_out: Some(&mut out),
        ctx_in: if is_xdp { None } else { Some(&ctx) },
        ..Default::default()
    };
    let res = if is_xdp {
        dp.xdp(prog)?.test_run(opts)?
    } else {
        dp.classifier(prog)?.test_run(opts)?
    };
    out.truncate(res.data_size_out as usize);
    Ok((res, out))
}
