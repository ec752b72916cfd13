#!/usr/bin/env bash
# Installs the Debian packages the tests start or drive, when they are
# missing: real clients (curl, Chromium) and real services (nats-server,
# rsyslog, Alertmanager), which the tests run themselves on ephemeral
# ports with configurations of their own; only the packages are needed.
# `make test` runs this first, so a fresh machine needs nothing else.
#
# Add a package here when a test needs a new program: one line, the
# program the test runs and the Debian package that provides it.
set -euo pipefail

needs=(
    # program                         package
    "curl                             curl"
    "/usr/bin/chromium                chromium"
    "/usr/sbin/nats-server            nats-server"
    "/usr/sbin/rsyslogd               rsyslog"
    "/usr/bin/prometheus-alertmanager prometheus-alertmanager"
    # rule modules as OCI artifacts (host/tests/oci): the registry, bcrypt htpasswd
    "/usr/bin/docker-registry         docker-registry"
    "htpasswd                         apache2-utils"
    # deploy/ and the image (scripts/test-deploy.sh)
    "kubectl                          kubernetes-client"
    "podman                           podman"
    "runc                             runc"
    "openssl                          openssl"
    "objcopy                          binutils"
    "/etc/ssl/certs/ca-certificates.crt ca-certificates"
)

# Python packages from PyPI: the module the tests import, and the package.
pip_needs=(
    # module                          package
    "kubernetes_validate              kubernetes-validate"
)

pip_missing=()
for line in "${pip_needs[@]}"; do
    read -r module package <<<"$line"
    python3 -c "import $module" 2>/dev/null || pip_missing+=("$package")
done
if ((${#pip_missing[@]})); then
    echo "install-test-deps: installing ${pip_missing[*]} (pip)"
    python3 -m pip install --quiet --user "${pip_missing[@]}" 2>/dev/null \
        || python3 -m pip install --quiet --break-system-packages --user "${pip_missing[@]}"
fi

missing=()
for line in "${needs[@]}"; do
    read -r program package <<<"$line"
    if [[ $program == /* ]]; then
        [[ -e $program ]] && continue
    else
        command -v "$program" >/dev/null && continue
    fi
    missing+=("$package")
done
((${#missing[@]})) || exit 0

echo "install-test-deps: installing ${missing[*]}"
sudo=()
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        sudo=(sudo)
    else
        echo "install-test-deps: the tests need these Debian packages: ${missing[*]}" >&2
        echo "install-test-deps: install them as root: apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq "${missing[@]}"
