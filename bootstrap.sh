#!/usr/bin/env bash
# NovaCron's two entry points on a fresh Debian 12 machine (run as root):
#   ./bootstrap.sh dev    install what the daemon needs, build, run novacrond --dev and drive it
#   ./bootstrap.sh test   install everything, build, run every check and the whole test suite
# Environment: NOVACRON_SKIP_SETUP=1 skips apt/pip/build (already done);
#              NOVACRON_DEV_EXIT=1 makes "dev" stop the daemon after the demo instead of waiting.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
VENV="$ROOT/.venv"
export PATH="$VENV/bin:$HOME/.cargo/bin:$PATH"

# each step with the minutes and seconds since the script began (where CI's time goes)
log() { printf '\033[1m==> [%d:%02d] %s\033[0m\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*" >&2; }

DEV_PACKAGES=(libvirt-dev libvirt-clients pkg-config gcc python3-venv python3-dev)
TEST_PACKAGES=(libvirt-daemon libvirt-daemon-driver-qemu
  qemu-system-x86 qemu-utils busybox-static cpio iproute2 procps util-linux etcd-server)

apt_install() {
  local codename pkgs=()
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  for p in "$@"; do
    # qemu from bookworm: a newer qemu-utils (backports) blocks qemu-system-x86 7.2
    case "$p" in
      qemu-system-x86|qemu-utils) [ "$codename" = bookworm ] && p="$p/bookworm" ;;
    esac
    pkgs+=("$p")
  done
  if [ "$(id -u)" -ne 0 ]; then
    log "not root: skipping apt (needs: $*)"
    return
  fi
  log "apt-get install ${pkgs[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    --allow-downgrades "${pkgs[@]}" >/dev/null
}

check_rust() {
  if ! command -v cargo >/dev/null; then
    echo "bootstrap: cargo not found; NovaCron's native module needs Rust >= 1.85 (rustup)" >&2
    exit 1
  fi
}

python_setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV"
    python3 -m venv "$VENV"
  fi
  # the versions the suite last passed with (constraints.txt), build dependencies included
  log "pip install -e .[test] -c constraints.txt (builds the Rust extension novacron._core)"
  "$VENV/bin/pip" install -q --upgrade -c constraints.txt pip setuptools
  "$VENV/bin/pip" install -q -c constraints.txt --build-constraint constraints.txt -e ".[test]"
}

setup() {
  [ "${NOVACRON_SKIP_SETUP:-0}" = 1 ] && return
  apt_install "$@"
  check_rust
  python_setup
}

dev() {
  setup "${DEV_PACKAGES[@]}"
  local run="${XDG_RUNTIME_DIR:-/tmp/novacron-$(id -u)}"
  [ -n "${XDG_RUNTIME_DIR:-}" ] && run="$run/novacron"
  export NOVACRON_SOCKET="${NOVACRON_SOCKET:-$run/novacrond.sock}"
  log "starting novacrond --dev (libvirt test:///default, sqlite) on $NOVACRON_SOCKET"
  # the test driver's fake host has 2 NUMA nodes of 8 threads: dedicate 4 of each to the demo
  novacrond --dev --socket "$NOVACRON_SOCKET" --dedicated-cpus 4-7,12-15 &
  DAEMON_PID=$!
  trap 'kill -TERM "$DAEMON_PID" 2>/dev/null; wait "$DAEMON_PID" || true' EXIT
  for _ in $(seq 100); do
    novacron hello >/dev/null 2>&1 && break
    kill -0 "$DAEMON_PID" 2>/dev/null || { echo "novacrond exited" >&2; exit 1; }
    sleep 0.1
  done
  set -x
  novacron hello
  novacron node info
  novacron vm create demo --vcpus 2 --memory 256 --disk 1 --start 2>/dev/null \
    || novacron vm start demo 2>/dev/null || true
  novacron vm list
  novacron vm snapshot create demo first --description "taken by bootstrap.sh"
  novacron vm snapshot list demo
  novacron vm pause demo
  novacron vm get demo
  novacron vm create pinned --vcpus 2 --memory 256 --cpu-policy dedicated 2>/dev/null \
    || novacron vm get pinned
  novacron node topology
  set +x
  if [ "${NOVACRON_DEV_EXIT:-0}" = 1 ]; then
    novacron vm delete demo --force
    novacron vm delete pinned --force
    return
  fi
  log "novacrond is running (pid $DAEMON_PID). Try: NOVACRON_SOCKET=$NOVACRON_SOCKET novacron vm list   (Ctrl-C stops it)"
  wait "$DAEMON_PID"
}

run_tests() {
  setup "${DEV_PACKAGES[@]}" "${TEST_PACKAGES[@]}"
  export HYPOTHESIS_PROFILE="${HYPOTHESIS_PROFILE:-ci}"
  log "cargo fmt --check"; cargo fmt --all -- --check
  # --locked: the crates at Cargo.lock's versions, as the extension's build (pyproject.toml)
  log "cargo clippy"; cargo clippy --locked --workspace --all-targets -q -- -D warnings
  log "cargo test"; cargo test --locked --workspace -q
  log "fuzz the page engine briefly"; rust/fuzz/fuzz-briefly.sh
  log "ruff"; ruff check python tests bench; ruff format --check python tests bench
  log "mypy --strict"; mypy
  log "stubtest novacron._core"; python -m mypy.stubtest novacron._core
  # --durations: the slowest tests (the suite has a ~20 min budget on 2 cores)
  if [ "$#" -gt 0 ]; then
    log "pytest $*"; python -m pytest -q --durations=15 "$@"; return
  fi
  # every test module imports (seconds; a broken system test module otherwise shows only
  # once the unit and integration tests are done)
  log "pytest --collect-only"; python -m pytest -q --collect-only tests >/dev/null
  # two workers each (each test starts its own daemons, etcd and namespaces); the system
  # tests after the others, grouped so that those on the machine's libvirtd never overlap
  # (--dist loadgroup: see tests/xdist_system.py)
  log "pytest (unit, integration: 2 workers)"
  python -m pytest -q -n 2 --durations=10 tests/unit tests/integration
  log "pytest (system: 2 workers)"
  python -m pytest -q -n 2 --dist loadgroup --durations=15 tests/system
  log "every check and test passed"
}

case "${1:-}" in
  dev) dev ;;
  test) shift; run_tests "$@" ;;
  *) echo "usage: $0 dev|test [pytest args]" >&2; exit 2 ;;
esac
