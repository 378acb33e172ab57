#!/usr/bin/env bash
# The C distribution, checked as a C user would meet it: meson builds and
# installs into a DESTDIR tree; a CMake project finds it with find_package
# and links it shared and static; a plain cc build uses pkg-config; the
# shared library has its soname and exports only hl_ symbols; the man page
# renders; the bash completion loads and completes (zsh's is checked when
# zsh is installed).
set -euo pipefail
cd "$(dirname "$0")/../.."
b=build/dist
rm -rf "$b"
meson setup "$b" -Dpython=disabled -Dtests=false --prefix=/usr/local --buildtype=release >/dev/null
ninja -C "$b" >/dev/null
DESTDIR="$PWD/$b/root" meson install -C "$b" --quiet
root=$PWD/$b/root/usr/local
libdir=$(find "$root" -name 'libheavylock.so.0' -printf '%h\n' | head -1)
echo "== installed under $root"
(cd "$root" && find . -type f -o -type l | sort | sed 's/^/   /')
for f in include/heavylock.h bin/heavylock share/man/man1/heavylock.1 \
         share/bash-completion/completions/heavylock share/zsh/site-functions/_heavylock; do
  test -e "$root/$f" || { echo "missing: $f"; exit 1; }
done
test -e "$libdir/libheavylock.a" && test -e "$libdir/pkgconfig/heavylock.pc" \
  && test -e "$libdir/cmake/heavylock/heavylockConfig.cmake"
soname=$(readelf -d "$libdir/libheavylock.so.0" | sed -n 's/.*Library soname: \[\(.*\)\]/\1/p')
[ "$soname" = libheavylock.so.0 ] || { echo "bad soname: $soname"; exit 1; }
bad=$(nm -D --defined-only "$libdir/libheavylock.so.0" | awk '$3 !~ /^hl_[a-z]/ && $3 != "HEAVYLOCK_0" {print $3}')
[ -z "$bad" ] || { echo "exports internals: $bad"; exit 1; }
echo "== soname $soname, exports only hl_*"
# libpq is loaded at run time (src/pq.c), never linked: not in DT_NEEDED, not
# in the pkg-config file nor the CMake package (issue #16).
if readelf -d "$libdir/libheavylock.so.0" "$root/bin/heavylock" | grep -i 'NEEDED.*libpq'; then
  echo "libpq is linked; it must be loaded at run time only"; exit 1
fi
if grep -ilE 'libpq|-lpq|;pq' "$libdir/pkgconfig/heavylock.pc" "$libdir"/cmake/heavylock/*.cmake; then
  echo "the pkg-config file or CMake package mentions libpq"; exit 1
fi
echo "== no libpq in DT_NEEDED, heavylock.pc or the CMake package"

lock=$(mktemp -d)/consumer.lock
echo "== CMake: find_package(heavylock) from the installed tree"
cmake -S tests/dist/consumer -B "$b/consumer" -DCMAKE_PREFIX_PATH="$root" >/dev/null
cmake --build "$b/consumer" >/dev/null
LD_LIBRARY_PATH=$libdir "$b/consumer/consumer" "$lock"
"$b/consumer/consumer_static" "$lock"
ldd "$b/consumer/consumer" | grep "libheavylock.so.0 => $libdir" >/dev/null \
  || { echo "consumer is not linked to the installed shared library"; exit 1; }

echo "== pkg-config: cc \$(pkg-config --cflags --libs heavylock)"
pc() { PKG_CONFIG_SYSROOT_DIR="$PWD/$b/root" PKG_CONFIG_LIBDIR="$libdir/pkgconfig" pkg-config "$@"; }
cc -o "$b/pc-consumer" tests/dist/consumer/main.c $(pc --cflags --libs heavylock)
LD_LIBRARY_PATH=$libdir "$b/pc-consumer" "$lock"
echo "== pkg-config --static: the static library with what --static lists"
# As a static-linking user does it (-l:libheavylock.a picks the archive over
# the .so): every symbol it needs comes from --static's list (issue #16:
# it used to miss libpq's, "undefined reference to PQport").
libs=$(pc --static --libs heavylock)
cc -o "$b/pc-consumer-static" tests/dist/consumer/main.c $(pc --cflags heavylock) \
  ${libs/-lheavylock/-l:libheavylock.a}
ldd "$b/pc-consumer-static" | grep -q libheavylock && { echo "static consumer loads the .so"; exit 1; }
"$b/pc-consumer-static" "$lock"
[ "$(pc --modversion heavylock)" = "$("$root/bin/heavylock" --version | awk '{print $NF}')" ]

echo "== man -l heavylock.1"
out=$(MANWIDTH=80 man -l "$root/share/man/man1/heavylock.1" 2>&1)
echo "$out" | grep "run heavy commands" >/dev/null || { echo "$out" | head; exit 1; }
echo "$out" | grep "EXIT STATUS" >/dev/null && echo "$out" | grep -- "--conflict-exit-code" >/dev/null
warn=$(LC_ALL=C.UTF-8 MANROFFSEQ='' man --warnings -l -Tutf8 "$root/share/man/man1/heavylock.1" 2>&1 >/dev/null || true)
[ -z "$warn" ] || { echo "man warnings: $warn"; exit 1; }
echo "   renders, $(echo "$out" | wc -l) lines, no warnings"

echo "== bash completion"
got=$(bash -c 'source "$1"; COMP_WORDS=(heavylock st); COMP_CWORD=1; _heavylock; echo "${COMPREPLY[*]}"
               COMP_WORDS=(heavylock run --lo); COMP_CWORD=2; _heavylock; echo "${COMPREPLY[*]}"' \
      _ "$root/share/bash-completion/completions/heavylock")
[ "$got" = $'status\n--lock' ] || { echo "bash completion gave: $got"; exit 1; }
echo "   ok"
if command -v zsh >/dev/null; then
  zsh -n "$root/share/zsh/site-functions/_heavylock" && echo "== zsh completion parses"
else
  echo "== zsh not installed: _heavylock installed, not run"
fi
echo "check-dist-c: ok"
