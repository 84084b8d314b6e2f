# Shared by scripts/start-gateway and scripts/run-tests: install what is missing, idempotently.
# Sourced, not run. Needs root for the Docker engine (as on this project's machines).

KGE_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KGE_VENV=${KGE_VENV:-$KGE_ROOT/.venv}

say() { echo "[kge-setup] $*" >&2; }

ensure_python_venv() {
  # Debian's python3 has no ensurepip until python3-venv is installed: `python3 -m venv` fails without it.
  if python3 -c "import ensurepip, venv" >/dev/null 2>&1; then return 0; fi
  say "python3 -m venv needs Debian's python3-venv: installing it"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
}

ensure_venv() {  # ensure_venv [extras]
  ensure_python_venv
  local extras=${1:-}
  local spec="$KGE_ROOT"; [ -n "$extras" ] && spec="$KGE_ROOT[$extras]"
  [ -x "$KGE_VENV/bin/python" ] || { say "creating $KGE_VENV"; python3 -m venv "$KGE_VENV"; }
  local stamp="$KGE_VENV/.kge-installed-${extras:-base}"
  local want; want=$(cat "$KGE_ROOT/pyproject.toml" "$KGE_ROOT/setup.py" | sha256sum | cut -c1-16)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "installing kernel_gateway_ext${extras:+ with [$extras]} into $KGE_VENV"
    "$KGE_VENV/bin/pip" install -q --disable-pip-version-check -U pip wheel >/dev/null
    "$KGE_VENV/bin/pip" install -q --disable-pip-version-check -e "$spec"
    echo "$want" > "$stamp"
  fi
}

ensure_docker() {
  if docker info >/dev/null 2>&1; then return 0; fi
  if ! command -v dockerd >/dev/null 2>&1; then
    say "no Docker engine: installing Debian's docker.io"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq docker.io >/dev/null
  fi
  if ! docker info >/dev/null 2>&1; then
    say "starting dockerd in the background (log: /var/log/kge-dockerd.log)"
    # In a subshell that exits at once: the engine must not be a child of whatever runs next
    # (run-tests execs pytest, which would keep the stopped engine a zombie and never reap it).
    (setsid nohup dockerd >/var/log/kge-dockerd.log 2>&1 < /dev/null &)
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  fi
  docker info >/dev/null 2>&1 || { say "dockerd did not come up; see /var/log/kge-dockerd.log"; return 1; }
}

ensure_browser() {
  # Debian's Chromium and its driver for the JupyterLab browser test (no browser download).
  if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then return 0; fi
  say "installing Debian's chromium and chromium-driver (browser tests)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null
}

ensure_compose() {
  # Debian's docker-compose: the deploy test brings deploy/docker-compose.yml up with it.
  if command -v docker-compose >/dev/null 2>&1; then return 0; fi
  say "installing Debian's docker-compose (deploy test)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq docker-compose >/dev/null
}

ensure_images() {
  # Cached: skipped when the images exist and their build context is unchanged.
  "$KGE_VENV/bin/kernel-gateway-ext" build-images
}

# The real Backend.AI clients the v2 tests drive, each in its own venv (their pins conflict with
# ours and with each other). Installed with --no-deps plus what they import, as they need on 3.11.
KGE_CLIENT_VENVS=${KGE_CLIENT_VENVS:-$KGE_ROOT/.venv-clients}
V2_CLIENT_DEPS="requests aiohttp async-timeout multidict python-dateutil namedlist ConfigArgParse tabulate humanize colorama"

_client_venv() {  # _client_venv NAME "PACKAGE==VER" "EXTRA DEPS"
  local dir="$KGE_CLIENT_VENVS/$1" want="$2 | $3"
  if [ "$(cat "$dir/.kge-installed" 2>/dev/null)" = "$want" ]; then return 0; fi
  say "installing $2 into $dir"
  rm -rf "$dir" && python3 -m venv "$dir"
  "$dir/bin/pip" install -q --disable-pip-version-check --no-deps "$2"
  # shellcheck disable=SC2086
  "$dir/bin/pip" install -q --disable-pip-version-check $3 2>&1 | grep -v "dependency resolver\\|requires\\|WARNING: Location" >&2 || true
  echo "$want" > "$dir/.kge-installed"
}

_client_venv_with_deps() {  # _client_venv_with_deps NAME "REQUIREMENTS..." (a normal install)
  local dir="$KGE_CLIENT_VENVS/$1" want="$2"
  if [ "$(cat "$dir/.kge-installed" 2>/dev/null)" = "$want" ]; then return 0; fi
  say "installing $2 into $dir"
  rm -rf "$dir" && python3 -m venv "$dir"
  # shellcheck disable=SC2086
  "$dir/bin/pip" install -q --disable-pip-version-check $2 2>&1 | grep -v "WARNING: Location" >&2 || true
  echo "$want" > "$dir/.kge-installed"
}

ensure_client_venvs() {
  ensure_python_venv
  _client_venv_with_deps skaha-1.7.0 "skaha==1.7.0"
  _client_venv_with_deps canfar-1.5.2 "canfar==1.5.2 typer==0.27.2"
  _client_venv bai-1.1.11 "backend.ai-client==1.1.11" "$V2_CLIENT_DEPS"
  _client_venv bai-1.4.2 "backend.ai-client==1.4.2" "$V2_CLIENT_DEPS tqdm aiohttp==3.9.5 yarl==1.9.4"
  _client_venv sorna-0.9.8 "sorna-client==0.9.8" "$V2_CLIENT_DEPS simplejson"
}
