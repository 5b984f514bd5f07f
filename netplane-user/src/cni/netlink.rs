//! The plugin's network work over rtnetlink, in-process: the veth pair made
//! with its pod end already in the pod's namespace, the pod's address,
//! loopback and default route, and the pair's removal. No iproute2 on the
//! node, no process forked per step, and a failure carries the kernel's
//! own reason (errno) into the CNI error.
use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr},
    os::fd::AsRawFd as _,
};

use futures_util::TryStreamExt as _;
use netlink_packet_route::{
    address::AddressAttribute,
    link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkMessage},
};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, RouteMessageBuilder};

/// A netlink failure with the kernel's reason.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct NetlinkError {
    what: String,
    reason: String,
}

type Result<T> = std::result::Result<T, NetlinkError>;

fn failed(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let what = what.into();
    move |e| NetlinkError {
        what,
        reason: match &e {
            // The kernel's errno, as `ip` would print it.
            rtnetlink::Error::NetlinkError(m) => match m.code {
                Some(code) => std::io::Error::from_raw_os_error(-code.get()).to_string(),
                None => e.to_string(),
            },
            _ => e.to_string(),
        },
    }
}

fn io_failed(what: &str, e: std::io::Error) -> NetlinkError {
    NetlinkError {
        what: what.into(),
        reason: e.to_string(),
    }
}

/// What ADD made: each end's MAC.
pub struct Plumbed {
    pub host_mac: String,
    pub pod_mac: String,
}

/// Runs one plugin call's netlink work on a small runtime of its own.
fn block_on<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| io_failed("starting the netlink runtime", e))?
        .block_on(f)
}

/// A netlink connection in the calling thread's namespace.
fn connect() -> Result<Handle> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| io_failed("opening a netlink socket", e))?;
    tokio::spawn(conn);
    Ok(handle)
}

/// A netlink connection inside another namespace: the socket is made there
/// (a socket belongs to the namespace it was made in), then this thread
/// returns home.
fn connect_in(ns: &File) -> Result<Handle> {
    let home = File::open("/proc/thread-self/ns/net")
        .map_err(|e| io_failed("opening this thread's namespace", e))?;
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| io_failed("entering the pod's namespace", e.into()))?;
    let handle = connect();
    nix::sched::setns(&home, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| io_failed("returning to the node's namespace", e.into()))?;
    handle
}

async fn link_by_name(h: &Handle, name: &str) -> Result<Option<LinkMessage>> {
    match h
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
    {
        Ok(link) => Ok(link),
        Err(rtnetlink::Error::NetlinkError(m))
            if m.code.is_some_and(|c| -c.get() == libc::ENODEV) =>
        {
            Ok(None)
        }
        Err(e) => Err(failed(format!("looking up {name}"))(e)),
    }
}

fn mac_of(link: &LinkMessage) -> String {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(mac) => Some(
                mac.iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":"),
            ),
            _ => None,
        })
        .unwrap_or_default()
}

/// A pod's link as ADD makes it: the veth pair (`host` in this namespace,
/// `ifname` in the pod's), the pod's address and its default route.
pub struct PodLink<'a> {
    pub host: &'a str,
    /// Set explicitly (`cni::host_veth_mac` says why).
    pub host_mac: [u8; 6],
    pub ifname: &'a str,
    pub pod_netns: &'a str,
    pub addr: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
}

/// Makes `link`, both ends up; on a failure after the pair exists, removes
/// the pair (ours: made by this call).
pub fn plumb(link: &PodLink) -> Result<Plumbed> {
    let pod_ns = File::open(link.pod_netns)
        .map_err(|e| io_failed(&format!("opening {}", link.pod_netns), e))?;
    block_on(async {
        let node = connect()?;
        let pod = connect_in(&pod_ns)?;
        // The pod's end is born in the pod's namespace, so its name never
        // meets the node's own eth0.
        let peer = LinkUnspec::new_with_name(link.ifname)
            .setns_by_fd(pod_ns.as_raw_fd())
            .build();
        let pair = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(link.host.to_string())
            .address(link.host_mac.to_vec())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        node.link()
            .add(pair)
            .execute()
            .await
            .map_err(failed("creating the veth pair"))?;
        let configured = configure(&node, &pod, link).await;
        if configured.is_err()
            && let Ok(Some(made)) = link_by_name(&node, link.host).await
        {
            // Removing the host end removes both.
            let _ = node.link().del(made.header.index).execute().await;
        }
        configured
    })
}

/// The pod's end addressed and routed, both ends up.
async fn configure(node: &Handle, pod: &Handle, link: &PodLink<'_>) -> Result<Plumbed> {
    let PodLink {
        host,
        host_mac: _,
        ifname,
        pod_netns,
        addr,
        prefix,
        gateway,
    } = *link;
    let missing = |what: String| NetlinkError {
        what,
        reason: "missing after creation".into(),
    };
    let inside = link_by_name(pod, ifname)
        .await?
        .ok_or_else(|| missing(format!("{ifname} in {pod_netns}")))?;
    let index = inside.header.index;
    pod.address()
        .add(index, IpAddr::V4(addr), prefix)
        .execute()
        .await
        .map_err(failed(format!("adding {addr}/{prefix} to {ifname}")))?;
    set_up(pod, index, ifname).await?;
    if let Some(lo) = link_by_name(pod, "lo").await? {
        set_up(pod, lo.header.index, "the pod's lo").await?;
    }
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(gateway)
        .output_interface(index)
        .build();
    pod.route()
        .add(route)
        .execute()
        .await
        .map_err(failed(format!("adding the default route via {gateway}")))?;
    let outside = link_by_name(node, host)
        .await?
        .ok_or_else(|| missing(host.into()))?;
    set_up(node, outside.header.index, host).await?;
    Ok(Plumbed {
        host_mac: mac_of(&outside),
        pod_mac: mac_of(&inside),
    })
}

async fn set_up(h: &Handle, index: u32, name: &str) -> Result<()> {
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(failed(format!("bringing {name} up")))
}

/// Removes the pair by its host end; already gone is fine.
pub fn unplumb(host: &str) -> Result<()> {
    block_on(async {
        let node = connect()?;
        let Some(link) = link_by_name(&node, host).await? else {
            return Ok(());
        };
        match node.link().del(link.header.index).execute().await {
            Err(rtnetlink::Error::NetlinkError(m))
                if m.code.is_some_and(|c| -c.get() == libc::ENODEV) =>
            {
                Ok(())
            }
            other => other.map_err(failed(format!("deleting {host}"))),
        }
    })
}

/// The IPv4 addresses of `ifname` inside the pod's namespace.
pub fn pod_addresses(pod_netns: &str, ifname: &str) -> Result<Vec<Ipv4Addr>> {
    let pod_ns =
        File::open(pod_netns).map_err(|e| io_failed(&format!("opening {pod_netns}"), e))?;
    block_on(async {
        let pod = connect_in(&pod_ns)?;
        let Some(link) = link_by_name(&pod, ifname).await? else {
            return Ok(Vec::new());
        };
        let addrs: Vec<_> = pod
            .address()
            .get()
            .set_link_index_filter(link.header.index)
            .execute()
            .try_collect()
            .await
            .map_err(failed(format!("listing {ifname}'s addresses")))?;
        Ok(addrs
            .iter()
            .flat_map(|m| &m.attributes)
            .filter_map(|a| match a {
                AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            })
            .collect())
    })
}
