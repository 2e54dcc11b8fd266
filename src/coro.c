/*
 * coro.c - coroutine.resume / coroutine.wrap that let a tasklet's
 * suspension pass through user coroutines (generators, iterators).
 *
 * A loom wait inside a user coroutine yields one sentinel value. These
 * wrappers recognise it, yield it further up (or to the scheduler when they
 * run on the tasklet's own thread) and, once the tasklet is resumed, resume
 * the inner coroutine with the values the waker left - the cqueues design.
 * The user's own coroutine.yield values still go to the user's resume.
 */
#include <string.h>

#include "loom_int.h"

/* Resumes co with narg values on top of co's stack until it yields a user
 * value, returns or fails. Called first from the wrapper and again from its
 * continuation after a pass-through suspension. Results are pushed on L:
 * the status code is returned and *nres set. */
static int resume_pass(lua_State *L, lua_State *co, int narg, int *nres);

static int pass_k(lua_State *L, int status, lua_KContext ctx);

/* Generators suspended inside a loom wait, so that nobody but their own
 * tasklet's wrapper resumes them (a weak-keyed registry table). */
static char waiting_key;

static void push_waiting(lua_State *L) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &waiting_key) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "k");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &waiting_key);
  }
}

static void set_waiting(lua_State *L, lua_State *co, int on) {
  push_waiting(L);
  lua_pushthread(co);
  lua_xmove(co, L, 1);
  if (on)
    lua_pushboolean(L, 1);
  else
    lua_pushnil(L);
  lua_rawset(L, -3);
  lua_pop(L, 1);
}

static int is_waiting(lua_State *L, lua_State *co) {
  int w;
  push_waiting(L);
  lua_pushthread(co);
  lua_xmove(co, L, 1);
  w = lua_rawget(L, -2) != LUA_TNIL;
  lua_pop(L, 2);
  return w;
}

static int finish_resume(lua_State *L, lua_State *co, int status, int nres, int wrap) {
  loom_runtime *rt = loom__rt(L);
  if (status == LUA_OK || status == LUA_YIELD) {
    if (!lua_checkstack(L, nres + 1)) {
      lua_pop(co, nres);
      return luaL_error(L, "too many results to resume");
    }
    lua_xmove(co, L, nres);
    if (wrap)
      return nres;
    lua_pushboolean(L, 1);
    lua_insert(L, -(nres + 1));
    return nres + 1;
  }
  lua_xmove(co, L, 1); /* the error */
  /* A kill aimed at the tasklet unwinds through its generators too: the
   * generator's own <close> variables run first. */
  if (rt->current && (rt->current->flags & LOOM_T_KILLED) &&
      loom__error_is(L, rt, -1, LOOM_E_TASKLETEXIT)) {
#if LUA_VERSION_RELEASE_NUM >= 50406
    lua_closethread(co, L);
#else
    lua_resetthread(co);
#endif
    return lua_error(L);
  }
  if (wrap) {
#if LUA_VERSION_RELEASE_NUM >= 50406
    lua_closethread(co, L);
#else
    lua_resetthread(co);
#endif
    if (lua_type(L, -1) == LUA_TSTRING) {
      luaL_where(L, 1);
      lua_insert(L, -2);
      lua_concat(L, 2);
    }
    return lua_error(L);
  }
  lua_pushboolean(L, 0);
  lua_insert(L, -2);
  return 2;
}

/* Runs co; on a sentinel yield, suspends L in turn (continuation pass_k). */
static int drive_co(lua_State *L, lua_State *co, int narg, int wrap) {
  loom_runtime *rt = loom__rt(L);
  int nres, status = resume_pass(L, co, narg, &nres);
  if (status == LUA_YIELD && nres == 1 && lua_touserdata(co, -1) == loom__sentinel) {
    loom_tasklet *t = rt->current;
    lua_pop(co, 1);
    if (!t)
      return luaL_error(L, "a loom wait escaped its tasklet");
    set_waiting(L, co, 1);
    if (L == t->L)
      return lua_yieldk(L, 0, (lua_KContext)wrap, pass_k);
    if (!lua_isyieldable(L))
      return luaL_error(L, "cannot block here: a C call is in the way");
    lua_pushlightuserdata(L, loom__sentinel);
    return lua_yieldk(L, 1, (lua_KContext)wrap, pass_k);
  }
  return finish_resume(L, co, status, nres, wrap);
}

static lua_State *co_of(lua_State *L, int wrap) {
  return wrap ? lua_tothread(L, lua_upvalueindex(2)) : lua_tothread(L, 1);
}

/* The tasklet was resumed: hand its resume values down to co. */
static int pass_k(lua_State *L, int status, lua_KContext ctx) {
  loom_runtime *rt = loom__rt(L);
  int wrap = (int)ctx, n = rt->resume_n;
  lua_State *co = co_of(L, wrap);
  (void)status;
  set_waiting(L, co, 0);
  if (!lua_checkstack(co, n + LUA_MINSTACK))
    return luaL_error(L, "stack overflow passing values to a coroutine");
  lua_xmove(L, co, n);
  return drive_co(L, co, n, wrap);
}

static int resume_pass(lua_State *L, lua_State *co, int narg, int *nres) {
  loom_runtime *rt = loom__rt(L);
  rt->resume_n = narg;
  return lua_resume(co, L, narg, nres);
}

/* Checks co can be resumed with narg values (those on top of L) and moves
 * them; mirrors lcorolib's auxresume checks. */
static int start_resume(lua_State *L, lua_State *co, int narg, int wrap) {
  int status = lua_status(co);
  if (loom__is_loom_thread(co))
    return luaL_error(L, "cannot resume a tasklet's thread with coroutine.resume "
                         "(tasklets are run by the scheduler)");
  if (status == LUA_YIELD && is_waiting(L, co))
    return luaL_error(L, "cannot resume a coroutine that waits inside loom "
                         "(its tasklet resumes it when the wait ends)");
  if (status == LUA_OK && lua_gettop(co) == 0) {
    lua_pushliteral(L, "cannot resume dead coroutine");
    goto fail;
  }
  if (status != LUA_OK && status != LUA_YIELD) {
    lua_pushliteral(L, "cannot resume dead coroutine");
    goto fail;
  }
  if (co == L || (status == LUA_OK && lua_getstack(co, 0, &(lua_Debug){0}))) {
    lua_pushliteral(L, "cannot resume non-suspended coroutine");
    goto fail;
  }
  if (!lua_checkstack(co, narg)) {
    lua_pushliteral(L, "too many arguments to resume");
    goto fail;
  }
  lua_xmove(L, co, narg);
  return drive_co(L, co, narg, wrap);
fail:
  if (wrap)
    return lua_error(L);
  lua_pushboolean(L, 0);
  lua_insert(L, -2);
  return 2;
}

static int l_resume(lua_State *L) {
  lua_State *co = lua_tothread(L, 1);
  luaL_argexpected(L, co, 1, "coroutine");
  return start_resume(L, co, lua_gettop(L) - 1, 0);
}

static int wrap_call(lua_State *L) {
  lua_State *co = lua_tothread(L, lua_upvalueindex(2));
  return start_resume(L, co, lua_gettop(L), 1);
}

static int l_wrap(lua_State *L) {
  lua_State *co;
  luaL_checktype(L, 1, LUA_TFUNCTION);
  co = lua_newthread(L);
  lua_pushvalue(L, 1);
  lua_xmove(L, co, 1);
  lua_pushvalue(L, lua_upvalueindex(1)); /* rt */
  lua_insert(L, -2);
  lua_pushcclosure(L, wrap_call, 2);
  return 1;
}

/* coroutine.close refuses a tasklet's thread, like resume. */
static int l_close(lua_State *L) {
  lua_State *co = lua_tothread(L, 1);
  luaL_argexpected(L, co, 1, "coroutine");
  if (loom__is_loom_thread(co))
    return luaL_error(L, "cannot close a tasklet's thread (use t:kill())");
  if (lua_status(co) == LUA_YIELD && is_waiting(L, co))
    return luaL_error(L, "cannot close a coroutine that waits inside loom "
                         "(kill its tasklet instead)");
  lua_pushvalue(L, lua_upvalueindex(2));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
  return lua_gettop(L);
}

/* Replaces resume, wrap and close in the global coroutine table. */
void loom__open_coro(lua_State *L, loom_runtime *rt) {
  if (lua_getglobal(L, "coroutine") != LUA_TTABLE) {
    lua_pop(L, 1);
    return;
  }
  lua_pushlightuserdata(L, rt);
  lua_pushcclosure(L, l_resume, 1);
  lua_setfield(L, -2, "resume");
  lua_pushlightuserdata(L, rt);
  lua_pushcclosure(L, l_wrap, 1);
  lua_setfield(L, -2, "wrap");
  lua_pushlightuserdata(L, rt);
  lua_getfield(L, -2, "close");
  if (lua_isfunction(L, -1)) {
    lua_pushcclosure(L, l_close, 2);
    lua_setfield(L, -2, "close");
  } else
    lua_pop(L, 2);
  lua_pop(L, 1);
}
