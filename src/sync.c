/*
 * sync.c - loom.event() and loom.semaphore(n): the two small
 * synchronisation objects beside channels, on the same wait queues.
 */
#include <string.h>

#include "loom_int.h"

#define EVENT_MT "loom.event"
#define SEMAPHORE_MT "loom.semaphore"

/* ------------------------------------------------------------ event */

typedef struct event {
  uint32_t magic;
  loom_waitq waiters;
  int set;
} event;

static int l_event(lua_State *L) {
  event *ev = lua_newuserdatauv(L, sizeof *ev, 0);
  memset(ev, 0, sizeof *ev);
  ev->magic = LOOM_MAGIC(LOOM_MT_EVENT);
  luaL_setmetatable(L, EVENT_MT);
  return 1;
}

static int ev_set(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  event *ev = loom__checkud_sized(L, 1, LOOM_MT_EVENT, sizeof(event), EVENT_MT);
  loom_wait *w;
  ev->set = 1;
  while ((w = loom__waitq_pop(&ev->waiters)) != NULL) {
    lua_State *S = loom__wake_stack(rt, w->block->t, 1);
    if (S)
      lua_pushboolean(S, 1);
    loom__wake(rt, w->block, S ? 1 : 0, LOOM_WOKE_DONE);
  }
  return 0;
}

static int ev_clear(lua_State *L) {
  loom__checkud_sized(L, 1, LOOM_MT_EVENT, sizeof(event), EVENT_MT);
  ((event *)lua_touserdata(L, 1))->set = 0;
  return 0;
}

static int ev_is_set(lua_State *L) {
  event *ev = loom__checkud_sized(L, 1, LOOM_MT_EVENT, sizeof(event), EVENT_MT);
  lua_pushboolean(L, ev->set);
  return 1;
}

static int ev_wait(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  event *ev = loom__checkud_sized(L, 1, LOOM_MT_EVENT, sizeof(event), EVENT_MT);
  double timeout = loom__opt_timeout(L, 2);
  loom_block *b;
  if (ev->set) {
    lua_pushboolean(L, 1);
    return 1;
  }
  if (timeout == 0)
    return loom__fail(L, "ETIMEDOUT", "timed out");
  loom__check_block(L, rt);
  lua_settop(L, 1);
  b = loom__block_new(rt, L, "event");
  loom__waitq_push(&ev->waiters, &b->w);
  loom__block_timeout(rt, b, timeout);
  return loom__suspend(L, rt, b);
}

static int ev_tostring(lua_State *L) {
  event *ev = loom__checkud_sized(L, 1, LOOM_MT_EVENT, sizeof(event), EVENT_MT);
  lua_pushfstring(L, "loom.event (%s, %d waiting): %p", ev->set ? "set" : "clear",
                  ev->waiters.count, (void *)ev);
  return 1;
}

/* ------------------------------------------------------------ semaphore */

typedef struct semaphore {
  uint32_t magic;
  loom_waitq waiters;
  lua_Integer count;
} semaphore;

static int l_semaphore(lua_State *L) {
  lua_Integer n = luaL_optinteger(L, 1, 1);
  semaphore *s;
  luaL_argcheck(L, n >= 0, 1, "count must not be negative");
  s = lua_newuserdatauv(L, sizeof *s, 0);
  memset(s, 0, sizeof *s);
  s->magic = LOOM_MAGIC(LOOM_MT_SEMAPHORE);
  s->count = n;
  luaL_setmetatable(L, SEMAPHORE_MT);
  return 1;
}

static int sem_acquire(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  semaphore *s = loom__checkud_sized(L, 1, LOOM_MT_SEMAPHORE, sizeof(semaphore), SEMAPHORE_MT);
  double timeout = loom__opt_timeout(L, 2);
  loom_block *b;
  if (s->count > 0 && !s->waiters.head) {
    s->count--;
    lua_pushboolean(L, 1);
    return 1;
  }
  if (timeout == 0)
    return loom__fail(L, "ETIMEDOUT", "timed out");
  loom__check_block(L, rt);
  lua_settop(L, 1);
  b = loom__block_new(rt, L, "semaphore");
  loom__waitq_push(&s->waiters, &b->w);
  loom__block_timeout(rt, b, timeout);
  return loom__suspend(L, rt, b);
}

static void release_unit(loom_runtime *rt, semaphore *s) {
  loom_wait *w = loom__waitq_pop(&s->waiters);
  if (w) {
    loom_tasklet *t = w->block->t;
    lua_State *S = loom__wake_stack(rt, t, 1);
    if (S)
      lua_pushboolean(S, 1);
    if (!(t->flags & LOOM_T_MAIN)) {
      t->flags |= LOOM_T_HANDED;
      t->undo = LOOM_UNDO_SEMAPHORE;
    }
    loom__wake(rt, w->block, S ? 1 : 0, LOOM_WOKE_DONE);
  } else
    s->count++;
}

/* release() hands the unit straight to the oldest waiter, so a releaser
 * that acquires again at once cannot starve it. */
static int sem_release(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  semaphore *s = loom__checkud_sized(L, 1, LOOM_MT_SEMAPHORE, sizeof(semaphore), SEMAPHORE_MT);
  release_unit(rt, s);
  return 0;
}

void loom__semaphore_giveback(lua_State *L, loom_runtime *rt, int idx) {
  semaphore *s = luaL_testudata(L, idx, SEMAPHORE_MT);
  if (s)
    release_unit(rt, s);
}

static int sem_props(lua_State *L) {
  semaphore *s = loom__checkud_sized(L, 1, LOOM_MT_SEMAPHORE, sizeof(semaphore), SEMAPHORE_MT);
  const char *k = lua_tostring(L, 2);
  if (k && strcmp(k, "count") == 0)
    lua_pushinteger(L, s->count);
  else
    lua_pushnil(L);
  return 1;
}

static int sem_tostring(lua_State *L) {
  semaphore *s = loom__checkud_sized(L, 1, LOOM_MT_SEMAPHORE, sizeof(semaphore), SEMAPHORE_MT);
  lua_pushfstring(L, "loom.semaphore (%I, %d waiting): %p", s->count, s->waiters.count, (void *)s);
  return 1;
}

void loom__open_sync(lua_State *L, loom_runtime *rt) {
  static const luaL_Reg funcs[] = {{"event", l_event}, {"semaphore", l_semaphore}, {NULL, NULL}};
  static const luaL_Reg ev_methods[] = {
      {"set", ev_set}, {"clear", ev_clear}, {"is_set", ev_is_set}, {"wait", ev_wait}, {NULL, NULL}};
  static const luaL_Reg sem_methods[] = {
      {"acquire", sem_acquire}, {"release", sem_release}, {NULL, NULL}};
  luaL_newmetatable(L, EVENT_MT);
  loom__fast_mt(L, rt, LOOM_MT_EVENT);
  lua_newtable(L);
  loom__setfuncs(L, rt, ev_methods);
  lua_setfield(L, -2, "__index");
  lua_pushlightuserdata(L, rt);
  lua_pushcclosure(L, ev_tostring, 1);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
  luaL_newmetatable(L, SEMAPHORE_MT);
  loom__fast_mt(L, rt, LOOM_MT_SEMAPHORE);
  lua_pushlightuserdata(L, rt);
  lua_pushcclosure(L, sem_tostring, 1);
  lua_setfield(L, -2, "__tostring");
  lua_newtable(L);
  loom__setfuncs(L, rt, sem_methods);
  loom__set_methods(L, rt, sem_props);
  lua_pop(L, 1);
  loom__setfuncs(L, rt, funcs);
}
