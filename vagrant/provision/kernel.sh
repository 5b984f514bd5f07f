#!/bin/sh
# netplane attaches with tcx, which needs Linux 6.6 or later. Ubuntu 24.04
# boxes carry 6.8 and need nothing; Debian 12 boxes carry 6.1, so this
# installs bookworm-backports' kernel (6.12), and Vagrant reboots into it.
set -eu
major=$(uname -r | cut -d. -f1)
minor=$(uname -r | cut -d. -f2)
if [ "$major" -gt 6 ] || { [ "$major" -eq 6 ] && [ "$minor" -ge 6 ]; }; then
    echo "kernel $(uname -r): has tcx"
    exit 0
fi
. /etc/os-release
if [ "$ID" != debian ] || [ "$VERSION_CODENAME" != bookworm ]; then
    echo "kernel $(uname -r) is older than 6.6 and this is not Debian 12: install a newer kernel" >&2
    exit 1
fi
echo "deb http://deb.debian.org/debian bookworm-backports main" \
    >/etc/apt/sources.list.d/bookworm-backports.list
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports linux-image-amd64
echo "installed bookworm-backports' kernel; rebooting into it"
