#!/usr/bin/env bash
# packaging.sh - proves each way loom installs, from a clean copy of the tree
# into temporary directories: cmake --install plus a C host built through
# pkg-config and through find_package(loom); the rock installed with
# luarocks make and used from a stock lua5.4; the installed `loom` CLI; the
# shared library's exports. Prints `ok - name` / `not ok - name` per check
# and `N passed, M failed` at the end; exits 1 on any failure.
#
# Usage: test/packaging.sh        (JOBS=n for parallel builds, KEEP=1 keeps
#                                  the temporary directory for inspection)
set -u

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/loom-packaging.XXXXXX")
jobs=${JOBS:-2}
cc=${CC:-cc}
lua=${LUA:-lua5.4}
if [ "${KEEP:-0}" = 1 ]; then
  trap 'echo "# kept $work"' EXIT
else
  trap 'rm -rf "$work"' EXIT
fi

passed=0
failed=0

# check NAME COMMAND...: runs COMMAND with its output in $work/out; on
# failure the output's tail is shown as `#` comments.
check() {
  local name=$1
  shift
  if "$@" >"$work/out" 2>&1; then
    echo "ok - $name"
    passed=$((passed + 1))
  else
    echo "not ok - $name"
    tail -n 25 "$work/out" | sed 's/^/#   /'
    failed=$((failed + 1))
  fi
}

# The version the tree declares, which every installed artefact must report.
version=$(sed -n 's/^#define LOOM_VERSION "\(.*\)"$/\1/p' "$repo/include/loom.h")

# ---- a clean tree: tracked and new (not ignored) files, no build dirs ----
copy_tree() {
  mkdir -p "$work/src"
  if git -C "$repo" rev-parse --git-dir >/dev/null 2>&1; then
    # Tracked files deleted in the work tree are listed too; skip them.
    (cd "$repo" && git ls-files -z --cached --others --exclude-standard |
      while IFS= read -r -d '' f; do
        [ -e "$f" ] && printf '%s\0' "$f"
      done | xargs -0 cp -d --parents -t "$work/src")
  else
    (cd "$repo" && tar --exclude='./build*' --exclude=./.git -cf - .) | tar -C "$work/src" -xf -
  fi
}
check "clean copy of the source tree" copy_tree
src=$work/src
prefix=$work/prefix

# ---- 1. cmake --install, and C hosts built against the prefix ----
check "cmake configure and build" \
  sh -c "cmake -S '$src' -B '$work/build' -DBUILD_TESTING=OFF &&
         cmake --build '$work/build' -j '$jobs'"
check "cmake --install into a temporary prefix" \
  cmake --install "$work/build" --prefix "$prefix"

pc=$(find "$prefix" -name loom.pc -path '*/pkgconfig/*' 2>/dev/null | head -n 1)
libdir=$(dirname "$(dirname "${pc:-$prefix/lib/pkgconfig/loom.pc}")")

installed_files() {
  local f missing=0
  for f in include/loom.h bin/loom \
    "${libdir#"$prefix"/}/libloom.a" "${libdir#"$prefix"/}/libloom.so" \
    "${libdir#"$prefix"/}/libloom.so.0" "${libdir#"$prefix"/}/libloom.so.$version" \
    "${libdir#"$prefix"/}/pkgconfig/loom.pc" \
    "${libdir#"$prefix"/}/cmake/loom/loomConfig.cmake" \
    "${libdir#"$prefix"/}/cmake/loom/loomConfigVersion.cmake" \
    "${libdir#"$prefix"/}/cmake/loom/loomTargets.cmake" \
    "${libdir#"$prefix"/}/lua/5.4/loom/core.so" \
    share/lua/5.4/loom/init.lua; do
    if [ ! -e "$prefix/$f" ]; then
      echo "missing: $f"
      missing=1
    fi
  done
  return $missing
}
check "the prefix holds header, libraries, loom.pc, CMake package, CLI, Lua module" installed_files

soname() {
  readelf -d "$libdir/libloom.so" | grep -q 'SONAME.*\[libloom\.so\.0\]' &&
    [ "$(readlink "$libdir/libloom.so")" = libloom.so.0 ] &&
    [ "$(readlink "$libdir/libloom.so.0")" = "libloom.so.$version" ]
}
check "libloom.so has soname libloom.so.0 and version $version" soname

export PKG_CONFIG_PATH="$libdir/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"

pc_fields() {
  [ "$(pkg-config --modversion loom)" = "$version" ] &&
    [ "$(pkg-config --variable=prefix loom)" = "$prefix" ] &&
    pkg-config --static --libs loom | grep -q -- '-lm' &&
    pkg-config --static --libs loom | grep -q -- '-llua5.4' &&
    pkg-config --static --libs loom | grep -q -- '-luv'
}
check "loom.pc: version, prefix, static link flags" pc_fields

# shellcheck disable=SC2046  # pkg-config output is meant to be split
pc_consumer() {
  $cc -o "$work/consumer-pc" "$src/test/consumer/main.c" \
    $(pkg-config --cflags --libs loom) -Wl,-rpath,"$libdir" &&
    "$work/consumer-pc" &&
    ldd "$work/consumer-pc" | grep -q "$libdir/libloom.so.0"
}
check "C host built with pkg-config --cflags --libs loom runs" pc_consumer

# Static: libloom.a by path, then what pkg-config --static says it needs.
# shellcheck disable=SC2046
pc_static_consumer() {
  $cc -o "$work/consumer-pc-static" "$src/test/consumer/main.c" \
    $(pkg-config --cflags loom) "$libdir/libloom.a" \
    $(pkg-config --static --libs loom | sed 's/\(^\| \)-lloom\( \|$\)/ /') &&
    "$work/consumer-pc-static" &&
    ! ldd "$work/consumer-pc-static" | grep -q libloom
}
check "C host linked statically with pkg-config --static runs" pc_static_consumer

cmake_consumer() {
  cmake -S "$src/test/consumer" -B "$work/consumer-cmake" -DCMAKE_PREFIX_PATH="$prefix" &&
    cmake --build "$work/consumer-cmake" -j "$jobs" &&
    "$work/consumer-cmake/consumer" &&
    "$work/consumer-cmake/consumer_static" &&
    ldd "$work/consumer-cmake/consumer" | grep -q "$libdir/libloom.so.0" &&
    ! ldd "$work/consumer-cmake/consumer_static" | grep -q libloom
}
check "C hosts built with find_package(loom) (loom::loom, loom::loom_static) run" cmake_consumer

# A distribution package stages with DESTDIR; loom.pc must still name the
# final prefix, not the staging directory.
destdir() {
  DESTDIR="$work/stage" cmake --install "$work/build" --prefix /opt/loom &&
    grep -qx 'prefix=/opt/loom' "$work/stage/opt/loom/lib/pkgconfig/loom.pc" &&
    [ -e "$work/stage/opt/loom/lib/lua/5.4/loom/core.so" ]
}
check "DESTDIR staging keeps the final prefix in loom.pc" destdir

# The default layout puts the Lua module where lua5.4 looks under a prefix.
prefix_module() {
  local out
  out=$(cd "$work" &&
    LUA_PATH="$prefix/share/lua/5.4/?.lua;$prefix/share/lua/5.4/?/init.lua" \
    LUA_CPATH="$libdir/lua/5.4/?.so" \
    "$lua" -e 'local loom = require("loom")
               print(loom.run(function() loom.sleep(0.01) return "ok" end))') &&
    [ "$out" = ok ]
}
check "stock $lua runs require \"loom\" from the cmake --install layout" prefix_module

# ---- 2. the rock, installed with luarocks make from the clean tree ----
tree=$work/tree
rock() {
  (cd "$src" &&
    luarocks --lua-version=5.4 --tree "$tree" make rockspec/loom-scm-1.rockspec)
}
check "luarocks --lua-version=5.4 make rockspec/loom-scm-1.rockspec (offline)" rock

rock_layout() {
  local f missing=0
  for f in share/lua/5.4/loom/init.lua lib/lua/5.4/loom/core.so bin/loom; do
    [ -e "$tree/$f" ] || { echo "missing: $f"; missing=1; }
  done
  # Development files stay out of the tree: LuaRocks would put them on cpath.
  if find "$tree" -name 'libloom*' -o -name loom.h -o -name loom.pc | grep .; then
    missing=1
  fi
  return $missing
}
check "the rock installs loom/init.lua, loom/core.so and the loom command only" rock_layout

rock_module() {
  local out
  out=$(cd "$work" &&
    eval "$(luarocks --lua-version=5.4 --tree "$tree" path)" &&
    LOOM_TREE=$tree "$lua" -e '
      local loom = require("loom")
      local core = package.searchpath("loom.core", package.cpath)
      assert(core:find(os.getenv("LOOM_TREE"), 1, true), core)
      print(loom.run(function() loom.sleep(0.01) return "ok" end))') &&
    [ "$out" = ok ]
}
check "stock $lua runs require \"loom\" with the paths luarocks path prints" rock_module

core_no_liblua() {
  ! readelf -d "$tree/lib/lua/5.4/loom/core.so" | grep NEEDED | grep -q liblua
}
check "loom/core.so does not link liblua" core_no_liblua

check "rockspecs pass luarocks lint" \
  sh -c "cd '$src' && luarocks --lua-version=5.4 lint rockspec/loom-scm-1.rockspec &&
         luarocks --lua-version=5.4 lint rockspec/loom-$version-1.rockspec"

# ---- 3. the CLI ----
cli_version() {
  "$prefix/bin/loom" --version | grep -q "^loom $version " &&
    "$tree/bin/loom" --version | grep -q "^loom $version "
}
check "loom --version (cmake prefix and rock tree) reports $version" cli_version

cli_script() {
  printf 'local loom = require "loom"\nloom.sleep(0.01)\nprint("cli-" .. arg[1])\n' >"$work/s.lua"
  [ "$("$prefix/bin/loom" "$work/s.lua" ok)" = cli-ok ]
}
check "installed loom runs a script with arguments" cli_script

# ---- 4. exports of the shared library ----
exports() {
  local syms
  syms=$(nm -D --defined-only "$libdir/libloom.so" | awk '{ print $NF }')
  echo "$syms" | grep -qx loom_new && echo "$syms" | grep -qx luaopen_loom &&
    ! echo "$syms" | grep -v -E '^(loom_|luaopen_)'
}
check "libloom.so exports only loom_* and luaopen_* (nm -D)" exports

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
