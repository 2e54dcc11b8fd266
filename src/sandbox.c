/*
 * sandbox.c - what a sandboxed runtime takes away (loom_options.sandbox):
 * everything that reaches the host's files, processes or memory outside
 * Lua's own objects, and the ways to change shared behaviour.
 */
#include <string.h>

#include "loom_int.h"

static int refuse(lua_State *L) {
  return luaL_error(L, "%s is not available in the sandbox", lua_tostring(L, lua_upvalueindex(1)));
}

static void replace(lua_State *L, const char *lib, const char *name) {
  if (lua_getglobal(L, lib) != LUA_TTABLE) {
    lua_pop(L, 1);
    return;
  }
  lua_pushfstring(L, "%s.%s", lib, name);
  lua_pushcclosure(L, refuse, 1);
  lua_setfield(L, -2, name);
  lua_pop(L, 1);
}

/* load() must refuse binary chunks: force mode "t". */
static int safe_load(lua_State *L) {
  int has_env = lua_gettop(L) >= 4;
  lua_settop(L, 4);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_pushvalue(L, 1);
  lua_pushvalue(L, 2);
  lua_pushliteral(L, "t");
  if (has_env)
    lua_pushvalue(L, 4);
  lua_call(L, has_env ? 4 : 3, LUA_MULTRET);
  return lua_gettop(L) - 4;
}

void loom__sandbox(lua_State *L) {
  static const char *const globals[] = {"io", "debug", "dofile", "loadfile", "collectgarbage", NULL};
  int i;
  for (i = 0; globals[i]; i++) {
    lua_pushnil(L);
    lua_setglobal(L, globals[i]);
  }
  replace(L, "os", "execute");
  replace(L, "os", "exit");
  replace(L, "os", "remove");
  replace(L, "os", "rename");
  replace(L, "os", "tmpname");
  replace(L, "os", "getenv");
  replace(L, "os", "setlocale");
  replace(L, "package", "loadlib");
  replace(L, "string", "dump");
  /* Only the preloaded (embedded) modules can be required. */
  if (lua_getglobal(L, "package") == LUA_TTABLE) {
    lua_getfield(L, -1, "searchers");
    if (lua_istable(L, -1)) {
      lua_Integer n = luaL_len(L, -1);
      for (; n > 1; n--) {
        lua_pushnil(L);
        lua_rawseti(L, -2, n);
      }
    }
    lua_pop(L, 1);
    lua_pushliteral(L, "");
    lua_setfield(L, -2, "path");
    lua_pushliteral(L, "");
    lua_setfield(L, -2, "cpath");
  }
  lua_pop(L, 1);
  lua_getglobal(L, "load");
  lua_pushcclosure(L, safe_load, 1);
  lua_setglobal(L, "load");
  /* The string metatable is shared by every string: protect it. */
  lua_pushliteral(L, "");
  if (lua_getmetatable(L, -1)) {
    lua_pushliteral(L, "string");
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}
