# Sourced by the other scripts: the project's own virtualenv in .venv, so nothing is installed
# into the system's Python (which stock Debian refuses: PEP 668).
#   ensure_venv EXTRAS   creates .venv when missing and installs the package with EXTRAS
#                        ("" for the server alone, "test" for the suite), within constraints.txt

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

VENV=${PRECHECK_VENV:-.venv}

ensure_venv() {
  local extras=$1 spec=.
  [ -n "$extras" ] && spec=".[$extras]"
  if [ ! -x "$VENV/bin/python" ]; then
    if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
      # Debian ships venv's pip bootstrap separately.
      rm -rf "$VENV"
      echo "installing: python3-venv"
      as_root apt-get update -qq
      DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq python3-venv >/dev/null
      python3 -m venv "$VENV"
    fi
    _quietly "$VENV/bin/python" -m pip install --upgrade pip
  fi
  _quietly "$VENV/bin/python" -m pip install -c constraints.txt -e "$spec"
}

# Runs a command, showing its output only if it fails.
_quietly() {
  local out
  out=$(mktemp)
  if ! "$@" >"$out" 2>&1; then
    cat "$out" >&2
    rm -f "$out"
    return 1
  fi
  rm -f "$out"
}
