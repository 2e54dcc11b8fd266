-- loom 0.1.0: luarocks --lua-version=5.4 build loom-0.1.0-1.rockspec (or make from the v0.1.0 tag)
-- Installs the module (loom/core.so, loom/*.lua) and the `loom` command into
-- the tree; the build is the project's CMake build, pointed at LuaRocks' dirs.
rockspec_format = "3.0"
package = "loom"
version = "0.1.0-1"

source = {
  -- The project's public repository; `luarocks make` builds the clone it
  -- runs in and never fetches this.
  url = "git+https://example.org/loom/loom.git",
  tag = "v0.1.0",
}

description = {
  summary = "Lua 5.4 tasklet runtime on libuv",
  detailed = [[
loom runs Lua 5.4 coroutines as tasklets on a libuv reactor: scripts write
plain sequential code (conn:read_line(), loom.sleep(1), ch:receive()) and
only the calling tasklet waits. It is a module for a stock lua5.4
(require "loom"), a CLI (`loom script.lua`, a drop-in for lua5.4), and a C
library for hosts that embed runtimes.]],
  homepage = "https://example.org/loom",
  license = "MIT",
  labels = { "async", "coroutines", "libuv", "networking" },
}

dependencies = {
  "lua >= 5.4, < 5.5",
}

external_dependencies = {
  LIBUV = {
    header = "uv.h",
    library = "uv",
  },
}

build = {
  type = "cmake",
  variables = {
    CMAKE_BUILD_TYPE = "Release",
    CMAKE_C_FLAGS = "$(CFLAGS)",
    -- Where the rock is assembled before LuaRocks deploys it into the tree.
    CMAKE_INSTALL_PREFIX = "$(PREFIX)",
    CMAKE_INSTALL_BINDIR = "$(BINDIR)",
    LOOM_LUADIR = "$(LUADIR)",
    LOOM_LIBDIR_LUA = "$(LIBDIR)",
    -- The Lua and libuv LuaRocks found: headers first, and the prefixes for
    -- pkg-config (lua5.4.pc, libuv.pc) through CMAKE_PREFIX_PATH.
    LUA_INCDIR = "$(LUA_INCDIR)",
    CMAKE_PREFIX_PATH = "$(LUA_DIR);$(LIBUV_DIR)",
    -- A rock carries the module and the command only: LuaRocks would deploy
    -- a header, libloom or pkgconfig/ under lib/ onto package.cpath. C hosts
    -- install with cmake --install (docs/install.md).
    LOOM_INSTALL_DEV = "OFF",
    -- Warnings must not fail a user's build on a newer compiler.
    LOOM_WERROR = "OFF",
    BUILD_TESTING = "OFF",
  },
  copy_directories = { "docs" },
}

test = {
  -- As .ci/run does: the specs run inside the loom CLI (SPEC section 7,
  -- `loom busted spec`), so they may block; those tagged "stock" run in a
  -- stock lua5.4 through require "loom" with this clone's lua/ and the
  -- freshly built loom/core.so. Both are built in LuaRocks' build directory.
  -- busted comes from the system (apt-get install lua-busted) or $BUSTED,
  -- so testing needs no rocks server. Arguments after `luarocks test --`
  -- go to both busted runs.
  type = "command",
  command = [[sh -c 'B=${BUSTED:-$(command -v busted)} &&
    cmake -S . -B build.luarocks -DLOOM_WERROR=OFF >/dev/null &&
    cmake --build build.luarocks --target loom_cli loom_core &&
    build.luarocks/loom "$B" --exclude-tags=stock "$@" spec &&
    export LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="build.luarocks/lib/?.so;;" &&
    lua5.4 "$B" --tags=stock "$@" spec' loom-test]],
}
