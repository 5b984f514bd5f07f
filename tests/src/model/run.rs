//! A program run: which program, what it gives (the verdict, the frame
//! that leaves, the counter that moves), and the models that say it.
use netplane_common::{DropReason, Path};

pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

/// The counter a run moves (at most one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Moves {
    Path(Path),
    Drop(DropReason),
    Nothing,
}

/// What the model says a run does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub verdict: u32,
    pub frame: Vec<u8>,
    pub moves: Moves,
}

/// Which program, and the skb's metadata it sees.
#[derive(Clone, Copy, Debug)]
pub enum Program {
    /// On a pod's veth; `ifindex` is the skb's.
    FromPod {
        ifindex: u32,
    },
    FromUplink,
    ToUplink {
        mark: u32,
    },
    /// The load balancer's VNet side (eth0) and internet side (eth1).
    LbFromVnet,
    LbFromInternet,
}

/// A data path the differential test holds against the real programs.
pub trait Model: std::fmt::Debug {
    /// Runs `frame` through `program`; `pick` chooses a port among the
    /// free ones when a new translation may take any of them.
    fn run(
        &mut self,
        program: Program,
        frame: &[u8],
        pick: &mut dyn FnMut(&[u16]) -> Option<u16>,
    ) -> Outcome;

    /// Its translations as sorted lines, `PROTO IN:PORT -> REMOTE:PORT as
    /// NAT:PORT`.
    fn translations(&self) -> Vec<String>;
}
