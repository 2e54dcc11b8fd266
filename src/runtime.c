/*
 * runtime.c - one runtime per lua_State: creating it (for require "loom"
 * or loom_new), running reactor callbacks, loom.run / loom.stop /
 * loom.config, and shutting it down with work in flight.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "loom_int.h"

static char runtime_key;

loom_runtime *loom__runtime(lua_State *L) {
  loom_runtime *rt;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &runtime_key);
  rt = lua_touserdata(L, -1);
  lua_pop(L, 1);
  return rt;
}

void loom__setfuncs(lua_State *L, loom_runtime *rt, const luaL_Reg *l) {
  for (; l->name; l++) {
    lua_pushlightuserdata(L, rt);
    lua_pushcclosure(L, l->func, 1);
    lua_setfield(L, -2, l->name);
  }
}

/* ------------------------------------------------------------ type checks */

void loom__fast_mt(lua_State *L, loom_runtime *rt, int kind) {
  rt->mt[kind] = lua_topointer(L, -1);
}

/* __index: one raw lookup in the methods table (upvalue 2), then the
 * properties function (upvalue 3) with the object and the key. */
static int index_dispatch(lua_State *L) {
  lua_settop(L, 2);
  lua_pushvalue(L, 2);
  if (lua_rawget(L, lua_upvalueindex(2)) != LUA_TNIL)
    return 1;
  lua_pop(L, 1);
  lua_pushvalue(L, lua_upvalueindex(3));
  lua_insert(L, 1);
  lua_call(L, 2, 1);
  return 1;
}

void loom__set_methods(lua_State *L, loom_runtime *rt, lua_CFunction props) {
  /* stack: metatable, methods */
  lua_pushlightuserdata(L, rt);
  lua_insert(L, -2);
  lua_pushlightuserdata(L, rt);
  lua_pushcclosure(L, props, 1);
  lua_pushcclosure(L, index_dispatch, 3);
  lua_setfield(L, -2, "__index");
}

/* ------------------------------------------------------------ reactor calls */

static int msgh(lua_State *L) {
  if (lua_type(L, 1) == LUA_TTABLE) {
    /* An error object keeps its value; record where it was raised. */
    if (loom__rawgetfield(L, 1, "traceback") == LUA_TNIL && lua_getmetatable(L, 1)) {
      lua_pop(L, 1);
      luaL_traceback(L, L, NULL, 1);
      loom__rawsetfield(L, 1, "traceback");
    }
    lua_settop(L, 1);
    return 1;
  }
  /* Other values become their text followed by the traceback: that is all
   * a report of them can use. */
  loom__push_error_text(L, 1);
  luaL_traceback(L, L, lua_tostring(L, -1), 1);
  return 1;
}

int loom__call_reactor(loom_runtime *rt, int nargs, const char *where) {
  lua_State *R = rt->RL;
  int fn = lua_gettop(R) - nargs, rc;
  if (rt->closing) {
    lua_settop(R, fn - 1);
    return LUA_OK;
  }
  luaL_checkstack(R, 4, NULL);
  lua_pushcfunction(R, msgh);
  lua_insert(R, fn);
  rt->in_reactor++;
  rc = lua_pcall(R, nargs, 0, fn);
  rt->in_reactor--;
  if (rc != LUA_OK) {
    const char *tb = NULL;
    if (lua_type(R, -1) == LUA_TTABLE) {
      loom__rawgetfield(R, -1, "traceback");
      tb = lua_tostring(R, -1);
      lua_pop(R, 1);
    } else
      tb = lua_tostring(R, -1); /* msgh made it "message\nstack traceback:..." */
    loom__report(rt, R, -1, where, tb);
  }
  lua_settop(R, fn - 1);
  return rc;
}

/* ------------------------------------------------------------ run / stop */

/* After the child's join: its results, or its error raised. */
static int run_join_k(lua_State *L, int status, lua_KContext ctx) {
  int ud = (int)ctx;
  (void)status;
  if (!lua_toboolean(L, ud + 1)) {
    lua_settop(L, ud + 2);
    return lua_error(L);
  }
  return lua_gettop(L) - ud - 1;
}

/* loom.run(fn, ...) -> fn's results, or raises its error / a Deadlock. */
static int l_run(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  loom_tasklet *t;
  int rc, ud, n, i;
  luaL_checktype(L, 1, LUA_TFUNCTION);
  /* Inside a tasklet it runs fn as a child tasklet and waits for it. */
  loom__check_block(L, rt);
  t = loom__spawn(L, rt, lua_gettop(L) - 1, 0);
  ud = lua_gettop(L);
  /* The caller takes its end: no report of its error. */
  lua_getiuservalue(L, ud, 2);
  lua_createtable(L, 0, 2);
  lua_insert(L, -2);
  lua_setfield(L, -2, "site");
  lua_setiuservalue(L, ud, 2);
  t->flags |= LOOM_T_WATCHED;
  loom__ready(rt, t);
  if (rt->current) {
    /* Join it like any other tasklet; the join may yield, hence callk. */
    lua_getfield(L, ud, "join");
    lua_pushvalue(L, ud);
    lua_callk(L, 1, LUA_MULTRET, ud, run_join_k);
    return run_join_k(L, LUA_OK, ud);
  }
  rc = loom__drive(rt, L, NULL, 0);
  if (rc == LOOM_DEADLOCK) {
    loom__push_deadlock(L, rt);
    loom__kill_all(rt, L);
    return lua_error(L);
  }
  if (t->status != LOOM_DEAD) {
    if (rc == LOOM_STOPPED)
      return 0;
    return luaL_error(L, "loom.run: the loop ended before the tasklet did");
  }
  if (lua_getiuservalue(L, ud, 1) != LUA_TTABLE)
    return 0;
  lua_getfield(L, -1, "ok");
  if (!lua_toboolean(L, -1)) {
    lua_rawgeti(L, -2, 1);
    return lua_error(L);
  }
  lua_pop(L, 1);
  lua_getfield(L, -1, "n");
  n = (int)lua_tointeger(L, -1);
  lua_pop(L, 1);
  luaL_checkstack(L, n, "too many results");
  for (i = 1; i <= n; i++)
    lua_rawgeti(L, ud + 1, i);
  return n;
}

static int l_stop(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  rt->stop = 1;
  return 0;
}

/* loom.config{ slice = s, cpu_limit = s } -> the previous settings. */
static int l_config(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  lua_createtable(L, 0, 2);
  lua_pushnumber(L, rt->slice);
  lua_setfield(L, -2, "slice");
  lua_pushnumber(L, rt->cpu_limit);
  lua_setfield(L, -2, "cpu_limit");
  if (lua_isnoneornil(L, 1))
    return 1;
  luaL_checktype(L, 1, LUA_TTABLE);
  if (lua_getfield(L, 1, "slice") != LUA_TNIL) {
    lua_Number s = luaL_checknumber(L, -1);
    luaL_argcheck(L, s >= 0 && !isnan(s), 1, "slice must be a number >= 0");
    rt->slice = s;
  }
  lua_pop(L, 1);
  if (lua_getfield(L, 1, "cpu_limit") != LUA_TNIL) {
    lua_Number s = luaL_checknumber(L, -1);
    luaL_argcheck(L, s >= 0 && !isnan(s), 1, "cpu_limit must be a number >= 0");
    rt->cpu_limit = s;
  }
  lua_pop(L, 1);
  rt->hooked = rt->slice > 0 || rt->cpu_limit > 0;
  return 1;
}

/* can_block() -> true | false, reason */
static int l_can_block(lua_State *L) {
  const char *why = loom__why_not_block(L, loom__rt(L));
  lua_pushboolean(L, why == NULL);
  if (!why)
    return 1;
  lua_pushstring(L, why);
  return 2;
}

static int l_on_shutdown(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->shutdown_ref);
  lua_pushvalue(L, 1);
  lua_rawseti(L, -2, (lua_Integer)luaL_len(L, -2) + 1);
  return 0;
}

/* ------------------------------------------------------------ create */

void loom__link(loom_runtime *rt, loom_link *l) {
  l->prev = &rt->objects;
  l->next = rt->objects.next;
  rt->objects.next->prev = l;
  rt->objects.next = l;
}

void loom__unlink(loom_link *l) {
  if (!l->next)
    return;
  l->prev->next = l->next;
  l->next->prev = l->prev;
  l->next = l->prev = NULL;
}

static void close_walk_cb(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h))
    uv_close(h, NULL);
}

/* Runs the shutdown functions (Deferred reports) once. */
LOOM_HIDDEN void loom__run_shutdown(loom_runtime *rt) {
  lua_State *R = rt->RL;
  int i, n;
  if (rt->shutdown_ref == LUA_NOREF)
    return;
  lua_rawgeti(R, LUA_REGISTRYINDEX, rt->shutdown_ref);
  n = (int)luaL_len(R, -1);
  luaL_unref(R, LUA_REGISTRYINDEX, rt->shutdown_ref);
  rt->shutdown_ref = LUA_NOREF;
  for (i = 1; i <= n; i++) {
    lua_rawgeti(R, -1, i);
    loom__call_reactor(rt, 0, "error in a shutdown handler");
  }
  lua_settop(R, 0);
}

/* Shuts the runtime down: tasklets are killed and unwound, shutdown
 * handlers run, every handle is closed. After this nothing reenters Lua. */
LOOM_HIDDEN void loom__runtime_shutdown(loom_runtime *rt) {
  lua_State *L = rt->RL;
  if (rt->closing)
    return;
  rt->unwinding = 1;
  if (rt->nlive > 0)
    loom__kill_all(rt, L);
  loom__run_shutdown(rt);
  rt->closing = 1;
  lua_settop(L, 0);
  /* Every I/O object closes its handles; their close callbacks free them. */
  while (rt->objects.next != &rt->objects) {
    loom_link *l = rt->objects.next;
    loom__unlink(l);
    l->close(rt, l);
  }
  uv_close((uv_handle_t *)&rt->heap_timer, NULL);
  loom__posts_close(rt);
  if (rt->owns_loop)
    uv_walk(rt->loop, close_walk_cb, NULL);
  uv_run(rt->loop, UV_RUN_DEFAULT);
  loom__timers_free(rt);
  while (rt->free_blocks) {
    loom_block *b = rt->free_blocks;
    rt->free_blocks = b->next_free;
    free(b);
  }
  free(rt->free_slots);
  rt->free_slots = NULL;
  if (rt->owns_loop)
    uv_loop_close(rt->loop);
}

/* The registry sentinel: closes the runtime when the state closes. */
static int sentinel_gc(lua_State *L) {
  loom_runtime **box = lua_touserdata(L, 1);
  loom_runtime *rt = *box;
  if (!rt)
    return 0;
  loom__runtime_shutdown(rt);
  *box = NULL;
  if (!rt->owned_by_host)
    free(rt);
  else
    rt->state_closed = 1;
  return 0;
}

static lua_State *new_anchored_thread(lua_State *L) {
  lua_State *T = lua_newthread(L);
  lua_rawsetp(L, LUA_REGISTRYINDEX, T);
  return T;
}

/* Creates the runtime of L (once). loop: NULL to own one. */
LOOM_HIDDEN loom_runtime *loom__runtime_create(lua_State *L, uv_loop_t *loop) {
  loom_runtime *rt = loom__runtime(L), **box;
  if (rt)
    return rt;
  rt = calloc(1, sizeof *rt);
  if (!rt)
    luaL_error(L, "not enough memory");
  loom__ignore_sigpipe();
  if (loop)
    rt->loop = loop;
  else {
    if (uv_loop_init(&rt->own_loop) != 0) {
      free(rt);
      luaL_error(L, "cannot create the event loop");
    }
    rt->loop = &rt->own_loop;
    rt->owns_loop = 1;
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
  rt->L = lua_tothread(L, -1);
  lua_pop(L, 1);
  rt->RL = new_anchored_thread(L);
  rt->mstack = new_anchored_thread(L);
  rt->pool = new_anchored_thread(L);
  lua_newtable(L);
  rt->live_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_newtable(L);
  rt->shutdown_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  rt->on_error_ref = LUA_NOREF;
  rt->objects.next = rt->objects.prev = &rt->objects;
  rt->rand = uv_hrtime() | 1;
  rt->next_slot = 1;
  rt->main.flags = LOOM_T_MAIN;
  rt->main.pending_ref = LUA_NOREF;
  rt->main.status = LOOM_READY;
  uv_timer_init(rt->loop, &rt->heap_timer);
  uv_unref((uv_handle_t *)&rt->heap_timer);
  loom__posts_init(rt);
  /* The sentinel's __gc shuts the runtime down when the state closes. */
  box = lua_newuserdatauv(L, sizeof *box, 0);
  *box = rt;
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, sentinel_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &rt->main); /* any unique key */
  lua_pushlightuserdata(L, rt);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &runtime_key);
  return rt;
}

void loom__open_runtime(lua_State *L, loom_runtime *rt) {
  static const luaL_Reg funcs[] = {{"run", l_run},
                                   {"stop", l_stop},
                                   {"config", l_config},
                                   {"can_block", l_can_block},
                                   {"on_shutdown", l_on_shutdown},
                                   {NULL, NULL}};
  loom__setfuncs(L, rt, funcs);
}
