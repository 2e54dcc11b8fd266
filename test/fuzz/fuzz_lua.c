/*
 * fuzz_lua.c - the libFuzzer harness of every loom fuzz target. A target is
 * a Lua driver (test/fuzz/<target>.lua) that returns a function taking the
 * input bytes; this file embeds Lua through loom's public C API (loom_new,
 * loom_state, loom_close), loads the driver once, and calls it for every
 * input in protected mode.
 *
 * The driver checks its own invariants and raises on a violation; the
 * harness turns any raised error into abort(), so libFuzzer records the
 * input as a crash together with the message. Memory errors are ASan's.
 *
 * Coverage of Lua code: libFuzzer only sees the C code compiled with
 * -fsanitize=fuzzer-no-link, which says nothing about a parser written in
 * Lua. A line hook on the driver's thread therefore counts (previous line,
 * line) edges of the Lua code into an array in libFuzzer's
 * "__libfuzzer_extra_counters" section, which libFuzzer treats as more
 * coverage counters. (Tasklets run on other threads and are not hooked:
 * their coverage is loom's C code.)
 *
 * Built by test/fuzz/build.sh with -DLOOM_FUZZ_DRIVER="<path of the .lua>"
 * and -DLOOM_FUZZ_ROOT="<repository root>" (so that examples/ are found).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "loom.h"

#ifndef LOOM_FUZZ_DRIVER
#error "build with -DLOOM_FUZZ_DRIVER=\"test/fuzz/<target>.lua\""
#endif
#ifndef LOOM_FUZZ_ROOT
#define LOOM_FUZZ_ROOT "."
#endif

static loom_runtime *rt;

#define LUA_EDGES (1 << 16)
__attribute__((section("__libfuzzer_extra_counters"))) static uint8_t lua_edges[LUA_EDGES];
static uintptr_t prev_edge;

static void line_hook(lua_State *S, lua_Debug *ar) {
  uintptr_t h;
  if (!lua_getinfo(S, "S", ar))
    return;
  /* the source string is interned: its address names the chunk */
  h = ((uintptr_t)ar->source * 31u) ^ ((uintptr_t)ar->currentline * 2654435761u);
  lua_edges[(h ^ (prev_edge >> 1)) & (LUA_EDGES - 1)]++;
  prev_edge = h;
}
static lua_State *L;
static int driver_ref = LUA_NOREF;

static int traceback(lua_State *S) {
  const char *msg = lua_tostring(S, 1);
  luaL_traceback(S, S, msg ? msg : "(error object is not a string)", 1);
  return 1;
}

static void close_runtime(void) {
  /* loom_close with whatever the last input left: LeakSanitizer, which
   * runs after this, then sees what a clean shutdown fails to free. */
  if (rt)
    loom_close(rt);
  rt = NULL;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  rt = loom_new(NULL);
  if (!rt) {
    fprintf(stderr, "fuzz: loom_new failed\n");
    abort();
  }
  L = loom_state(rt);
  lua_pushstring(L, LOOM_FUZZ_ROOT);
  lua_setglobal(L, "FUZZ_ROOT");
  lua_pushcfunction(L, traceback);
  if (luaL_loadfile(L, LOOM_FUZZ_DRIVER) != LUA_OK || lua_pcall(L, 0, 1, -2) != LUA_OK) {
    fprintf(stderr, "fuzz: cannot load %s: %s\n", LOOM_FUZZ_DRIVER, lua_tostring(L, -1));
    abort();
  }
  if (!lua_isfunction(L, -1)) {
    fprintf(stderr, "fuzz: %s must return a function\n", LOOM_FUZZ_DRIVER);
    abort();
  }
  driver_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pop(L, 1);
  atexit(close_runtime);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  int top = lua_gettop(L);
  lua_pushcfunction(L, traceback);
  lua_rawgeti(L, LUA_REGISTRYINDEX, driver_ref);
  lua_pushlstring(L, (const char *)data, size);
  prev_edge = 0;
  lua_sethook(L, line_hook, LUA_MASKLINE, 0);
  int rc = lua_pcall(L, 1, 0, top + 1);
  lua_sethook(L, NULL, 0, 0);
  if (rc != LUA_OK) {
    fprintf(stderr, "fuzz: the driver found a violation:\n%s\n", lua_tostring(L, -1));
    abort();
  }
  lua_settop(L, top);
  return 0;
}
