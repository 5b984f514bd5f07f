//! The packet tables' world: crate::fixture (node-0 with pods A and B),
//! plus running frames through it.
use netplane::datapath::Datapath;

pub use crate::fixture::*;

/// Runs one frame through a program (TC with an skb mark, or XDP) and
/// returns the verdict and the output frame.
pub fn test_run(
    dp: &mut Datapath,
    prog: &str,
    input: &[u8],
    mark: u32,
) -> anyhow::Result<(u32, Vec<u8>)> {
    dp.run(prog, input, 0, mark)
}
