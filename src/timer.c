/*
 * timer.c - the runtime's timer heap and what stands on it: loom.sleep,
 * loom.now, loom.call_later and the deadlines behind loom.timeout.
 *
 * One binary heap ordered by (due, seq) holds every timer; a single
 * uv_timer is armed for its earliest entry only while the loop is about to
 * block. A sleeping tasklet costs one heap slot and no libuv handle, and
 * timers with equal deadlines fire in the order they were started.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "loom_int.h"

/* Timers further out than this are clamped (about 31 years). */
#define LOOM_MAX_SECONDS 1e9

/* ------------------------------------------------------------ heap */

static int earlier(const loom_timer *a, const loom_timer *b) {
  return a->due < b->due || (a->due == b->due && a->seq < b->seq);
}

static void place(loom_runtime *rt, loom_timer *tm, size_t i) {
  rt->heap[i] = tm;
  tm->index = i;
}

static void sift_up(loom_runtime *rt, size_t i) {
  loom_timer *tm = rt->heap[i];
  while (i > 0) {
    size_t parent = (i - 1) / 2;
    if (!earlier(tm, rt->heap[parent]))
      break;
    place(rt, rt->heap[parent], i);
    i = parent;
  }
  place(rt, tm, i);
}

static void sift_down(loom_runtime *rt, size_t i) {
  loom_timer *tm = rt->heap[i];
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= rt->nheap)
      break;
    if (c + 1 < rt->nheap && earlier(rt->heap[c + 1], rt->heap[c]))
      c++;
    if (!earlier(rt->heap[c], tm))
      break;
    place(rt, rt->heap[c], i);
    i = c;
  }
  place(rt, tm, i);
}

void loom__timer_init(loom_timer *tm, loom_timer_fn fire) {
  tm->due = 0;
  tm->seq = 0;
  tm->index = SIZE_MAX;
  tm->fire = fire;
}

int loom__timer_armed(const loom_timer *tm) { return tm->index != SIZE_MAX; }

int loom__timer_start(loom_runtime *rt, loom_timer *tm, double seconds) {
  if (loom__timer_armed(tm))
    loom__timer_stop(rt, tm);
  if (!(seconds > 0))
    seconds = 0;
  if (seconds > LOOM_MAX_SECONDS)
    seconds = LOOM_MAX_SECONDS;
  if (rt->nheap == rt->capheap) {
    size_t cap = rt->capheap ? rt->capheap * 2 : 64;
    loom_timer **h = realloc(rt->heap, cap * sizeof *h);
    if (!h)
      return UV_ENOMEM;
    rt->heap = h;
    rt->capheap = cap;
  }
  tm->due = uv_hrtime() + (uint64_t)(seconds * LOOM_NS_PER_S);
  tm->seq = rt->timer_seq++;
  place(rt, tm, rt->nheap++);
  sift_up(rt, tm->index);
  return 0;
}

void loom__timer_stop(loom_runtime *rt, loom_timer *tm) {
  size_t i = tm->index;
  loom_timer *last;
  if (i == SIZE_MAX)
    return;
  tm->index = SIZE_MAX;
  last = rt->heap[--rt->nheap];
  if (i == rt->nheap)
    return;
  place(rt, last, i);
  if (i > 0 && earlier(last, rt->heap[(i - 1) / 2]))
    sift_up(rt, i);
  else
    sift_down(rt, i);
}

int loom__timers_run(loom_runtime *rt) {
  uint64_t now = uv_hrtime();
  uint64_t limit = rt->timer_seq; /* timers started by these callbacks wait */
  int fired = 0;
  while (rt->nheap > 0) {
    loom_timer *tm = rt->heap[0];
    if (tm->due > now || tm->seq >= limit)
      break;
    loom__timer_stop(rt, tm);
    tm->fire(rt, tm);
    fired++;
  }
  return fired;
}

uint64_t loom__timers_next(loom_runtime *rt) {
  uint64_t now;
  if (rt->nheap == 0)
    return UINT64_MAX;
  now = uv_hrtime();
  return rt->heap[0]->due > now ? rt->heap[0]->due - now : 0;
}

void loom__timers_free(loom_runtime *rt) {
  free(rt->heap);
  rt->heap = NULL;
  rt->nheap = rt->capheap = 0;
}

/* The uv_timer only has to end uv_run(UV_RUN_ONCE): the drive loop fires
 * the heap itself right after. */
void loom__heap_timer_cb(uv_timer_t *h) { (void)h; }

/* ------------------------------------------------------------ arguments */

double loom__check_seconds(lua_State *L, int idx) {
  lua_Number s = luaL_checknumber(L, idx);
  luaL_argcheck(L, !isnan(s), idx, "seconds must not be NaN");
  luaL_argcheck(L, s >= 0, idx, "seconds must not be negative");
  return s > LOOM_MAX_SECONDS ? LOOM_MAX_SECONDS : s;
}

double loom__opt_timeout(lua_State *L, int idx) {
  int tp = lua_type(L, idx);
  if (tp == LUA_TNONE || tp == LUA_TNIL)
    return -1;
  return loom__check_seconds(L, idx);
}

/* ------------------------------------------------------------ sleep / now */

static void sleep_done(loom_runtime *rt, loom_timer *tm) {
  loom_block *b = (loom_block *)((char *)tm - offsetof(loom_block, timer));
  loom__wake(rt, b, 0, LOOM_WOKE_DONE);
}

LOOM_HIDDEN int loom__yield(lua_State *L, loom_runtime *rt);

static int l_sleep(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  double s = loom__check_seconds(L, 1);
  loom_block *b;
  if (s == 0)
    return loom__yield(L, rt);
  loom__check_block(L, rt);
  b = loom__block_new(rt, L, "sleep");
  b->timer.fire = sleep_done;
  if (loom__timer_start(rt, &b->timer, s) != 0) {
    loom__wake(rt, b, 0, LOOM_WOKE_DONE);
    return luaL_error(L, "not enough memory");
  }
  lua_settop(L, 0);
  return loom__suspend(L, rt, b);
}

static int l_now(lua_State *L) {
  lua_pushnumber(L, (lua_Number)uv_hrtime() / LOOM_NS_PER_S);
  return 1;
}

/* ------------------------------------------------------------ call_later */

/* A reactor timer: the userdata "loom.call_later" holds the node; its
 * user values are the function and its arguments. It anchors itself in the
 * registry while armed, so a dropped handle still fires. */
typedef struct later {
  loom_timer tm;
  loom_runtime *rt;
  int self_ref;
  int nargs;
} later;

#define LATER_MT "loom.call_later"

static void later_unanchor(loom_runtime *rt, later *h) {
  if (h->self_ref != LUA_NOREF) {
    luaL_unref(rt->L, LUA_REGISTRYINDEX, h->self_ref);
    h->self_ref = LUA_NOREF;
  }
}

static void later_fire(loom_runtime *rt, loom_timer *tm) {
  later *h = (later *)tm;
  lua_State *R = rt->RL;
  int i, ud;
  if (rt->closing) {
    later_unanchor(rt, h);
    return;
  }
  luaL_checkstack(R, h->nargs + 4, NULL);
  lua_rawgeti(R, LUA_REGISTRYINDEX, h->self_ref);
  ud = lua_gettop(R);
  later_unanchor(rt, h);
  for (i = 1; i <= h->nargs + 1; i++)
    lua_getiuservalue(R, ud, i);
  lua_remove(R, ud);
  loom__call_reactor(rt, h->nargs, "error in a call_later callback");
}

static int l_call_later(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  double s = loom__check_seconds(L, 1);
  int i, nargs = lua_gettop(L) - 2;
  later *h;
  luaL_checktype(L, 2, LUA_TFUNCTION);
  h = lua_newuserdatauv(L, sizeof *h, nargs + 1);
  loom__timer_init(&h->tm, later_fire);
  h->rt = rt;
  h->nargs = nargs;
  h->self_ref = LUA_NOREF;
  luaL_setmetatable(L, LATER_MT);
  for (i = 0; i <= nargs; i++) {
    lua_pushvalue(L, 2 + i);
    lua_setiuservalue(L, -2, i + 1);
  }
  if (loom__timer_start(rt, &h->tm, s) != 0)
    return luaL_error(L, "not enough memory");
  lua_pushvalue(L, -1);
  h->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return 1;
}

static int later_cancel(lua_State *L) {
  later *h = luaL_checkudata(L, 1, LATER_MT);
  int was = loom__timer_armed(&h->tm);
  loom__timer_stop(h->rt, &h->tm);
  later_unanchor(h->rt, h);
  lua_pushboolean(L, was);
  return 1;
}

static int later_active(lua_State *L) {
  later *h = luaL_checkudata(L, 1, LATER_MT);
  lua_pushboolean(L, loom__timer_armed(&h->tm));
  return 1;
}

static int later_tostring(lua_State *L) {
  later *h = luaL_checkudata(L, 1, LATER_MT);
  lua_pushfstring(L, "loom.call_later (%s): %p", loom__timer_armed(&h->tm) ? "active" : "done",
                  (void *)h);
  return 1;
}

/* ------------------------------------------------------------ deadlines */

/* loom.timeout(s, fn, ...) pushes a deadline on the calling tasklet; when
 * it expires the token (a loom.Timeout object) is raised at the tasklet's
 * waiting point, and loom.timeout turns exactly that token into the
 * ETIMEDOUT fail triple (lua/loom/init.lua). */
struct loom_deadline {
  loom_timer tm;
  loom_tasklet *t;
  loom_deadline *next;
  int token_ref;
  int fired;
};

static void deadline_fire(loom_runtime *rt, loom_timer *tm) {
  loom_deadline *d = (loom_deadline *)tm;
  lua_State *R = rt->RL;
  d->fired = 1;
  if (rt->closing)
    return;
  lua_rawgeti(R, LUA_REGISTRYINDEX, d->token_ref);
  loom__raise_in(rt, R, d->t);
}

static int l_deadline_push(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  double s = loom__check_seconds(L, 1);
  loom_tasklet *t = rt->current ? rt->current : &rt->main;
  loom_deadline *d;
  loom__check_block(L, rt);
  d = malloc(sizeof *d);
  if (!d)
    return luaL_error(L, "not enough memory");
  loom__timer_init(&d->tm, deadline_fire);
  d->t = t;
  d->fired = 0;
  lua_pushfstring(L, "timed out after %f s", s);
  loom__error_new(L, rt, LOOM_E_TIMEOUT, lua_tostring(L, -1), 0);
  lua_remove(L, -2);
  lua_pushvalue(L, -1);
  d->token_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  d->next = t->deadlines;
  t->deadlines = d;
  if (loom__timer_start(rt, &d->tm, s) != 0)
    return luaL_error(L, "not enough memory");
  return 1;
}

static void deadline_free(loom_runtime *rt, loom_deadline *d) {
  loom__timer_stop(rt, &d->tm);
  luaL_unref(rt->L, LUA_REGISTRYINDEX, d->token_ref);
  free(d);
}

/* _deadline_pop(token) -> fired: removes the deadline of that token. */
static int l_deadline_pop(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  loom_tasklet *t = rt->current ? rt->current : &rt->main;
  loom_deadline **pp;
  for (pp = &t->deadlines; *pp; pp = &(*pp)->next) {
    loom_deadline *d = *pp;
    int same;
    lua_rawgeti(L, LUA_REGISTRYINDEX, d->token_ref);
    same = lua_rawequal(L, -1, 1);
    lua_pop(L, 1);
    if (same) {
      int fired = d->fired;
      /* A deadline that passed while a kill was already on its way left
       * its token pending: it must not surface at a later wait. */
      if (t->flags & LOOM_T_PENDING) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, t->pending_ref);
        if (lua_rawequal(L, -1, 1)) {
          luaL_unref(L, LUA_REGISTRYINDEX, t->pending_ref);
          t->pending_ref = LUA_NOREF;
          t->flags &= ~LOOM_T_PENDING;
        }
        lua_pop(L, 1);
      }
      *pp = d->next;
      deadline_free(rt, d);
      lua_pushboolean(L, fired);
      return 1;
    }
  }
  lua_pushboolean(L, 0);
  return 1;
}

void loom__deadlines_free(loom_runtime *rt, loom_tasklet *t) {
  while (t->deadlines) {
    loom_deadline *d = t->deadlines;
    t->deadlines = d->next;
    deadline_free(rt, d);
  }
}

/* ------------------------------------------------------------ open */

void loom__open_timer(lua_State *L, loom_runtime *rt) {
  static const luaL_Reg funcs[] = {{"sleep", l_sleep},
                                   {"now", l_now},
                                   {"call_later", l_call_later},
                                   {"_deadline_push", l_deadline_push},
                                   {"_deadline_pop", l_deadline_pop},
                                   {NULL, NULL}};
  static const luaL_Reg methods[] = {
      {"cancel", later_cancel}, {"active", later_active}, {NULL, NULL}};
  luaL_newmetatable(L, LATER_MT);
  lua_pushcfunction(L, later_tostring);
  lua_setfield(L, -2, "__tostring");
  luaL_newlib(L, methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  loom__setfuncs(L, rt, funcs);
}
