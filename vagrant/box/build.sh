#!/bin/sh
# Builds a libvirt box for netplane's Vagrantfile from Debian's repository
# alone (no Vagrant Cloud): Debian 12 with bookworm-backports' kernel (6.12,
# which has tcx), systemd, sshd and Vagrant's insecure key (Vagrant
# replaces it on first boot). The disk is one ext4 filesystem without a
# partition table or bootloader; the box's own Vagrantfile has libvirt boot
# the kernel and initrd that ship inside the box.
#
#   build.sh [OUT.box]   default: ../../target/vagrant/netplane-bookworm.box
#   vagrant box add --name netplane/bookworm OUT.box
#
# Needs root, mmdebstrap, e2fsprogs and qemu-img; takes 2-5 minutes.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/../../target/vagrant/netplane-bookworm.box}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
key=${VAGRANT_INSECURE_KEY:-$(ls /usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub 2>/dev/null | head -1)}
[ -s "$key" ] || { echo "no Vagrant insecure public key (set VAGRANT_INSECURE_KEY)" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/netplane-box.XXXXXX")
trap 'rm -rf "$work"' EXIT
say() { echo "build.sh: $*"; }

say "debootstrapping Debian 12 with the 6.12 kernel into $work/root"
mmdebstrap --variant=apt --skip=output/dev \
    --include=systemd-sysv,udev,dbus,openssh-server,sudo,iproute2,ifupdown,isc-dhcp-client,procps,kmod,initramfs-tools,iputils-ping \
    --customize-hook='chroot "$1" apt-get install -y -q -t bookworm-backports linux-image-amd64' \
    --customize-hook="mkdir -p \"\$1/home/vagrant/.ssh\" && cp '$key' \"\$1/home/vagrant/.ssh/authorized_keys\"" \
    --customize-hook='chroot "$1" sh -ec "
        useradd -M -d /home/vagrant -s /bin/bash vagrant
        echo vagrant:vagrant | chpasswd
        chown -R vagrant:vagrant /home/vagrant && chmod 700 /home/vagrant/.ssh
        echo \"vagrant ALL=(ALL) NOPASSWD: ALL\" >/etc/sudoers.d/vagrant
        echo \"/dev/vda / ext4 defaults 0 1\" >/etc/fstab
        printf \"auto lo\niface lo inet loopback\n\nauto eth0\niface eth0 inet dhcp\n\" >/etc/network/interfaces
        echo \"UseDNS no\" >/etc/ssh/sshd_config.d/vagrant.conf
        echo netplane-box >/etc/hostname
        rm -f /etc/ssh/ssh_host_*
        systemctl enable ssh
        apt-get clean"' \
    bookworm "$work/root" \
    "deb $mirror bookworm main" "deb $mirror bookworm-backports main"
# Each machine makes its own host keys on first boot.
cat >"$work/root/etc/systemd/system/ssh-hostkeys.service" <<'UNIT'
[Unit]
Description=SSH host keys of this machine
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key
[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A
[Install]
WantedBy=multi-user.target
UNIT
ln -sf /etc/systemd/system/ssh-hostkeys.service \
    "$work/root/etc/systemd/system/multi-user.target.wants/ssh-hostkeys.service"

kernel=$(ls "$work"/root/boot/vmlinuz-* | sort -V | tail -1)
initrd=$(ls "$work"/root/boot/initrd.img-* | sort -V | tail -1)
say "kernel $(basename "$kernel")"
mkdir -p "$work/box"
cp "$kernel" "$work/box/vmlinuz"
cp "$initrd" "$work/box/initrd.img"

say "making the disk"
truncate -s 8G "$work/disk.raw"
mkfs.ext4 -q -L root -d "$work/root" "$work/disk.raw"
qemu-img convert -O qcow2 "$work/disk.raw" "$work/box/box.img"
printf '{"provider":"libvirt","format":"qcow2","virtual_size":8}\n' >"$work/box/metadata.json"
cat >"$work/box/Vagrantfile" <<'VF'
# The box's kernel boots directly: its disk has no bootloader.
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |lv|
    lv.kernel = File.join(__dir__, "vmlinuz")
    lv.initrd = File.join(__dir__, "initrd.img")
    lv.cmd_line = "root=/dev/vda rw console=ttyS0 net.ifnames=0 no_timer_check"
  end
end
VF
mkdir -p "$(dirname "$out")"
tar -C "$work/box" -cf "$out" metadata.json Vagrantfile box.img vmlinuz initrd.img
say "wrote $out ($(du -h "$out" | cut -f1))"
