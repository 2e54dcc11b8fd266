/*
 * pending.c - C functions that block the calling tasklet (loom_pending_*):
 * a host's own asynchronous systems (a database, physics jobs) look like
 * plain blocking calls to scripts. A pending wraps one block record of the
 * scheduler (docs/design.md, Y1-Y3) and keeps the loop alive while it waits.
 */
#include <stdlib.h>

#include "host.h"

enum { P_NEW, P_EARLY, P_WAITING, P_CANCELLED };

struct loom_pending {
  loom_runtime *rt;
  lua_State *L;  /* the thread of the C function that made it */
  lua_State *S;  /* where results are pushed (loom_pending_state) */
  loom_block *b; /* while P_WAITING */
  const char *what;
  int state;
  int base;     /* S's top when results began, -1 before */
  int nresults; /* P_EARLY: the results left on L */
};

/* A waiting pending is work in flight, like a timer: its completion will
 * come through a post, so the async handle keeps loom_run (and a blocked
 * main thread) from seeing a deadlock meanwhile. */
static void pending_waits(loom_runtime *rt, int delta) {
  host_state *q = rt->posts;
  if (!q)
    return;
  if (delta > 0 && q->nwaiting++ == 0)
    uv_ref((uv_handle_t *)&q->async);
  else if (delta < 0 && --q->nwaiting == 0)
    uv_unref((uv_handle_t *)&q->async);
}

static void pending_cancel(loom_runtime *rt, loom_block *b, int why) {
  loom_pending *p = b->data;
  (void)why;
  pending_waits(rt, -1);
  p->b = NULL;
  p->S = NULL;
  p->state = P_CANCELLED;
}

loom_pending *loom_pending_new(lua_State *L, const char *what) {
  loom_runtime *rt;
  loom_pending *p;
  if (!L)
    return NULL;
  rt = loom__runtime(L);
  if (!rt)
    luaL_error(L, "loom is not loaded in this state");
  loom__check_block(L, rt);
  p = malloc(sizeof *p);
  if (!p)
    luaL_error(L, "not enough memory");
  p->rt = rt;
  p->L = L;
  p->S = NULL;
  p->b = NULL;
  p->what = what ? what : "host call";
  p->state = P_NEW;
  p->base = -1;
  p->nresults = 0;
  return p;
}

int loom_pending_wait(lua_State *L, loom_pending *p, double timeout) {
  loom_runtime *rt;
  if (!p)
    return luaL_error(L, "loom_pending_wait: no pending (NULL)");
  if (p->L != L)
    return luaL_error(L, "loom_pending_wait: the pending was made on another thread");
  if (p->state == P_EARLY) {
    int n = p->nresults;
    free(p);
    return n; /* the results are on top of L */
  }
  if (p->state != P_NEW)
    return luaL_error(L, "loom_pending_wait: called twice");
  rt = p->rt;
  if (p->base >= 0)
    lua_settop(L, p->base); /* results pushed but never completed */
  p->base = -1;
  p->S = NULL;
  p->b = loom__block_new(rt, L, p->what);
  p->b->data = p;
  p->b->cancel = pending_cancel;
  p->state = P_WAITING;
  pending_waits(rt, 1);
  loom__block_timeout(rt, p->b, timeout);
  return loom__suspend(L, rt, p->b);
}

lua_State *loom_pending_state(loom_pending *p) {
  lua_State *S;
  if (!p)
    return NULL;
  if (p->state == P_NEW) {
    S = p->L;
    if (!lua_checkstack(S, LUA_MINSTACK))
      return NULL;
  } else if (p->state == P_WAITING) {
    S = loom__wake_stack(p->rt, p->b->t, LUA_MINSTACK);
    if (!S)
      return NULL;
  } else
    return NULL;
  if (p->base < 0 || p->S != S) {
    p->S = S;
    p->base = lua_gettop(S);
  }
  return S;
}

/* Keeps the top n of the values pushed since loom_pending_state. */
static int pending_take(loom_pending *p, int nresults) {
  int pushed;
  if (p->base < 0 || !p->S)
    return 0;
  pushed = lua_gettop(p->S) - p->base;
  if (pushed < 0)
    return 0;
  if (nresults < 0 || nresults > pushed)
    nresults = pushed;
  if (nresults < pushed) {
    lua_rotate(p->S, p->base + 1, nresults);
    lua_settop(p->S, p->base + nresults);
  }
  return nresults;
}

void loom_pending_complete(loom_pending *p, int nresults) {
  if (!p)
    return;
  switch (p->state) {
  case P_NEW:
    p->nresults = pending_take(p, nresults);
    p->state = P_EARLY; /* loom_pending_wait returns them and frees p */
    return;
  case P_WAITING: {
    loom_block *b = p->b;
    int n = pending_take(p, nresults);
    b->cancel = NULL;
    pending_waits(p->rt, -1);
    loom__wake(p->rt, b, n, LOOM_WOKE_DONE);
    free(p);
    return;
  }
  case P_CANCELLED:
    free(p);
    return;
  default:
    return; /* P_EARLY: a second completion, ignored */
  }
}
