#!/usr/bin/env bash
# The oldest meson that meson.build claims (meson_version: '>= X') really
# builds it: exactly that version from PyPI, in a scratch venv, configures,
# builds and installs both layouts: the C build (library, CLI, tests, man
# page, completions) and the wheel's (Python extension, CLI in the package,
# the install tags meson-python uses).  pyproject.toml's build requirement
# and requirements-dev.txt must name the same minimum.  (Issue #16: the
# claim was 1.3 while install_man(install_tag:) needs 1.11.)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}
min=$(sed -n "s/.*meson_version: '>= *\([0-9.]*\)'.*/\1/p" meson.build)
[ -n "$min" ] || { echo "check-meson-min: no meson_version in meson.build" >&2; exit 1; }
for f in pyproject.toml requirements-dev.txt; do
  grep -q "meson>=$min\b" "$f" || {
    echo "check-meson-min: $f does not require meson>=$min (meson.build's minimum)" >&2; exit 1; }
done
w=$ROOT/build/meson-min
rm -rf "$w"
"$PYTHON" -m venv "$w/venv"
"$w/venv/bin/python" -m pip install -q "meson==$min" ninja 2>&1 | grep -v "^WARNING: Location" || true
export PATH=$w/venv/bin:$PATH
[ "$(meson --version)" = "$min" ] || { echo "check-meson-min: got meson $(meson --version)" >&2; exit 1; }
echo "== meson $min"
# meson says what it could not do on stdout: show it when a step fails
quiet() { "$@" > "$w/step.log" 2>&1 || { cat "$w/step.log"; echo "check-meson-min: meson $min: $* failed" >&2; exit 1; }; }
quiet meson setup "$w/c" -Dpython=disabled
quiet ninja -C "$w/c"
quiet env DESTDIR="$w/root-c" meson install -C "$w/c"
test -x "$(find "$w/root-c" -path '*/bin/heavylock')"
test -n "$(find "$w/root-c" -name heavylock.1)"
echo "== C build: configured, built, installed"
quiet meson setup "$w/py" -Dpython=enabled -Dtests=false -Dcli_in_package=true
quiet ninja -C "$w/py"
quiet env DESTDIR="$w/root-py" meson install -C "$w/py" --tags runtime,python-runtime
test -n "$(find "$w/root-py" -name '_native*.so')"
test -x "$(find "$w/root-py" -path '*/heavylock/heavylock')"
if find "$w/root-py" -name heavylock.1 | grep -q .; then
  echo "check-meson-min: the wheel's install tags carry the man page" >&2; exit 1
fi
echo "== wheel layout: configured, built, installed (tags runtime,python-runtime)"
