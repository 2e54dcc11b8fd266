/*
 * errors.c - loom's three error tiers: fail triples for operational
 * failures, error objects (classes TaskletExit, Cancelled, Timeout,
 * AlreadyCalled, Deadlock) for conditions loom raises, and the one report
 * for an error that nobody handled (loom.on_error replaces it).
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "loom_int.h"

static const char *const class_names[LOOM_E_NCLASSES] = {"TaskletExit", "Cancelled", "Timeout",
                                                        "AlreadyCalled", "Deadlock"};
static const char *const class_codes[LOOM_E_NCLASSES] = {"EKILLED", "ECANCELED", "ETIMEDOUT",
                                                        "EALREADY", "EDEADLK"};

/* ------------------------------------------------------------ fail triples */

int loom__fail(lua_State *L, const char *code, const char *fmt, ...) {
  va_list ap;
  lua_pushnil(L);
  lua_pushstring(L, code);
  lua_pushliteral(L, ": ");
  va_start(ap, fmt);
  lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  lua_concat(L, 3);
  lua_pushstring(L, code);
  return 3;
}

int loom__fail_uv(lua_State *L, int err, const char *ctx) {
  if (ctx)
    return loom__fail(L, uv_err_name(err), "%s: %s", ctx, uv_strerror(err));
  return loom__fail(L, uv_err_name(err), "%s", uv_strerror(err));
}

/* ------------------------------------------------------------ classes */

static void push_class(lua_State *L, loom_runtime *rt, int cls) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->errors_ref);
  lua_rawgeti(L, -1, cls + 1);
  lua_remove(L, -2);
}

void loom__error_new(lua_State *L, loom_runtime *rt, int cls, const char *msg, int level) {
  luaL_checkstack(L, 4, NULL);
  lua_createtable(L, 0, 3);
  lua_pushstring(L, class_codes[cls]);
  lua_setfield(L, -2, "code");
  lua_pushstring(L, msg);
  lua_setfield(L, -2, "message");
  if (level > 0) {
    luaL_traceback(L, L, NULL, level);
    lua_setfield(L, -2, "traceback");
  }
  push_class(L, rt, cls);
  lua_setmetatable(L, -2);
}

int loom__error_is(lua_State *L, loom_runtime *rt, int idx, int cls) {
  int is;
  if (!lua_getmetatable(L, idx))
    return 0;
  push_class(L, rt, cls);
  is = lua_rawequal(L, -1, -2);
  lua_pop(L, 2);
  return is;
}

/* Class:is(v) */
static int class_is(lua_State *L) {
  int is = 0;
  luaL_checktype(L, 1, LUA_TTABLE);
  if (lua_getmetatable(L, 2)) {
    is = lua_rawequal(L, -1, 1);
    lua_pop(L, 1);
  }
  lua_pushboolean(L, is);
  return 1;
}

/* Class:new([message [, fields]]) -> error object, with the caller's traceback. */
static int class_new(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 3); /* the new object goes to 4, above the optional arguments */
  lua_createtable(L, 0, 4);
  if (lua_type(L, 3) == LUA_TTABLE) {
    lua_pushnil(L);
    while (lua_next(L, 3)) {
      lua_pushvalue(L, -2);
      lua_insert(L, -2);
      lua_rawset(L, -4);
    }
  }
  lua_getfield(L, 1, "code");
  lua_setfield(L, -2, "code");
  if (lua_isnoneornil(L, 2))
    lua_getfield(L, 1, "name");
  else
    lua_pushstring(L, luaL_checkstring(L, 2));
  lua_setfield(L, -2, "message");
  luaL_traceback(L, L, NULL, 1);
  lua_setfield(L, -2, "traceback");
  lua_pushvalue(L, 1);
  lua_setmetatable(L, -2);
  return 1;
}

static int error_tostring(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE); /* callable directly with anything */
  loom__rawgetfield(L, 1, "code");
  loom__rawgetfield(L, 1, "message");
  lua_pushfstring(L, "%s: %s", luaL_optstring(L, -2, "ERROR"), luaL_optstring(L, -1, "?"));
  return 1;
}

void loom__push_error_text(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  switch (lua_type(L, idx)) {
    case LUA_TSTRING:
      lua_pushvalue(L, idx);
      return;
    case LUA_TNUMBER:
      /* lua_tostring converts in place: convert a copy, keep the number. */
      lua_pushvalue(L, idx);
      lua_tostring(L, -1);
      return;
    case LUA_TTABLE:
      if (loom__rawgetfield(L, idx, "message") == LUA_TSTRING) {
        if (loom__rawgetfield(L, idx, "code") == LUA_TSTRING) {
          lua_pushfstring(L, "%s: %s", lua_tostring(L, -1), lua_tostring(L, -2));
          lua_replace(L, -3);
          lua_pop(L, 1);
        } else
          lua_pop(L, 1);
        return;
      }
      lua_pop(L, 1);
      break;
    default:
      break;
  }
  if (luaL_getmetafield(L, idx, "__tostring") != LUA_TNIL) {
    /* A __tostring may itself fail: run it protected. */
    lua_pushvalue(L, idx);
    if (lua_pcall(L, 1, 1, 0) == LUA_OK && lua_type(L, -1) == LUA_TSTRING)
      return;
    lua_pop(L, 1);
  }
  lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, idx));
}

/* ------------------------------------------------------------ reports */

void loom__report(loom_runtime *rt, lua_State *L, int idx, const char *where,
                  const char *traceback) {
  const char *text;
  idx = lua_absindex(L, idx);
  luaL_checkstack(L, 6, NULL);
  if (!where)
    where = "unhandled error";
  /* `where` reads as a heading: "error in tasklet #3", "Unhandled error in
   * Deferred", "error in a call_later callback". */
  if (rt->on_error_ref != LUA_NOREF && !rt->closing) {
    lua_State *R = rt->RL;
    lua_rawgeti(R, LUA_REGISTRYINDEX, rt->on_error_ref);
    lua_pushvalue(L, idx);
    lua_xmove(L, R, 1);
    lua_pushstring(R, where);
    if (traceback)
      lua_pushstring(R, traceback);
    else
      lua_pushnil(R);
    rt->in_reactor++;
    if (lua_pcall(R, 3, 0, 0) == LUA_OK) {
      rt->in_reactor--;
      return;
    }
    rt->in_reactor--;
    loom__push_error_text(R, -1);
    fprintf(stderr, "loom: the on_error handler failed: %s\n", lua_tostring(R, -1));
    lua_settop(R, 0);
  }
  rt->unhandled++;
  loom__push_error_text(L, idx);
  text = lua_tostring(L, -1);
  if (rt->host_error) {
    lua_pushfstring(L, "%s: %s", where, text);
    if (traceback && !strstr(traceback, text))
      lua_pushfstring(L, "%s\n%s", lua_tostring(L, -1), traceback);
    else if (traceback)
      lua_pushfstring(L, "%s: %s", where, traceback);
    rt->host_error(rt->host_error_ud, rt, lua_tostring(L, -1));
    lua_settop(L, idx);
    return;
  }
  /* The traceback already starts with the message when we built it. */
  if (traceback && strncmp(traceback, text, strlen(text)) == 0)
    fprintf(stderr, "loom: %s: %s\n", where, traceback);
  else if (traceback)
    fprintf(stderr, "loom: %s: %s\n%s\n", where, text, traceback);
  else
    fprintf(stderr, "loom: %s: %s\n", where, text);
  fflush(stderr);
  lua_settop(L, idx);
}

/* report_error(err [, where]) - the reporter, for Lua-side policy (Deferreds). */
static int l_report_error(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  const char *where = luaL_optstring(L, 2, NULL);
  const char *tb = NULL;
  luaL_checkany(L, 1);
  lua_settop(L, 2);
  if (lua_type(L, 1) == LUA_TTABLE) {
    loom__rawgetfield(L, 1, "traceback");
    tb = lua_tostring(L, -1);
  }
  loom__report(rt, L, 1, where, tb);
  return 0;
}

/* on_error(fn | nil) */
static int l_on_error(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  if (!lua_isnoneornil(L, 1))
    luaL_checktype(L, 1, LUA_TFUNCTION);
  luaL_unref(L, LUA_REGISTRYINDEX, rt->on_error_ref);
  rt->on_error_ref = LUA_NOREF;
  if (!lua_isnoneornil(L, 1)) {
    lua_pushvalue(L, 1);
    rt->on_error_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  return 0;
}

void loom__errors_open(lua_State *L, loom_runtime *rt) {
  static const luaL_Reg funcs[] = {
      {"report_error", l_report_error}, {"on_error", l_on_error}, {NULL, NULL}};
  int i;
  lua_createtable(L, LOOM_E_NCLASSES, 0); /* registry list of classes */
  for (i = 0; i < LOOM_E_NCLASSES; i++) {
    lua_createtable(L, 0, 8);
    lua_pushstring(L, class_names[i]);
    lua_setfield(L, -2, "name");
    lua_pushstring(L, class_codes[i]);
    lua_setfield(L, -2, "code");
    lua_pushfstring(L, "loom.%s", class_names[i]);
    lua_setfield(L, -2, "__name");
    lua_pushvalue(L, -1);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, error_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushcfunction(L, class_is);
    lua_setfield(L, -2, "is");
    lua_pushcfunction(L, class_new);
    lua_setfield(L, -2, "new");
    lua_pushvalue(L, -1);
    lua_setfield(L, -4, class_names[i]); /* module.Class */
    lua_rawseti(L, -2, i + 1);
  }
  rt->errors_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  loom__setfuncs(L, rt, funcs);
}
