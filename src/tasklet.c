/*
 * tasklet.c - the Lua face of tasklets: loom.spawn / spawn_now / current /
 * yield, and the methods of a tasklet (join, kill, throw, fields).
 *
 * A tasklet is a full userdata holding struct loom_tasklet (loom_int.h). It
 * gets a thread only when it first runs, so a million queued tasklets cost
 * a userdata each, not a coroutine each.
 */
#include <stdlib.h>
#include <string.h>

#include "loom_int.h"

#define TASKLET_MT "loom.tasklet"

static const char *const status_names[] = {"ready", "running", "blocked", "dead"};

#define check_tasklet(L, idx) \
  ((loom_tasklet *)loom__checkud_sized((L), (idx), LOOM_MT_TASKLET, sizeof(loom_tasklet), TASKLET_MT))

/* ------------------------------------------------------------ names */

static void push_names(lua_State *L) {
  static char key;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &key) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "k");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &key);
  }
}

/* Pushes t's name or nil; the userdata is at ud. */
static void push_name(lua_State *L, int ud) {
  ud = lua_absindex(L, ud);
  push_names(L);
  lua_pushvalue(L, ud);
  lua_rawget(L, -2);
  lua_remove(L, -2);
}

void loom__push_label(lua_State *L, loom_runtime *rt, loom_tasklet *t) {
  luaL_checkstack(L, 4, NULL);
  if (t->flags & LOOM_T_MAIN) {
    lua_pushliteral(L, "main thread");
    return;
  }
  loom__push_tasklet(L, rt, t);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    lua_pushfstring(L, "tasklet #%I", (lua_Integer)t->id);
    return;
  }
  push_name(L, -1);
  if (lua_isstring(L, -1))
    lua_pushfstring(L, "tasklet #%I '%s'", (lua_Integer)t->id, lua_tostring(L, -1));
  else
    lua_pushfstring(L, "tasklet #%I", (lua_Integer)t->id);
  lua_replace(L, -3);
  lua_pop(L, 1);
}

/* ------------------------------------------------------------ spawn */

static void check_callable(lua_State *L, int idx) {
  if (lua_isfunction(L, idx))
    return;
  if (luaL_getmetafield(L, idx, "__call") != LUA_TNIL) {
    lua_pop(L, 1);
    return;
  }
  luaL_typeerror(L, idx, "function");
}

/* The function is at top - nargs, followed by its arguments. */
loom_tasklet *loom__spawn(lua_State *L, loom_runtime *rt, int nargs, int on_done_idx) {
  int fn = lua_gettop(L) - nargs, i;
  loom_tasklet *t;
  lua_Debug ar;
  if (nargs > 250)
    luaL_error(L, "too many arguments to spawn (%d, at most 250)", nargs);
  if (on_done_idx)
    on_done_idx = lua_absindex(L, on_done_idx);
  luaL_checkstack(L, 6, NULL);
  t = lua_newuserdatauv(L, sizeof *t, 2 + nargs);
  memset(t, 0, sizeof *t);
  t->magic = LOOM_MAGIC(LOOM_MT_TASKLET);
  t->pending_ref = LUA_NOREF;
  t->nargs = (uint16_t)nargs;
  /* Move the userdata under the function: each lua_setiuservalue below then
   * pops the next argument, last first, with no copies. */
  lua_insert(L, fn);
  for (i = nargs; i >= 1; i--)
    lua_setiuservalue(L, fn, 2 + i);
  lua_setiuservalue(L, fn, 1);
  luaL_setmetatable(L, TASKLET_MT);
  /* Where it was spawned: the calling function and line, read cheaply now
   * and formatted only if an error report needs them. */
  if (lua_getstack(L, 1, &ar) && lua_getinfo(L, "fl", &ar))
    t->spawn_line = ar.currentline;
  else
    lua_pushnil(L);
  if (on_done_idx) {
    lua_createtable(L, 0, 2);
    lua_insert(L, -2);
    lua_setfield(L, -2, "site");
    lua_pushvalue(L, on_done_idx);
    lua_setfield(L, -2, "on_done");
    t->flags |= LOOM_T_WATCHED;
  }
  lua_setiuservalue(L, fn, 2);
  /* A live slot anchors the userdata until the tasklet ends. */
  if (rt->nfree > 0)
    t->slot = rt->free_slots[--rt->nfree];
  else
    t->slot = rt->next_slot++;
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->live_ref);
  lua_pushvalue(L, fn);
  lua_rawseti(L, -2, t->slot);
  lua_pop(L, 1);
  t->id = ++rt->next_id;
  rt->nlive++;
  rt->spawned++;
  return t; /* the userdata is on top, where the function was */
}

static int l_spawn(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  loom_tasklet *t;
  check_callable(L, 1);
  t = loom__spawn(L, rt, lua_gettop(L) - 1, 0);
  loom__ready(rt, t);
  return 1;
}

/* spawn_with(on_done, fn, ...): queued, on_done(ok, ...) takes its end. */
static int l_spawn_with(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  loom_tasklet *t;
  if (!lua_isnil(L, 1))
    luaL_checktype(L, 1, LUA_TFUNCTION);
  check_callable(L, 2);
  t = loom__spawn(L, rt, lua_gettop(L) - 2, lua_isnil(L, 1) ? 0 : 1);
  loom__ready(rt, t);
  return 1;
}

/* spawn_now(on_done, fn, ...): runs it at once until it first waits. */
static int l_spawn_now(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  loom_tasklet *t;
  if (rt->closing)
    return luaL_error(L, "the runtime is closing");
  if (!lua_isnil(L, 1))
    luaL_checktype(L, 1, LUA_TFUNCTION);
  check_callable(L, 2);
  t = loom__spawn(L, rt, lua_gettop(L) - 2, lua_isnil(L, 1) ? 0 : 1);
  lua_replace(L, 1);
  lua_settop(L, 1);
  loom__resume(rt, L, t);
  return 1;
}

static int l_current(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  if (rt->current)
    loom__push_tasklet(L, rt, rt->current);
  else
    lua_pushnil(L);
  return 1;
}

int loom__yield(lua_State *L, loom_runtime *rt) {
  const char *why = loom__why_not_block(L, rt);
  if (why)
    return luaL_error(L, "%s", why);
  if (rt->current)
    loom__ready(rt, rt->current);
  return loom__suspend(L, rt, NULL);
}

static int l_yield(lua_State *L) {
  lua_settop(L, 0);
  return loom__yield(L, loom__rt(L));
}

/* ------------------------------------------------------------ join */

/* Pushes true, results... or false, err of a dead tasklet (ud at idx). */
static int push_results(lua_State *L, int ud) {
  int i, n;
  if (lua_getiuservalue(L, ud, 1) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_pushboolean(L, 1);
    return 1;
  }
  lua_getfield(L, -1, "n");
  n = (int)lua_tointeger(L, -1);
  lua_pop(L, 1);
  lua_getfield(L, -1, "ok");
  luaL_checkstack(L, n + 2, "too many results");
  for (i = 1; i <= n; i++)
    lua_rawgeti(L, -1 - i, i);
  lua_remove(L, -2 - n);
  return n + 1;
}

static int t_join(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  loom_tasklet *t = check_tasklet(L, 1);
  double timeout = loom__opt_timeout(L, 2);
  loom_block *b;
  if (t->status == LOOM_DEAD)
    return push_results(L, 1);
  if (t == rt->current)
    return luaL_error(L, "a tasklet cannot join itself");
  loom__check_block(L, rt);
  if (!t->joiners && !(t->joiners = calloc(1, sizeof *t->joiners)))
    return luaL_error(L, "not enough memory");
  b = loom__block_new(rt, L, "join");
  loom__waitq_push(t->joiners, &b->w);
  loom__block_timeout(rt, b, timeout);
  lua_settop(L, 0);
  return loom__suspend(L, rt, b);
}

/* ------------------------------------------------------------ kill / throw */

static int t_kill(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  loom_tasklet *t = check_tasklet(L, 1);
  const char *reason = luaL_optstring(L, 2, "killed");
  if (t->status == LOOM_DEAD)
    return 0;
  t->flags |= LOOM_T_KILLED;
  loom__error_new(L, rt, LOOM_E_TASKLETEXIT, reason, 1); /* traceback of the killer */
  if (t == rt->current && L == t->L)
    return lua_error(L);
  loom__raise_in(rt, L, t);
  return 0;
}

static int t_throw(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  loom_tasklet *t = check_tasklet(L, 1);
  luaL_checkany(L, 2);
  if (t->status == LOOM_DEAD)
    return luaL_error(L, "cannot throw into a dead tasklet");
  lua_settop(L, 2);
  if (t == rt->current && L == t->L)
    return lua_error(L);
  loom__raise_in(rt, L, t);
  return 0;
}

/* ------------------------------------------------------------ fields */

static int t_alive(lua_State *L) {
  loom_tasklet *t = check_tasklet(L, 1);
  lua_pushboolean(L, t->status != LOOM_DEAD);
  return 1;
}

static int t_traceback(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  loom_tasklet *t = check_tasklet(L, 1);
  const char *msg = luaL_optstring(L, 2, NULL);
  if (t->status == LOOM_DEAD) {
    if (lua_getiuservalue(L, 1, 1) == LUA_TTABLE && lua_getfield(L, -1, "traceback") == LUA_TSTRING)
      return 1;
    lua_pushfstring(L, "%s%s(dead)", msg ? msg : "", msg ? "\n" : "");
    return 1;
  }
  if (!t->L) {
    lua_pushfstring(L, "%s%s(not started)", msg ? msg : "", msg ? "\n" : "");
    return 1;
  }
  luaL_traceback(L, t->L, msg, t == rt->current && L == t->L ? 1 : 0);
  return 1;
}

/* Properties: any key that is not a method. */
static int t_props(lua_State *L) {
  loom_tasklet *t = check_tasklet(L, 1);
  const char *k = lua_tostring(L, 2);
  if (!k)
    lua_pushnil(L);
  else if (strcmp(k, "status") == 0)
    lua_pushstring(L, status_names[t->status]);
  else if (strcmp(k, "id") == 0)
    lua_pushinteger(L, (lua_Integer)t->id);
  else if (strcmp(k, "name") == 0)
    push_name(L, 1);
  else
    lua_pushnil(L);
  return 1;
}

static int t_newindex(lua_State *L) {
  check_tasklet(L, 1);
  if (strcmp(luaL_checkstring(L, 2), "name") != 0)
    return luaL_error(L, "tasklet field '%s' cannot be set (only 'name')", lua_tostring(L, 2));
  if (!lua_isnil(L, 3))
    luaL_checktype(L, 3, LUA_TSTRING);
  push_names(L);
  lua_pushvalue(L, 1);
  lua_pushvalue(L, 3);
  lua_rawset(L, -3);
  return 0;
}

static int t_tostring(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  loom_tasklet *t = check_tasklet(L, 1);
  push_name(L, 1);
  if (lua_isstring(L, -1))
    lua_pushfstring(L, "loom.tasklet #%I '%s' (%s)", (lua_Integer)t->id, lua_tostring(L, -1),
                    status_names[t->status]);
  else
    lua_pushfstring(L, "loom.tasklet #%I (%s)", (lua_Integer)t->id, status_names[t->status]);
  (void)rt;
  return 1;
}

/* ------------------------------------------------------------ introspection */

static int l_tasklets(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  int i, n = 0;
  lua_createtable(L, rt->nlive, 0);
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->live_ref);
  for (i = 1; i < rt->next_slot; i++) {
    if (lua_rawgeti(L, -1, i) == LUA_TUSERDATA)
      lua_rawseti(L, -3, ++n);
    else
      lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return 1;
}

static int l_dump(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  luaL_Buffer B;
  int i;
  lua_settop(L, 0);
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->live_ref); /* 1 */
  luaL_buffinit(L, &B);
  lua_pushfstring(L, "%d tasklet(s): %d ready, %d blocked\n", rt->nlive, rt->nready,
                  rt->nblocked);
  luaL_addvalue(&B);
  for (i = 1; i < rt->next_slot; i++) {
    loom_tasklet *t;
    if (lua_rawgeti(L, 1, i) != LUA_TUSERDATA) {
      lua_pop(L, 1);
      continue;
    }
    t = lua_touserdata(L, -1);
    lua_pop(L, 1);
    loom__push_label(L, rt, t);
    luaL_addvalue(&B);
    lua_pushfstring(L, " [%s]", status_names[t->status]);
    luaL_addvalue(&B);
    if (t->status == LOOM_BLOCKED && t->block) {
      lua_pushfstring(L, " waits on %s", t->block->what);
      luaL_addvalue(&B);
    }
    luaL_addchar(&B, '\n');
    if (t->L) {
      luaL_traceback(L, t->L, NULL, 0);
      luaL_addvalue(&B);
      luaL_addchar(&B, '\n');
    }
  }
  luaL_pushresult(&B);
  return 1;
}

static int l_stats(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  lua_createtable(L, 0, 10);
  lua_pushinteger(L, rt->nlive);
  lua_setfield(L, -2, "tasklets");
  lua_pushinteger(L, rt->nready);
  lua_setfield(L, -2, "ready");
  lua_pushinteger(L, rt->nblocked);
  lua_setfield(L, -2, "blocked");
  lua_pushinteger(L, (lua_Integer)rt->switches);
  lua_setfield(L, -2, "switches");
  lua_pushinteger(L, (lua_Integer)rt->preemptions);
  lua_setfield(L, -2, "preemptions");
  lua_pushinteger(L, (lua_Integer)rt->spawned);
  lua_setfield(L, -2, "spawned");
  lua_pushinteger(L, (lua_Integer)rt->nheap);
  lua_setfield(L, -2, "timers");
  /* libuv counts referenced active handles; the heap timer is referenced
   * only while the loop polls, so nothing of loom's own is in this count. */
  lua_pushinteger(L, (lua_Integer)rt->loop->active_handles);
  lua_setfield(L, -2, "handles");
  lua_pushinteger(L, (lua_Integer)lua_gc(L, LUA_GCCOUNT, 0) * 1024 + lua_gc(L, LUA_GCCOUNTB, 0));
  lua_setfield(L, -2, "memory");
  lua_pushinteger(L, rt->unhandled);
  lua_setfield(L, -2, "errors");
  return 1;
}

/* ------------------------------------------------------------ open */

void loom__open_tasklet(lua_State *L, loom_runtime *rt) {
  static const luaL_Reg funcs[] = {{"spawn", l_spawn},       {"spawn_with", l_spawn_with},
                                   {"spawn_now", l_spawn_now}, {"current", l_current},
                                   {"yield", l_yield},       {"tasklets", l_tasklets},
                                   {"dump", l_dump},         {"stats", l_stats},
                                   {NULL, NULL}};
  static const luaL_Reg meta[] = {{"__newindex", t_newindex},
                                  {"__tostring", t_tostring},
                                  {NULL, NULL}};
  static const luaL_Reg methods[] = {{"join", t_join},       {"kill", t_kill},
                                     {"throw", t_throw},     {"alive", t_alive},
                                     {"traceback", t_traceback}, {NULL, NULL}};
  luaL_newmetatable(L, TASKLET_MT);
  loom__fast_mt(L, rt, LOOM_MT_TASKLET);
  loom__setfuncs(L, rt, meta);
  lua_newtable(L);
  loom__setfuncs(L, rt, methods);
  loom__set_methods(L, rt, t_props);
  lua_pop(L, 1);
  loom__setfuncs(L, rt, funcs);
}
