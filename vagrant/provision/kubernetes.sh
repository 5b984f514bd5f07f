#!/bin/sh
# Brings one machine of a Kubernetes 1.20 cluster up, netplane as its pod
# network (or kubenet's bridge, the oracle):
#
#   kubernetes.sh control-plane    etcd, kube-apiserver, kube-controller-
#                                  manager (node IPAM: a /24 per node, as AKS
#                                  kubenet hands out) and kube-scheduler
#   kubernetes.sh node NAME IP     containerd and runc, the images, kube-proxy
#                                  and kubelet registering NAME with IP; the
#                                  pod network comes from netplane's DaemonSet
#                                  (kubectl apply -f deploy/), which writes the
#                                  CNI config and installs netplane-cni
#   kubernetes.sh restart-kubelet NAME IP
#                                  ends kubelet (its PID file) and starts it
#                                  again, as a node's upgrade or crash would
#
# `cargo xtask vm k8s` runs it in its VMs; on VMs of your own, copy the
# binaries and K8S_CONF there first (vagrant/README.md: "A real cluster").
#
# Environment:
#   K8S_BIN       kube-*, kubectl (default /opt/kubernetes/bin)
#   K8S_CONF      the cluster's credentials, written by `cargo xtask vm k8s`
#                 (default /etc/kubernetes/netplane): ca.crt, apiserver.crt
#                 and .key, service-accounts.key and .pub, tokens.csv, one
#                 kubeconfig per component and node, images/*.tar
#   K8S_API       the API server's address (default 10.224.0.1)
#   K8S_STATE     state (default /var/lib/netplane-k8s)
#   K8S_LOG_DIR   logs and PIDs (default /var/log/netplane-k8s)
#   K8S_DATAPATH  netplane (default) or classic: kubenet's bridge plugin,
#                 kernel routes between nodes and MASQUERADE
set -eu

BIN=${K8S_BIN:-/opt/kubernetes/bin}
CONF=${K8S_CONF:-/etc/kubernetes/netplane}
API=${K8S_API:-10.224.0.1}
STATE=${K8S_STATE:-/var/lib/netplane-k8s}
LOG_DIR=${K8S_LOG_DIR:-/var/log/netplane-k8s}
DATAPATH=${K8S_DATAPATH:-netplane}
# The default cluster's network (netplane-user/src/config/default-cluster.toml).
POD_CIDR=10.244.0.0/16
NODE_POD_PREFIX=24
SERVICE_CIDR=10.0.0.0/16
DNS_SERVICE_IP=10.0.0.10
SANDBOX_IMAGE=localhost/pause:3.2

say() { echo "kubernetes.sh: $*"; }

# spawn NAME COMMAND...: a daemon, its output in LOG_DIR/NAME.log, its PID
# in LOG_DIR/NAME.pid.
# (sh has no local variables: each helper's names are its own.)
spawn() {
    spawn_name=$1
    shift
    mkdir -p "$LOG_DIR"
    nohup "$@" >"$LOG_DIR/$spawn_name.log" 2>&1 &
    echo $! >"$LOG_DIR/$spawn_name.pid"
}

# supervise NAME COMMAND...: as spawn, and started again whenever it
# exits, as systemd's Restart=always would (the controller manager exits
# when the API server, slow under emulation, times a request out).
supervise() {
    supervise_name=$1
    shift
    spawn "$supervise_name" sh -c '
        while :; do
            "$@"
            echo "supervise: exited ($?), starting again in 2 s"
            sleep 2
        done' supervise "$@"
}

# until_ok SECONDS WHAT COMMAND...: retries COMMAND every second.
until_ok() {
    until_limit=$1
    until_what=$2
    shift 2
    until_i=0
    until "$@" >/dev/null 2>&1; do
        until_i=$((until_i + 1))
        if [ $until_i -gt "$until_limit" ]; then
            say "$until_what: not after $until_limit s"
            return 1
        fi
        sleep 1
    done
    say "$until_what after ${until_i} s"
}

control_plane() {
    mkdir -p "$STATE"
    spawn etcd etcd --name control-plane --data-dir "$STATE/etcd" \
        --listen-client-urls http://127.0.0.1:2379 \
        --advertise-client-urls http://127.0.0.1:2379 \
        --listen-peer-urls http://127.0.0.1:2380 \
        --initial-advertise-peer-urls http://127.0.0.1:2380 \
        --initial-cluster control-plane=http://127.0.0.1:2380
    spawn kube-apiserver "$BIN/kube-apiserver" \
        --etcd-servers=http://127.0.0.1:2379 \
        --bind-address=0.0.0.0 --secure-port=6443 --insecure-port=0 \
        --advertise-address="$API" \
        --tls-cert-file="$CONF/apiserver.crt" \
        --tls-private-key-file="$CONF/apiserver.key" \
        --client-ca-file="$CONF/ca.crt" \
        --token-auth-file="$CONF/tokens.csv" \
        --authorization-mode=Node,RBAC \
        --enable-admission-plugins=NodeRestriction \
        --service-cluster-ip-range=$SERVICE_CIDR \
        --service-account-issuer=https://kubernetes.default.svc \
        --service-account-key-file="$CONF/service-accounts.pub" \
        --service-account-signing-key-file="$CONF/service-accounts.key" \
        --kubelet-preferred-address-types=InternalIP \
        --allow-privileged=true
    until_ok 600 "kube-apiserver ready" curl -skf "https://127.0.0.1:6443/readyz"
    # Node IPAM: the controller manager gives each Node its pod CIDR.
    supervise kube-controller-manager "$BIN/kube-controller-manager" \
        --kubeconfig="$CONF/kube-controller-manager.kubeconfig" \
        --allocate-node-cidrs --cluster-cidr=$POD_CIDR \
        --node-cidr-mask-size=$NODE_POD_PREFIX \
        --service-cluster-ip-range=$SERVICE_CIDR \
        --service-account-private-key-file="$CONF/service-accounts.key" \
        --root-ca-file="$CONF/ca.crt" \
        --use-service-account-credentials \
        --configure-cloud-routes=false \
        --leader-elect=false --port=0
    supervise kube-scheduler "$BIN/kube-scheduler" \
        --kubeconfig="$CONF/kube-scheduler.kubeconfig" \
        --leader-elect=false --port=0
    cluster_dns
}

# The cluster's DNS, as far as this machine can serve it: dnsmasq (Debian's)
# answering NAME.NAMESPACE.svc.cluster.local with each Service's ClusterIP,
# from a hosts file that kubectl refreshes every 2 s. Not CoreDNS (neither
# it nor kube-dns is packaged or in the tree): no SRV, PTR or pod records,
# and headless and ExternalName Services' names are not answered.
# The kube-dns Service at $DNS_SERVICE_IP points here (cargo xtask vm k8s
# creates it: tests/k8s/cluster-dns.yaml).
cluster_dns() {
    hosts=$STATE/cluster-hosts
    : >"$hosts"
    spawn dnsmasq dnsmasq --keep-in-foreground --no-resolv --no-hosts \
        --addn-hosts="$hosts" --listen-address="$API" --bind-interfaces \
        --local=/cluster.local/ --pid-file= --user=root \
        --log-facility=-
    spawn cluster-dns-sync sh -c "
        while :; do
            $BIN/kubectl --kubeconfig=$CONF/admin.kubeconfig get services -A \
                -o jsonpath='{range .items[*]}{.spec.clusterIP} {.metadata.name}.{.metadata.namespace}.svc.cluster.local{\"\\n\"}{end}' \
                2>/dev/null | grep '^[0-9]' >$hosts.new
            if ! cmp -s $hosts.new $hosts; then
                mv $hosts.new $hosts
                kill -HUP \$(cat $LOG_DIR/dnsmasq.pid)
            fi
            sleep 2
        done"
}

node() {
    name=$1
    ip=$2
    # Forwarding so the kernel answers TTL expiry (netplane's programs
    # forward); no reverse-path filter on the pods' replies.
    sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 \
        net.ipv4.conf.default.rp_filter=0
    # The DaemonSet mounts /run/netplane with Bidirectional propagation
    # (the agent's bpffs is the node's): kubelet needs a shared mount.
    mount --make-rshared /
    mkdir -p "$STATE" /var/lib/containerd /opt/cni/bin /etc/cni/net.d /etc/containerd
    # containerd's overlay snapshots need a file system that takes an
    # overlay's upper directory.
    mountpoint -q /var/lib/containerd || mount -t tmpfs tmpfs /var/lib/containerd
    # containerd sets up each pod's loopback with the reference plugin, as
    # the kubernetes-cni package installs it.
    cp /usr/lib/cni/loopback /opt/cni/bin/
    if [ "$DATAPATH" = classic ]; then
        cp /usr/lib/cni/bridge /usr/lib/cni/host-local /usr/lib/cni/portmap /opt/cni/bin/
    fi
    cat >/etc/containerd/config.toml <<EOF
version = 2
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$SANDBOX_IMAGE"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
EOF
    spawn containerd containerd --config /etc/containerd/config.toml
    until_ok 120 "containerd serving" ctr version
    for image in "$CONF"/images/*.tar; do
        ctr -n k8s.io images import "$image" >/dev/null
    done
    say "images: $(ctr -n k8s.io images ls -q | grep -v '^sha256:' | tr '\n' ' ')"
    # Pods' upstream resolver (dnsPolicy Default): none on the VNet.
    : >"$STATE/resolv.conf"
    cat >"$STATE/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
failSwapOn: false
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
clusterDNS: [$DNS_SERVICE_IP]
clusterDomain: cluster.local
resolvConf: $STATE/resolv.conf
maxPods: 110
# The images were imported, not pulled: never collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "20Mi", nodefs.available: "1%", imagefs.available: "1%"}
EOF
    # kube-proxy serves what netplane does not: node to ClusterIP and
    # NodePort (docs/kubernetes.md, "A real cluster").
    supervise kube-proxy "$BIN/kube-proxy" \
        --kubeconfig="$CONF/kube-proxy.kubeconfig" \
        --hostname-override="$name" --bind-address="$ip" \
        --cluster-cidr=$POD_CIDR --proxy-mode=iptables
    kubelet "$name" "$ip"
    if [ "$DATAPATH" = classic ]; then
        classic "$name"
    fi
}

kubelet() {
    spawn kubelet "$BIN/kubelet" \
        --kubeconfig="$CONF/$1.kubeconfig" --config="$STATE/kubelet.yaml" \
        --container-runtime=remote \
        --container-runtime-endpoint=unix:///run/containerd/containerd.sock \
        --hostname-override="$1" --node-ip="$2"
}

restart_kubelet() {
    pid=$(cat "$LOG_DIR/kubelet.pid")
    kill "$pid"
    i=0
    while kill -0 "$pid" 2>/dev/null; do
        i=$((i + 1))
        [ $i -gt 100 ] && { say "kubelet $pid did not end"; return 1; }
        sleep 0.2
    done
    mv "$LOG_DIR/kubelet.log" "$LOG_DIR/kubelet.log.1"
    kubelet "$1" "$2"
    say "kubelet restarted (PID $(cat "$LOG_DIR/kubelet.pid"))"
}

# kubenet as AKS runs it with containerd: the bridge plugin on the node's
# pod CIDR (from its Node object), a route per other node (Azure's UDR; here
# kernel routes on the VNet) and MASQUERADE for what leaves the pod CIDR.
classic() {
    name=$1
    kubectl="$BIN/kubectl --kubeconfig=$CONF/$name.kubeconfig"
    until_ok 600 "pod CIDR of $name" sh -c "$kubectl get node $name -o jsonpath='{.spec.podCIDR}' | grep -q /"
    cidr=$($kubectl get node "$name" -o jsonpath='{.spec.podCIDR}')
    gateway=$(echo "$cidr" | sed 's|\.0/.*|.1|')
    cat >/etc/cni/net.d/10-kubenet.conflist <<EOF
{"cniVersion": "0.4.0", "name": "kubenet", "plugins": [
  {"type": "bridge", "bridge": "cbr0", "isGateway": true, "hairpinMode": true,
   "ipMasq": false,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$cidr", "gateway": "$gateway"}]],
            "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
EOF
    iptables -w -t nat -A POSTROUTING -s "$cidr" ! -d $POD_CIDR -j MASQUERADE
    # The other nodes' pod CIDRs, as they register.
    spawn routes sh -c "
        while :; do
            $kubectl get nodes -o jsonpath='{range .items[*]}{.spec.podCIDR} {.status.addresses[?(@.type==\"InternalIP\")].address}{\"\\n\"}{end}' |
            while read -r c via; do
                [ -n \"\$c\" ] && [ -n \"\$via\" ] && [ \"\$c\" != $cidr ] && ip route replace \"\$c\" via \"\$via\"
            done
            sleep 5
        done"
    say "kubenet bridge on $cidr"
}

case ${1:-} in
control-plane) control_plane ;;
node) node "${2:?node NAME IP}" "${3:?node NAME IP}" ;;
restart-kubelet) restart_kubelet "${2:?restart-kubelet NAME IP}" "${3:?restart-kubelet NAME IP}" ;;
*)
    echo "usage: $0 control-plane | node NAME IP | restart-kubelet NAME IP" >&2
    exit 2
    ;;
esac
