#!/bin/sh
# Brings one machine of the cluster up in its role, as on a real node:
#
#   netplane.sh node NAME   the node's agent on the NIC that holds its IP,
#                           then its pods, each a network namespace made by
#                           netplane-cni as kubelet would run it
#   netplane.sh lb          the outbound load balancer's agent (VNet side:
#                           the NIC in the node subnet; the internet side:
#                           the NIC holding 203.0.113.1)
#   netplane.sh appliance   the same for userDefinedRouting's appliance,
#                           whose internet side holds 203.0.113.2
#   netplane.sh inet        the internet host's routes to the frontend IPs
#                           (none with an appliance: it translates to its
#                           own address, on inet's link)
#
# The Vagrantfile's provisioners run it, and so does `cargo xtask vm test`
# inside its VMs: one script for both.
#
# Environment:
#   NETPLANE_BIN        netplane and netplane-cni (default /opt/netplane/bin)
#   NETPLANE_CLUSTER    the cluster file (default /etc/netplane/cluster.toml)
#   NETPLANE_AGENT      systemd (a unit, restarted if it dies; default) or
#                       background (a process logging to NETPLANE_LOG_DIR,
#                       for machines without systemd)
#   NETPLANE_LOG_DIR    default /var/log/netplane
#   NETPLANE_PODS       pods per node (default 2)
#   NETPLANE_AGENT_ARGS more agent arguments (--uplink-xdp, say)
#   NETPLANE_INET       lb only: "namespace" puts the internet host in a
#                       namespace beside the load balancer (default: none,
#                       it is a machine of its own)
#   NETPLANE_FRONTENDS  the load balancer's frontend IPs (default, when
#                       unset: 198.51.100.10, the default cluster's; empty
#                       with an appliance)
set -eu

BIN=${NETPLANE_BIN:-/opt/netplane/bin}
CLUSTER=${NETPLANE_CLUSTER:-/etc/netplane/cluster.toml}
AGENT=${NETPLANE_AGENT:-systemd}
AGENT_ARGS=${NETPLANE_AGENT_ARGS:-}
LOG_DIR=${NETPLANE_LOG_DIR:-/var/log/netplane}
PODS=${NETPLANE_PODS:-2}
FRONTENDS=${NETPLANE_FRONTENDS-198.51.100.10}
LB_OUTSIDE=203.0.113.1
APPLIANCE_OUTSIDE=203.0.113.2
INET=203.0.113.10

say() { echo "netplane.sh: $*"; }

# start_agent NAME ARGS...: the agent, as a unit or a process, then waits
# for it to say it runs (its status file).
start_agent() {
    name=$1
    shift
    status=/run/netplane/nodes/$name/agent.json
    rm -f "$status"
    if [ "$AGENT" = systemd ]; then
        cat >/etc/systemd/system/netplane-agent.service <<EOF
[Unit]
Description=netplane agent ($name)
After=network-online.target
Wants=network-online.target

[Service]
ExecStart=$BIN/netplane agent --config $CLUSTER $* $AGENT_ARGS
Restart=always
RestartSec=1

[Install]
WantedBy=multi-user.target
EOF
        systemctl daemon-reload
        systemctl enable --now netplane-agent.service
    else
        mkdir -p "$LOG_DIR"
        # shellcheck disable=SC2086 # AGENT_ARGS: words
        nohup "$BIN/netplane" agent --config "$CLUSTER" "$@" $AGENT_ARGS \
            >"$LOG_DIR/agent-$name.log" 2>&1 &
        echo $! >"$LOG_DIR/agent-$name.pid"
    fi
    i=0
    until [ -s "$status" ]; do
        i=$((i + 1))
        if [ $i -gt 300 ]; then
            say "the agent of $name did not start in 60 s"
            [ "$AGENT" = systemd ] && journalctl -u netplane-agent --no-pager | tail -20
            [ "$AGENT" = systemd ] || tail -20 "$LOG_DIR/agent-$name.log"
            exit 1
        fi
        sleep 0.2
    done
    say "agent of $name running"
}

# add_pod NODE POD: a network namespace and netplane-cni ADD, as kubelet
# and its container runtime would.
add_pod() {
    node=$1
    pod=$2
    ip netns add "$pod"
    printf '{"cniVersion":"1.0.0","name":"netplane","type":"netplane-cni","cluster":"%s","node":"%s"}' \
        "$CLUSTER" "$node" |
        CNI_COMMAND=ADD CNI_CONTAINERID="$pod" CNI_NETNS="/run/netns/$pod" \
            CNI_IFNAME=eth0 CNI_PATH="$BIN" \
            CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=$pod" \
            "$BIN/netplane-cni" >"/run/netplane-pod-$pod.json"
    say "pod $pod: $(tr -d '\n ' <"/run/netplane-pod-$pod.json" | sed 's/.*"address":"\([^"]*\)".*/\1/')"
}

case ${1:-} in
node)
    name=${2:?node NAME}
    # Forwarding only so the kernel answers TTL expiry; netplane's programs
    # forward. Reverse-path filtering would drop the pods' replies that the
    # programs hand to the stack.
    sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 \
        net.ipv4.conf.default.rp_filter=0
    start_agent "$name" --node "$name"
    index=${name#node-}
    j=0
    while [ $j -lt "$PODS" ]; do
        add_pod "$name" "pod-$index-$j"
        j=$((j + 1))
    done
    ;;
lb | appliance)
    role=$1
    if [ "$role" = lb ]; then outside_ip=$LB_OUTSIDE; else outside_ip=$APPLIANCE_OUTSIDE; fi
    if [ "${NETPLANE_INET:-}" = namespace ]; then
        # The internet host, as a namespace on the load balancer's far side.
        ip netns add inet
        ip link add eth1 type veth peer name eth0 netns inet
        ip addr add $outside_ip/24 dev eth1
        ip link set eth1 up
        ip -n inet addr add $INET/24 dev eth0
        ip -n inet link set lo up
        ip -n inet link set eth0 up
        for f in $FRONTENDS; do
            ip -n inet route add "$f/32" via $outside_ip
        done
    fi
    # The internet side: the NIC holding the outside address (a VM may
    # also have a management NIC with an address).
    outside=$(ip -o -4 addr show | awk -v a="$outside_ip/" 'index($4, a) == 1 { print $2; exit }')
    if [ -z "$outside" ]; then
        say "no interface holds $outside_ip, the $role's internet side"
        exit 1
    fi
    # The agent takes its role (and name) from the cluster file's outbound type.
    start_agent "$role" --lb --outside-interface "$outside"
    ;;
inet)
    for f in $FRONTENDS; do
        ip route replace "$f/32" via $LB_OUTSIDE
    done
    if [ -n "$FRONTENDS" ]; then
        say "frontends $FRONTENDS routed via $LB_OUTSIDE"
    else
        say "no frontends to route: the appliance translates to its own address"
    fi
    ;;
*)
    echo "usage: $0 node NAME | lb | appliance | inet" >&2
    exit 2
    ;;
esac
