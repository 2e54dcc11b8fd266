/*
 * core.c - luaopen_loom_core (the C module "loom.core") and luaopen_loom,
 * which registers the embedded Lua facade (lua/loom/ files) so that a host
 * or the CLI needs no files on package.path.
 */
#include <string.h>

#include "loom_int.h"

/* Generated at build time from lua/loom/ files (cmake/embed.cmake). */
typedef struct loom_lua_module {
  const char *name;
  const char *source;
  size_t len;
} loom_lua_module;
extern const loom_lua_module loom__lua_modules[];

LOOM_API int luaopen_loom_core(lua_State *L) {
  loom_runtime *rt = loom__runtime_create(L, NULL);
  lua_createtable(L, 0, 64);
  loom__errors_open(L, rt);
  loom__open_tasklet(L, rt);
  loom__open_timer(L, rt);
  loom__open_channel(L, rt);
  loom__open_sync(L, rt);
  loom__open_runtime(L, rt);
  loom__open_io(L, rt);
  loom__open_coro(L, rt);
  lua_pushliteral(L, LOOM_VERSION);
  lua_setfield(L, -2, "version");
  return 1;
}

static int load_embedded(lua_State *L) {
  const loom_lua_module *m = lua_touserdata(L, lua_upvalueindex(1));
  const char *name = lua_tostring(L, 1);
  lua_pushfstring(L, "=[loom] %s", m->name);
  if (luaL_loadbufferx(L, m->source, m->len, lua_tostring(L, -1), "t") != LUA_OK)
    return lua_error(L);
  lua_pushstring(L, name);
  lua_call(L, 1, 1);
  return 1;
}

/* Puts loom.core and the embedded Lua modules into package.preload. */
LOOM_HIDDEN void loom__preload(lua_State *L) {
  const loom_lua_module *m;
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, luaopen_loom_core);
  lua_setfield(L, -2, "loom.core");
  for (m = loom__lua_modules; m->name; m++) {
    lua_pushlightuserdata(L, (void *)m);
    lua_pushcclosure(L, load_embedded, 1);
    lua_setfield(L, -2, m->name);
  }
  lua_pop(L, 1);
}

LOOM_API int luaopen_loom(lua_State *L) {
  loom__preload(L);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "loom");
  /* package.preload.loom is the facade: requiring it from here would find
   * this very function first when loaded as a C module, so call the
   * preloader directly. */
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_getfield(L, -1, "loom");
  lua_remove(L, -2);
  lua_pushliteral(L, "loom");
  lua_call(L, 1, 1);
  lua_remove(L, -2);
  lua_remove(L, -2);
  return 1;
}
