#!/usr/bin/env bash
# Bootstrap the local scada-ingest stack prerequisites (idempotent, fast when done):
#   - Debian packages (PostgreSQL 15, Redis, build tools, chromium for the live page's browser test)
#   - TimescaleDB (Apache edition) built from Debian trixie's source package
#   - Debian's prometheus package (promtool; its service kept disabled)
#   - the project's Python venv from requirements.lock (hashes checked), then the project
#     itself (editable); redone only when pyproject.toml or the lock changes
# Mirror addresses are derived at runtime from the machine's own apt sources; the machine's
# apt configuration is never modified (a private apt state under $SCADA_LOCAL_DIR/apt is used).
set -euo pipefail

SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
REPO_ROOT="$(cd -- "${SCRIPT_DIR}/.." && pwd -P)"
LOCAL_DIR="${SCADA_LOCAL_DIR:-${REPO_ROOT}/.local}"
PG_MAJOR=15
PG_CONFIG="/usr/lib/postgresql/${PG_MAJOR}/bin/pg_config"
TSDB_CONTROL="/usr/share/postgresql/${PG_MAJOR}/extension/timescaledb.control"
TSDB_SUITE="trixie"
TSDB_VERSION="2.19.3"
KEYRING="/usr/share/keyrings/debian-archive-keyring.gpg"
VENV="${REPO_ROOT}/.venv"
PYPROJECT="${REPO_ROOT}/pyproject.toml"
LOCK="${REPO_ROOT}/requirements.lock"
PIP_STAMP="${VENV}/.scada-pyproject.sha256"

log() { printf '[bootstrap] %s\n' "$*" >&2; }
die() { printf '[bootstrap] ERROR: %s\n' "$*" >&2; exit 1; }

SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || die "not root and sudo is unavailable"
    SUDO=(sudo)
fi

# ---------------------------------------------------------------- Debian packages
# chromium: headless, driven over the DevTools protocol by tests/test_live_page.py.
DEB_PACKAGES=(postgresql-15 postgresql-server-dev-15 redis-server cmake build-essential
              dpkg-dev libssl-dev libkrb5-dev chromium)

install_debian_packages() {
    local missing=() pkg status
    for pkg in "${DEB_PACKAGES[@]}"; do
        status="$(dpkg-query -W -f='${Status}' "${pkg}" 2>/dev/null || true)"
        if [[ "${status}" != "install ok installed" ]]; then
            missing+=("${pkg}")
        fi
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        log "debian packages: present"
        return
    fi
    log "debian packages: installing ${missing[*]}"
    "${SUDO[@]}" apt-get update -qq
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
    # Debian's default cluster (if one was created) is left alone; we run our own cluster.
}

# ---------------------------------------------------------------- Prometheus (promtool)
# Debian's `prometheus` package brings promtool (alert rule checks and unit tests) and the
# server the metrics test starts on loopback. The package's own service must never run here:
# it would listen on all interfaces. Service starts are refused during the install (Debian's
# policy-rc.d mechanism), and the service is disabled and stopped afterwards in case an init
# system started it anyway.
install_prometheus() {
    if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
        log "prometheus: present"
        disable_prometheus_service
        return
    fi
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [[ ! -e "${policy}" ]]; then
        printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "${policy}" >/dev/null
        "${SUDO[@]}" chmod 755 "${policy}"
        made_policy=1
    fi
    log "prometheus: installing Debian's package (service start refused)"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        -o DPkg::Lock::Timeout=300 --no-install-recommends prometheus >&2 \
        || { [[ ${made_policy} -eq 1 ]] && "${SUDO[@]}" rm -f "${policy}"; die "prometheus install failed"; }
    [[ ${made_policy} -eq 1 ]] && "${SUDO[@]}" rm -f "${policy}"
    disable_prometheus_service
}

disable_prometheus_service() {
    # deb-systemd-helper removes the unit's enablement symlink even where systemd is not running.
    if command -v deb-systemd-helper >/dev/null 2>&1; then
        "${SUDO[@]}" deb-systemd-helper disable prometheus.service >/dev/null 2>&1 || true
    fi
    if [[ -d /run/systemd/system ]]; then
        "${SUDO[@]}" systemctl disable --now prometheus.service >/dev/null 2>&1 || true
    fi
    if [[ -x /etc/init.d/prometheus ]]; then
        "${SUDO[@]}" update-rc.d prometheus disable >/dev/null 2>&1 || true
        "${SUDO[@]}" /etc/init.d/prometheus stop >/dev/null 2>&1 || true
    fi
}

# ---------------------------------------------------------------- mirror discovery
# Print the first mirror URI of the machine's apt sources that serves the "bookworm" suite.
find_debian_mirror() {
    local f uri=""
    shopt -s nullglob
    # deb822 format (*.sources): paragraphs separated by blank lines.
    for f in /etc/apt/sources.list.d/*.sources; do
        uri="$(awk '
            function flush() {
                if (uris != "" && suites_ok && enabled) { split(uris, u, /[ \t]+/); print u[1]; found = 1; exit }
                uris = ""; suites_ok = 0; enabled = 1
            }
            BEGIN { uris = ""; suites_ok = 0; enabled = 1; found = 0 }
            /^[ \t]*#/ { next }
            /^[ \t]*$/ { flush(); next }
            tolower($1) == "uris:"   { sub(/^[^:]*:[ \t]*/, ""); uris = $0; next }
            tolower($1) == "suites:" {
                for (i = 2; i <= NF; i++) if ($i == "bookworm") suites_ok = 1
                next
            }
            tolower($1) == "enabled:" { if (tolower($2) == "no") enabled = 0; next }
            END { if (!found) flush() }
        ' "${f}")"
        if [[ -n "${uri}" ]]; then printf '%s\n' "${uri}"; return 0; fi
    done
    # One-line format: deb [options] URI suite components...
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -r "${f}" ]] || continue
        uri="$(awk '
            /^[ \t]*(deb|deb-src)[ \t]/ {
                i = 2
                if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                if ((i + 1) <= NF && $(i + 1) == "bookworm") { print $i; exit }
            }
        ' "${f}")"
        if [[ -n "${uri}" ]]; then printf '%s\n' "${uri}"; return 0; fi
    done
    shopt -u nullglob
    return 1
}

# ---------------------------------------------------------------- TimescaleDB
build_timescaledb() {
    if [[ -e "${TSDB_CONTROL}" ]]; then
        log "timescaledb: present"
        return
    fi
    local t0 mirror apt_dir build_dir src_list apt_opts dsc src_dir
    t0="$(date +%s)"
    mirror="$(find_debian_mirror)" || die "no apt source for bookworm found in /etc/apt"
    mirror="${mirror%/}"
    apt_dir="${LOCAL_DIR}/apt"
    build_dir="${LOCAL_DIR}/build"
    mkdir -p "${apt_dir}/sources.list.d" "${apt_dir}/lists/partial" \
             "${apt_dir}/cache/archives/partial" "${build_dir}"
    src_list="${apt_dir}/sources.list"
    printf 'deb-src [signed-by=%s] %s %s main\n' "${KEYRING}" "${mirror}" "${TSDB_SUITE}" \
        > "${src_list}.tmp"
    mv -f "${src_list}.tmp" "${src_list}"
    apt_opts=(
        -o "Dir::Etc::SourceList=${src_list}"
        -o "Dir::Etc::SourceParts=${apt_dir}/sources.list.d"
        -o "Dir::State::Lists=${apt_dir}/lists"
        -o "Dir::Cache=${apt_dir}/cache"
        -o "APT::Sandbox::User=root"
    )
    log "timescaledb: fetching source index for ${TSDB_SUITE} (private apt state in ${apt_dir})"
    "${SUDO[@]}" apt-get "${apt_opts[@]}" -qq update >&2
    log "timescaledb: downloading source package timescaledb ${TSDB_VERSION}"
    rm -rf "${build_dir:?}/src"
    mkdir -p "${build_dir}/src"
    (cd "${build_dir}/src" && "${SUDO[@]}" apt-get "${apt_opts[@]}" -qq source --download-only \
        "timescaledb/${TSDB_SUITE}" >&2)
    dsc="$(ls "${build_dir}"/src/timescaledb_*.dsc 2>/dev/null | head -n1)"
    [[ -n "${dsc}" ]] || die "timescaledb source package not downloaded"
    case "$(basename "${dsc}")" in
        timescaledb_${TSDB_VERSION}*) ;;
        *) log "timescaledb: note: got $(basename "${dsc}"), expected version ${TSDB_VERSION}" ;;
    esac
    src_dir="${build_dir}/src/timescaledb"
    (cd "${build_dir}/src" && dpkg-source --no-check -x "${dsc}" "${src_dir}" >&2)
    log "timescaledb: building (cmake + make -j2)"
    (
        cd "${src_dir}"
        ./bootstrap -DAPACHE_ONLY=1 -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF \
            -DWARNINGS_AS_ERRORS=OFF -DLINTER=OFF -DPG_CONFIG="${PG_CONFIG}" >"${build_dir}/cmake.log" 2>&1 \
            || { tail -n 40 "${build_dir}/cmake.log" >&2; exit 1; }
        make -C build -j2 >"${build_dir}/make.log" 2>&1 \
            || { tail -n 40 "${build_dir}/make.log" >&2; exit 1; }
        "${SUDO[@]}" make -C build install >"${build_dir}/install.log" 2>&1 \
            || { tail -n 40 "${build_dir}/install.log" >&2; exit 1; }
    )
    [[ -e "${TSDB_CONTROL}" ]] || die "timescaledb install did not produce ${TSDB_CONTROL}"
    log "timescaledb: installed in $(( $(date +%s) - t0 ))s"
}

# ---------------------------------------------------------------- Python env
# Dependencies come from requirements.lock (every package pinned, with hashes: pip refuses
# anything else), then the project itself without dependencies. scripts/lock.sh updates the lock.
setup_python() {
    if [[ ! -x "${VENV}/bin/python" ]]; then
        log "python: creating ${VENV}"
        python3 -m venv "${VENV}"
    fi
    if [[ ! -f "${PYPROJECT}" ]]; then
        log "python: no pyproject.toml yet, skipping editable install"
        return
    fi
    local want have=""
    want="$(cat "${PYPROJECT}" "${LOCK}" | sha256sum | cut -d' ' -f1)"
    [[ -f "${PIP_STAMP}" ]] && have="$(cat "${PIP_STAMP}")"
    if [[ "${want}" == "${have}" ]]; then
        log "python: up to date"
        return
    fi
    log "python: pip install --require-hashes -r requirements.lock"
    "${VENV}/bin/python" -m pip install -q --require-hashes -r "${LOCK}" >&2
    log "python: pip install --no-deps -e ${REPO_ROOT}"
    "${VENV}/bin/python" -m pip install -q --no-deps -e "${REPO_ROOT}" >&2
    printf '%s\n' "${want}" > "${PIP_STAMP}"
}

main() {
    install_debian_packages
    install_prometheus
    build_timescaledb
    setup_python
    log "done"
}

main "$@"
