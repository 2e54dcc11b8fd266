/*
 * sandbox.c - what a sandboxed runtime takes away (loom_options.sandbox):
 * everything that reaches the host's files, processes, memory or settings,
 * the ways to change behaviour shared with the host's own Lua code, and the
 * ways to run code that the count hook cannot preempt.
 *
 * The rule is an allowlist wherever a list can grow: only the loom
 * functions named below are visible, so a module added to loom later stays
 * out of the sandbox until someone decides it is safe. docs/embedding.md
 * ("The sandbox") lists every route and test/test_sandbox.c tries each one.
 */
#include <string.h>

#include "host.h"

/* ------------------------------------------------------------ refusals */

static int refuse(lua_State *L) {
  return luaL_error(L, "%s is not available in the sandbox", lua_tostring(L, lua_upvalueindex(1)));
}

/* t[name] = a function that refuses (t on top). */
static void refuse_field(lua_State *L, const char *label, const char *name) {
  lua_pushfstring(L, "%s%s", label, name);
  lua_pushcclosure(L, refuse, 1);
  lua_setfield(L, -2, name);
}

static void refuse_in(lua_State *L, const char *lib, const char *const *names) {
  if (lua_getglobal(L, lib) == LUA_TTABLE) {
    lua_pushfstring(L, "%s.", lib);
    for (; *names; names++) {
      lua_pushvalue(L, -2);
      refuse_field(L, lua_tostring(L, -2), *names);
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}

/* ------------------------------------------------------------ guarded calls */

/* Calls upvalue 1 with the arguments while the strict guard hook sits on
 * this thread: a C function that calls back into Lua (a table.sort
 * comparator, a __index run by table.concat, a __tostring run by print)
 * runs that Lua code where the thread cannot yield, so the count hook
 * cannot preempt it; the guard stops it when the step has overrun. */
static int guarded_call(lua_State *L) {
  lua_Hook hook = lua_gethook(L);
  int mask = lua_gethookmask(L), count = lua_gethookcount(L), rc;
  int n = lua_gettop(L);
  luaL_checkstack(L, 2, NULL);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_sethook(L, loom__guard_hook_strict, LUA_MASKCOUNT, 1000);
  rc = lua_pcall(L, n, LUA_MULTRET, 0);
  lua_sethook(L, hook, mask, count);
  if (rc != LUA_OK)
    return lua_error(L);
  return lua_gettop(L);
}

/* t[name] = guarded(t[name]) for each name (t on top). */
static void guard_fields(lua_State *L, const char *const *names) {
  for (; *names; names++) {
    if (lua_getfield(L, -1, *names) != LUA_TFUNCTION) {
      lua_pop(L, 1);
      continue;
    }
    lua_pushcclosure(L, guarded_call, 1);
    lua_setfield(L, -2, *names);
  }
}

static void guard_lib(lua_State *L, const char *lib, const char *const *names) {
  if (lua_getglobal(L, lib) == LUA_TTABLE)
    guard_fields(L, names);
  lua_pop(L, 1);
}

/* xpcall(f, msgh, ...): the body stays yieldable (a tasklet may block in
 * it); only the message handler, which Lua runs where nothing can yield,
 * is guarded. */
static int xpcall_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  return lua_gettop(L) - (int)ctx;
}

static int safe_xpcall(lua_State *L) {
  int n = lua_gettop(L);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  luaL_checkstack(L, 2, NULL);
  lua_pushvalue(L, 2);
  lua_pushcclosure(L, guarded_call, 1);
  lua_replace(L, 2);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_callk(L, n, LUA_MULTRET, 0, xpcall_k);
  return xpcall_k(L, LUA_OK, 0);
}

/* ipairs: the iterator in Lua, so that a __index it runs can be preempted
 * like any Lua code (the C iterator would run it where it cannot yield). */
static const char ipairs_code[] = "local function iter(t, i)\n"
                                  "  i = i + 1\n"
                                  "  local v = t[i]\n"
                                  "  if v ~= nil then return i, v end\n"
                                  "end\n"
                                  "return function(t)\n"
                                  "  if t == nil then error(\"bad argument #1 to 'ipairs' (table "
                                  "expected, got no value)\", 2) end\n"
                                  "  return iter, t, 0\n"
                                  "end\n";

/* ------------------------------------------------------------ base library */

/* load() must refuse binary chunks: mode "t" always; a reader function is
 * guarded like any callback of a C function. */
static int safe_load(lua_State *L) {
  int has_env = !lua_isnone(L, 4);
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

/* setmetatable without __gc: a finalizer runs wherever the collector
 * happens to run, with hooks off, so nothing could stop it spinning. */
static int safe_setmetatable(lua_State *L) {
  int t = lua_type(L, 2);
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_argexpected(L, t == LUA_TNIL || t == LUA_TTABLE, 2, "nil or table");
  if (luaL_getmetafield(L, 1, "__metatable") != LUA_TNIL)
    return luaL_error(L, "cannot change a protected metatable");
  if (t == LUA_TTABLE) {
    lua_pushliteral(L, "__gc");
    if (lua_rawget(L, 2) != LUA_TNIL)
      return luaL_error(L, "__gc metamethods are not available in the sandbox");
    lua_pop(L, 1);
  }
  lua_settop(L, 2);
  lua_setmetatable(L, 1);
  return 1;
}

/* collectgarbage: only what cannot stop, tune or stall the collector. */
static int safe_collectgarbage(lua_State *L) {
  static const char *const opts[] = {"count", "step", "isrunning", NULL};
  int o = luaL_checkoption(L, 1, "count", opts);
  switch (o) {
  case 0: {
    int kb = lua_gc(L, LUA_GCCOUNT, 0), b = lua_gc(L, LUA_GCCOUNTB, 0);
    lua_pushnumber(L, (lua_Number)kb + (lua_Number)b / 1024);
    return 1;
  }
  case 1:
    lua_pushboolean(L, lua_gc(L, LUA_GCSTEP, 0)); /* one basic step, whatever the size */
    return 1;
  default:
    lua_pushboolean(L, lua_gc(L, LUA_GCISRUNNING, 0));
    return 1;
  }
}

/* ------------------------------------------------------------ loom module */

/* What a sandboxed script may use of loom. Everything else (fs, process,
 * signal, stdin/stdout/stderr, anything added later) is removed; the names
 * in `refused` stay as functions that raise. */
static const char *const loom_allowed[] = {"AlreadyCalled",
                                           "Cancelled",
                                           "Deadlock",
                                           "Failure",
                                           "TaskletExit",
                                           "Timeout",
                                           "block_on",
                                           "blocking_tasklet",
                                           "call_later",
                                           "can_block",
                                           "channel",
                                           "current",
                                           "deferred",
                                           "deferred_list",
                                           "deferred_tasklet",
                                           "dump",
                                           "event",
                                           "fail",
                                           "gather",
                                           "group",
                                           "is_deferred",
                                           "looping_call",
                                           "maybe_deferred",
                                           "now",
                                           "report_error",
                                           "run",
                                           "select",
                                           "semaphore",
                                           "sleep",
                                           "spawn",
                                           "spawn_now",
                                           "spawn_with",
                                           "stats",
                                           "succeed",
                                           "tasklets",
                                           "timeout",
                                           "version",
                                           "yield",
                                           NULL};
static const char *const loom_net[] = {"tcp", "udp", "dns", NULL};
/* Host settings and control: the host owns preemption, error reports, the
 * loop and shutdown. */
static const char *const loom_refused[] = {"on_error", "on_shutdown", "stop", NULL};

static int listed(const char *const *list, const char *name) {
  for (; *list; list++)
    if (strcmp(*list, name) == 0)
      return 1;
  return 0;
}

/* loom.config() reads the settings; changing them is refused. */
static int safe_config(lua_State *L) {
  if (!lua_isnoneornil(L, 1))
    return luaL_error(L, "loom.config{...} is not available in the sandbox");
  lua_settop(L, 0);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_call(L, 0, 1);
  return 1;
}

/* Filters the table on top in place: allowed names stay, refused ones
 * raise, config reads only, everything else goes, and so does its
 * metatable (the facade's makes loom.stdin & co. on first access). */
static void filter_loom(lua_State *L, int net) {
  int t = lua_gettop(L);
  lua_newtable(L); /* keys to drop, collected first: no edits while iterating */
  lua_pushnil(L);
  while (lua_next(L, t)) {
    lua_pop(L, 1);
    if (lua_type(L, -1) != LUA_TSTRING || !(listed(loom_allowed, lua_tostring(L, -1)) ||
                                            (net && listed(loom_net, lua_tostring(L, -1))))) {
      lua_pushvalue(L, -1);
      lua_rawseti(L, t + 1, (lua_Integer)lua_rawlen(L, t + 1) + 1);
    }
  }
  {
    lua_Integer i, n = (lua_Integer)lua_rawlen(L, t + 1);
    for (i = 1; i <= n; i++) {
      lua_rawgeti(L, t + 1, i);
      if (lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), "config") == 0 &&
          lua_getfield(L, t, "config") == LUA_TFUNCTION) {
        lua_pushcclosure(L, safe_config, 1);
        lua_setfield(L, t, "config");
      } else {
        lua_settop(L, t + 2);
        lua_pushnil(L);
        lua_rawset(L, t);
      }
      lua_settop(L, t + 1);
    }
  }
  lua_settop(L, t);
  lua_pushnil(L);
  lua_setmetatable(L, t);
  {
    const char *const *r;
    for (r = loom_refused; *r; r++)
      refuse_field(L, "loom.", *r);
  }
}

static int return_upvalue(lua_State *L) {
  lua_pushvalue(L, lua_upvalueindex(1));
  return 1;
}

/* A shallow copy of the table on top, pushed. */
static void push_copy(lua_State *L) {
  int t = lua_gettop(L);
  lua_newtable(L);
  lua_pushnil(L);
  while (lua_next(L, t)) {
    lua_pushvalue(L, -2);
    lua_insert(L, -2);
    lua_rawset(L, t + 1);
  }
}

/* The loom facade (global loom, package.loaded.loom) is filtered in place.
 * The core table stays whole for the facade, which holds it privately;
 * scripts asking for "loom.core" get a filtered copy, also when they clear
 * package.loaded to make require run the loader again. */
static void sandbox_loom(lua_State *L, int net) {
  if (lua_getglobal(L, "loom") == LUA_TTABLE)
    filter_loom(L, net);
  lua_pop(L, 1);
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  if (lua_getfield(L, -1, "loom.core") == LUA_TTABLE) {
    push_copy(L);
    filter_loom(L, net);
    lua_pushvalue(L, -1);
    lua_setfield(L, -4, "loom.core");
    lua_getfield(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushvalue(L, -2);
    lua_pushcclosure(L, return_upvalue, 1);
    lua_setfield(L, -2, "loom.core");
    lua_pop(L, 2);
  }
  lua_pop(L, 2);
}

/* ------------------------------------------------------------ metatables */

/* getmetatable() of a loom object or of a string returns a stand-in, so a
 * script cannot change the behaviour of objects the host's code shares. The
 * stand-in of a loom metatable keeps __name and __call, which error
 * messages and callable checks read. */
static void protect_metatables(lua_State *L) {
  lua_pushliteral(L, "");
  if (lua_getmetatable(L, -1)) {
    lua_pushliteral(L, "string");
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  lua_pushnil(L);
  while (lua_next(L, LUA_REGISTRYINDEX)) { /* key, value */
    if (lua_type(L, -2) == LUA_TSTRING && lua_type(L, -1) == LUA_TTABLE &&
        strncmp(lua_tostring(L, -2), "loom.", 5) == 0) {
      if (lua_getfield(L, -1, "__name") == LUA_TSTRING) { /* key, mt, name */
        lua_createtable(L, 0, 2);
        lua_insert(L, -2);
        lua_setfield(L, -2, "__name"); /* key, mt, stand-in */
        lua_getfield(L, -2, "__call");
        lua_setfield(L, -2, "__call");
        lua_setfield(L, -2, "__metatable");
      } else
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
  }
}

/* ------------------------------------------------------------ package */

/* Modules a sandboxed require may return: the safe standard libraries and
 * loom's facade, filtered core and Deferreds. Anything else that was loaded
 * or preloaded before (loom.process, loom.fs, io, debug, a host's module) is
 * forgotten; a host adds what scripts may use after loom_new. */
static const char *const loaded_allowed[] = {"_G",     "package",   "coroutine",     "table",
                                             "string", "math",      "utf8",          "os",
                                             "loom",   "loom.core", "loom.deferred", NULL};
static const char *const preload_allowed[] = {"loom", "loom.core", "loom.deferred", NULL};
static const char *const net_modules[] = {"loom.tcp", "loom.udp", "loom.dns", NULL};

/* Removes the keys of the table at idx that are not listed. */
static void keep_only(lua_State *L, int idx, const char *const *list, int net) {
  idx = lua_absindex(L, idx);
  for (;;) {
    int found = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
      lua_pop(L, 1);
      if (lua_type(L, -1) != LUA_TSTRING || !(listed(list, lua_tostring(L, -1)) ||
                                              (net && listed(net_modules, lua_tostring(L, -1))))) {
        found = 1;
        break; /* the key stays on the stack */
      }
    }
    if (!found)
      return;
    lua_pushnil(L);
    lua_rawset(L, idx);
  }
}

static void sandbox_package(lua_State *L, int net) {
  if (lua_getglobal(L, "package") != LUA_TTABLE) {
    lua_pop(L, 1);
    return;
  }
  refuse_field(L, "package.", "loadlib");
  lua_pushnil(L);
  lua_setfield(L, -2, "searchpath"); /* it opens files: an oracle of the host's disk */
  /* Only the preload searcher: no Lua files, no C modules. */
  lua_getfield(L, -1, "searchers");
  if (lua_istable(L, -1)) {
    lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
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
  lua_pop(L, 1);
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  keep_only(L, -1, loaded_allowed, net);
  lua_pop(L, 1);
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  keep_only(L, -1, preload_allowed, net);
  lua_pop(L, 1);
}

/* ------------------------------------------------------------ entry */

void loom__sandbox(lua_State *L, int flags) {
  static const char *const globals_gone[] = {"io", "debug", "dofile", "loadfile", NULL};
  static const char *const os_refused[] = {"execute", "exit",   "remove",    "rename",
                                           "tmpname", "getenv", "setlocale", NULL};
  static const char *const string_refused[] = {"dump", NULL};
  static const char *const base_guarded[] = {"tostring", "print", "require", NULL};
  static const char *const table_guarded[] = {"sort", "concat", "insert", "remove",
                                              "move", "unpack", NULL};
  static const char *const string_guarded[] = {"gsub", "format", NULL};
  static const char *const math_guarded[] = {"min", "max", NULL};
  static const char *const os_guarded[] = {"time", NULL};
  static const char *const coroutine_guarded[] = {"close", NULL};
  const char *const *g;
  for (g = globals_gone; *g; g++) {
    lua_pushnil(L);
    lua_setglobal(L, *g);
  }
  refuse_in(L, "os", os_refused);
  refuse_in(L, "string", string_refused);
  sandbox_loom(L, (flags & LOOM_SANDBOX_NET) != 0);
  sandbox_package(L, (flags & LOOM_SANDBOX_NET) != 0);

  lua_pushglobaltable(L);
  lua_getfield(L, -1, "load");
  lua_pushcclosure(L, safe_load, 1);
  lua_pushcclosure(L, guarded_call, 1);
  lua_setfield(L, -2, "load");
  lua_pushcfunction(L, safe_setmetatable);
  lua_setfield(L, -2, "setmetatable");
  lua_pushcfunction(L, safe_collectgarbage);
  lua_setfield(L, -2, "collectgarbage");
  if (lua_getfield(L, -1, "xpcall") == LUA_TFUNCTION) {
    lua_pushcclosure(L, safe_xpcall, 1);
    lua_setfield(L, -2, "xpcall");
  } else
    lua_pop(L, 1);
  if (luaL_loadbufferx(L, ipairs_code, sizeof ipairs_code - 1, "=[loom] ipairs", "t") == LUA_OK) {
    lua_call(L, 0, 1);
    lua_setfield(L, -2, "ipairs");
  } else
    lua_pop(L, 1);
  guard_fields(L, base_guarded);
  lua_pop(L, 1);
  guard_lib(L, "table", table_guarded);
  guard_lib(L, "string", string_guarded);
  guard_lib(L, "math", math_guarded);
  guard_lib(L, "os", os_guarded);
  guard_lib(L, "coroutine", coroutine_guarded);

  protect_metatables(L);
}
