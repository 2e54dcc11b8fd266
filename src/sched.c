/*
 * sched.c - the scheduler: run queue, the suspension primitive, the wake
 * function, the one resume site and the drive loop over libuv.
 *
 * Lifecycle of a wait (docs/design.md, "The yield protocol"):
 *   op: b = loom__block_new(); link waits / arm timer; return loom__suspend()
 *   waker: push values on loom__wake_stack(); loom__wake(b, n, why)
 *   scheduler: loom__resume() passes the n values to the yielded C function,
 *   whose continuation returns them (or raises the error a kill put there).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "loom_int.h"

char loom__thread_tag;

/* A user coroutine that blocks yields this one value up to the tasklet. */
static char sentinel_key;
LOOM_HIDDEN void *loom__sentinel = &sentinel_key;

/* ------------------------------------------------------------ wait queues */

void loom__waitq_push(loom_waitq *q, loom_wait *w) {
  w->next = NULL;
  w->prev = q->tail;
  if (q->tail)
    q->tail->next = w;
  else
    q->head = w;
  q->tail = w;
  w->queue = q;
  q->count++;
}

void loom__waitq_remove(loom_wait *w) {
  loom_waitq *q = w->queue;
  if (!q)
    return;
  if (w->prev)
    w->prev->next = w->next;
  else
    q->head = w->next;
  if (w->next)
    w->next->prev = w->prev;
  else
    q->tail = w->prev;
  w->next = w->prev = NULL;
  w->queue = NULL;
  q->count--;
}

loom_wait *loom__waitq_pop(loom_waitq *q) {
  loom_wait *w = q->head;
  if (w)
    loom__waitq_remove(w);
  return w;
}

/* ------------------------------------------------------------ run queue */

void loom__ready(loom_runtime *rt, loom_tasklet *t) {
  t->status = LOOM_READY;
  if (t->flags & (LOOM_T_QUEUED | LOOM_T_MAIN))
    return;
  t->flags |= LOOM_T_QUEUED;
  t->next = NULL;
  if (rt->ready_tail)
    rt->ready_tail->next = t;
  else
    rt->ready_head = t;
  rt->ready_tail = t;
  rt->nready++;
}

static loom_tasklet *pop_ready(loom_runtime *rt) {
  loom_tasklet *t = rt->ready_head;
  if (!t)
    return NULL;
  rt->ready_head = t->next;
  if (!rt->ready_head)
    rt->ready_tail = NULL;
  t->next = NULL;
  t->flags &= ~LOOM_T_QUEUED;
  rt->nready--;
  return t;
}

/* ------------------------------------------------------------ contexts */

const char *loom__why_not_block(lua_State *L, loom_runtime *rt) {
  if (rt->closing || rt->unwinding)
    return "cannot block: the runtime is closing";
  if (rt->current) {
    if (!lua_isyieldable(L))
      return "cannot block here: a C call is in the way (a metamethod such as __gc, "
             "or a callback of table.sort, string.gsub or another C function)";
    return NULL;
  }
  if (rt->in_reactor)
    return "cannot block in the reactor (a callback run by the loop): spawn a "
           "tasklet or use a Deferred instead";
  if (rt->driving)
    return "cannot block here: the loop is already running below this call";
  if (lua_gc(L, LUA_GCISRUNNING) != 1) { /* -1 inside a finalizer (5.4.4+) */
    /* The collector is stopped - by the user, or because a finalizer runs:
     * the main thread must not run the scheduler inside the collector. */
    lua_Debug ar;
    int level;
    for (level = 0; lua_getstack(L, level, &ar); level++) {
      lua_getinfo(L, "n", &ar);
      if (ar.namewhat && strcmp(ar.namewhat, "metamethod") == 0 && ar.name &&
          strcmp(ar.name, "__gc") == 0)
        return "cannot block here: inside a __gc finalizer";
    }
  }
  return NULL;
}

void loom__check_block(lua_State *L, loom_runtime *rt) {
  const char *why = loom__why_not_block(L, rt);
  if (why)
    luaL_error(L, "%s", why);
}

/* ------------------------------------------------------------ blocks */

static void block_timeout_fire(loom_runtime *rt, loom_timer *tm) {
  loom_block *b = (loom_block *)((char *)tm - offsetof(loom_block, timer));
  loom__wake_fail(rt, b, "ETIMEDOUT", "timed out", LOOM_WOKE_TIMEOUT);
}

loom_block *loom__block_new(loom_runtime *rt, lua_State *L, const char *what) {
  loom_block *b = rt->free_blocks;
  loom_tasklet *t = rt->current ? rt->current : &rt->main;
  if (b)
    rt->free_blocks = b->next_free;
  else {
    b = malloc(sizeof *b);
    if (!b) {
      luaL_error(L, "not enough memory");
      return NULL;
    }
  }
  /* Field by field: blocks are taken on every wait. */
  b->t = t;
  b->what = what;
  b->cancel = NULL;
  b->data = NULL;
  b->timer.index = SIZE_MAX;
  b->timer.fire = block_timeout_fire;
  b->w.next = b->w.prev = NULL;
  b->w.queue = NULL;
  b->w.block = b;
  b->w.kind = 0;
  b->w.index = 0;
  b->w.vL = NULL;
  b->extra = NULL;
  b->nextra = 0;
  t->block = b;
  if (t->flags & LOOM_T_MAIN)
    t->L = L;
  return b;
}

void loom__block_timeout(loom_runtime *rt, loom_block *b, double seconds) {
  if (seconds >= 0)
    loom__timer_start(rt, &b->timer, seconds);
}

static void block_release(loom_runtime *rt, loom_block *b) {
  free(b->extra);
  b->extra = NULL;
  b->next_free = rt->free_blocks;
  rt->free_blocks = b;
}

static void block_detach(loom_runtime *rt, loom_block *b) {
  int i;
  loom__waitq_remove(&b->w);
  for (i = 0; i < b->nextra; i++)
    loom__waitq_remove(&b->extra[i]);
  loom__timer_stop(rt, &b->timer);
}

/* ------------------------------------------------------------ suspend / wake */

static int resume_k(lua_State *L, int status, lua_KContext ctx) {
  loom_runtime *rt = (loom_runtime *)ctx;
  loom_tasklet *t = rt->current;
  int n = rt->resume_n;
  (void)status;
  if (t && (t->flags & LOOM_T_RAISE)) {
    int undo = t->undo;
    t->flags &= ~LOOM_T_RAISE;
    t->undo = LOOM_UNDO_NONE;
    if (undo)
      loom__undo(L, rt, undo, n - 1);
    return lua_error(L);
  }
  return n;
}

/* Raises the error stored for t by a kill/throw/deadline that found it
 * running or away from a wait point. */
static void raise_pending(lua_State *L, loom_runtime *rt, loom_tasklet *t) {
  t->flags &= ~LOOM_T_PENDING;
  lua_rawgeti(L, LUA_REGISTRYINDEX, t->pending_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, t->pending_ref);
  t->pending_ref = LUA_NOREF;
  lua_error(L);
}

LOOM_HIDDEN void loom__check_pending(lua_State *L, loom_runtime *rt, loom_tasklet *t) {
  if (t && (t->flags & LOOM_T_PENDING))
    raise_pending(L, rt, t);
}

static int suspend_main(lua_State *L, loom_runtime *rt, loom_block *b);

int loom__suspend(lua_State *L, loom_runtime *rt, loom_block *b) {
  loom_tasklet *t = b ? b->t : (rt->current ? rt->current : &rt->main);
  if (t->flags & LOOM_T_PENDING) {
    /* A kill or deadline arrived while it ran: raise it here instead of
     * waiting. The block has to go first. */
    if (b && t->block == b) {
      block_detach(rt, b);
      if (b->cancel)
        b->cancel(rt, b, LOOM_WOKE_KILL);
      t->block = NULL;
      block_release(rt, b);
    }
    raise_pending(L, rt, t);
  }
  if (t->flags & LOOM_T_MAIN)
    return suspend_main(L, rt, b);
  if (t->block) {
    t->status = LOOM_BLOCKED;
    rt->nblocked++;
  }
  if (L != t->L) {
    /* Inside a user coroutine: pass the suspension up through the
     * coroutine.resume wrappers (coro.c) to the tasklet's own thread. */
    lua_pushlightuserdata(L, loom__sentinel);
    return lua_yieldk(L, 1, (lua_KContext)rt, resume_k);
  }
  return lua_yieldk(L, 0, (lua_KContext)rt, resume_k);
}

/* The main thread cannot yield: it runs the scheduler until its block is
 * woken. Resume values collect on rt->mstack, away from the stack the drive
 * loop works on. */
static int suspend_main(lua_State *L, loom_runtime *rt, loom_block *b) {
  loom_tasklet *m = &rt->main;
  int rc, n;
  if (b && m->block == b) {
    m->status = LOOM_BLOCKED;
    rt->nblocked++;
  } else if (!b) {
    /* loom.yield() in the main thread: one round of the scheduler. */
    loom__drive(rt, L, NULL, 1);
    return 0;
  }
  rc = loom__drive(rt, L, m, 0);
  if (m->status == LOOM_BLOCKED) {
    /* The drive ended before the wake: deadlock or loom.stop(). The report
     * is built while the main thread still shows what it waits on. */
    loom_block *mb = m->block;
    if (rc == LOOM_DEADLOCK)
      loom__push_deadlock(L, rt);
    block_detach(rt, mb);
    if (mb->cancel)
      mb->cancel(rt, mb, LOOM_WOKE_CLOSE);
    m->block = NULL;
    m->status = LOOM_READY;
    rt->nblocked--;
    block_release(rt, mb);
    lua_settop(rt->mstack, 0);
    m->nresume = 0;
    if (rc == LOOM_DEADLOCK) {
      loom__kill_all(rt, L);
      return lua_error(L);
    }
    return luaL_error(L, "interrupted: loom.stop() ended the loop while the main thread waited");
  }
  n = m->nresume;
  m->nresume = 0;
  luaL_checkstack(L, n + 1, "too many results");
  lua_xmove(rt->mstack, L, n);
  if (m->flags & LOOM_T_RAISE) {
    m->flags &= ~LOOM_T_RAISE;
    return lua_error(L);
  }
  return n;
}

lua_State *loom__wake_stack(loom_runtime *rt, loom_tasklet *t, int n) {
  lua_State *S = (t->flags & LOOM_T_MAIN) ? rt->mstack : t->L;
  if (!lua_checkstack(S, n + LUA_MINSTACK))
    return NULL;
  return S;
}

void loom__wake(loom_runtime *rt, loom_block *b, int n, int why) {
  loom_tasklet *t = b->t;
  block_detach(rt, b);
  if (why != LOOM_WOKE_DONE && b->cancel)
    b->cancel(rt, b, why);
  if (t->block == b) {
    t->block = NULL;
    if (t->status == LOOM_BLOCKED)
      rt->nblocked--;
    t->nresume = (uint16_t)(t->nresume + n);
    loom__ready(rt, t);
  }
  block_release(rt, b);
}

void loom__wake_fail(loom_runtime *rt, loom_block *b, const char *code, const char *msg,
                     int why) {
  lua_State *S = loom__wake_stack(rt, b->t, 3);
  if (S) {
    lua_pushnil(S);
    lua_pushfstring(S, "%s: %s", code, msg);
    lua_pushstring(S, code);
  }
  loom__wake(rt, b, S ? 3 : 0, why);
}

/* ------------------------------------------------------------ kill / throw */

void loom__raise_in(loom_runtime *rt, lua_State *L, loom_tasklet *t) {
  lua_State *S;
  if (t->status == LOOM_DEAD) {
    lua_pop(L, 1);
    return;
  }
  if (t->status == LOOM_BLOCKED && t->block) {
    S = loom__wake_stack(rt, t, 1);
    if (!S) {
      lua_pop(L, 1);
      return;
    }
    lua_xmove(L, S, 1);
    t->flags |= LOOM_T_RAISE;
    loom__wake(rt, t->block, 1, LOOM_WOKE_KILL);
    return;
  }
  if (t->status == LOOM_READY && (t->flags & LOOM_T_STARTED) && (t->flags & LOOM_T_RAISE) == 0 &&
      t->nresume_k && t->undo != LOOM_UNDO_KEEP) {
    /* Woken but not yet resumed at a wait point: the error is raised
     * there instead. Values the waker handed over (a channel value, a
     * semaphore unit) stay below it, for the wait's continuation to give
     * back; other results are dropped. */
    S = loom__wake_stack(rt, t, 1);
    if (t->flags & LOOM_T_HANDED) {
      lua_xmove(L, S, 1);
      t->nresume++;
    } else {
      lua_pop(S, t->nresume);
      lua_xmove(L, S, 1);
      t->nresume = 1;
      t->undo = LOOM_UNDO_NONE;
    }
    t->flags |= LOOM_T_RAISE;
    return;
  }
  /* Running below a nested resume, preempted, or never started: keep the
   * error until it reaches a wait point (or its first resume). */
  if (t->flags & LOOM_T_PENDING) {
    luaL_unref(L, LUA_REGISTRYINDEX, t->pending_ref);
  }
  t->pending_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  t->flags |= LOOM_T_PENDING;
}

/* ------------------------------------------------------------ start / finish */

static void push_live(lua_State *L, loom_runtime *rt) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->live_ref);
}

void loom__push_tasklet(lua_State *L, loom_runtime *rt, loom_tasklet *t) {
  push_live(L, rt);
  lua_rawgeti(L, -1, t->slot);
  lua_remove(L, -2);
}

/* Gives t a thread (from the pool when one is free) and moves its function
 * and arguments onto it. */
static int start(loom_runtime *rt, lua_State *from, loom_tasklet *t) {
  lua_State *co;
  int i, top = lua_gettop(from), ud = top + 2;
  luaL_checkstack(from, t->nargs + 5, NULL);
  lua_rawgeti(from, LUA_REGISTRYINDEX, rt->live_ref);
  lua_rawgeti(from, -1, t->slot);
  if (rt->npool > 0) {
    lua_xmove(rt->pool, from, 1);
    rt->npool--;
    co = lua_tothread(from, -1);
  } else {
    co = lua_newthread(from);
    *(void **)lua_getextraspace(co) = &loom__thread_tag;
  }
  if (!lua_checkstack(co, t->nargs + LUA_MINSTACK)) {
    lua_settop(from, top);
    return 0;
  }
  for (i = 0; i <= t->nargs; i++)
    lua_getiuservalue(from, ud, 1 + (i ? 1 + i : 0));
  lua_xmove(from, co, t->nargs + 1);
  lua_setiuservalue(from, ud, 1); /* the thread replaces the function */
  lua_settop(from, top);
  t->L = co;
  t->flags |= LOOM_T_STARTED;
  t->nresume = t->nargs;
  return 1;
}

static void release_thread(loom_runtime *rt, lua_State *co) {
  lua_settop(co, 0);
  if (rt->npool < 256 && lua_checkstack(rt->pool, 1)) {
    lua_pushthread(co);
    lua_xmove(co, rt->pool, 1);
    rt->npool++;
  }
}

/* Calls on_done(ok, values...) in reactor context. The values are the n
 * on top of `from` (left there). */
static void call_on_done(loom_runtime *rt, lua_State *from, int ud, int ok, int base, int n) {
  lua_State *R = rt->RL;
  int i;
  lua_getiuservalue(from, ud, 2);
  if (lua_type(from, -1) != LUA_TTABLE) {
    lua_pop(from, 1);
    return;
  }
  lua_getfield(from, -1, "on_done");
  lua_remove(from, -2);
  if (!lua_isfunction(from, -1) || !lua_checkstack(R, n + 4)) {
    lua_pop(from, 1);
    return;
  }
  lua_xmove(from, R, 1);
  lua_pushboolean(R, ok);
  for (i = 0; i < n; i++) {
    lua_pushvalue(from, base + i);
    lua_xmove(from, R, 1);
  }
  loom__call_reactor(rt, n + 1, "error in a tasklet's completion handler");
}

/* Wakes every joiner with true, results... or false, err. */
static void wake_joiners(loom_runtime *rt, lua_State *from, loom_tasklet *t, int ok, int base,
                         int n) {
  loom_wait *w;
  while (t->joiners && (w = loom__waitq_pop(t->joiners)) != NULL) {
    loom_block *b = w->block;
    lua_State *S = loom__wake_stack(rt, b->t, n + 1);
    int i;
    if (!S) {
      loom__wake(rt, b, 0, LOOM_WOKE_DONE);
      continue;
    }
    lua_pushboolean(S, ok);
    for (i = 0; i < n; i++) {
      lua_pushvalue(from, base + i);
      lua_xmove(from, S, 1);
    }
    loom__wake(rt, b, n + 1, LOOM_WOKE_DONE);
  }
}

/* live: stack index of the live table in `from`. */
static void mark_dead(loom_runtime *rt, lua_State *from, loom_tasklet *t, int live) {
  t->status = LOOM_DEAD;
  t->L = NULL;
  if (t->block) {
    loom_block *b = t->block;
    block_detach(rt, b);
    if (b->cancel)
      b->cancel(rt, b, LOOM_WOKE_KILL);
    t->block = NULL;
    block_release(rt, b);
  }
  if (t->flags & LOOM_T_PENDING) {
    luaL_unref(from, LUA_REGISTRYINDEX, t->pending_ref);
    t->pending_ref = LUA_NOREF;
    t->flags &= ~LOOM_T_PENDING;
  }
  loom__deadlines_free(rt, t);
  lua_pushnil(from);
  lua_rawseti(from, live, t->slot);
  if (rt->nfree == rt->cap_free) {
    int cap = rt->cap_free ? rt->cap_free * 2 : 256;
    int32_t *s = realloc(rt->free_slots, (size_t)cap * sizeof *s);
    if (s) {
      rt->free_slots = s;
      rt->cap_free = cap;
    }
  }
  if (rt->nfree < rt->cap_free)
    rt->free_slots[rt->nfree++] = t->slot;
  rt->nlive--;
}

/* Builds the traceback of a failed tasklet: its stack, then the spawn site. */
static void push_death_traceback(loom_runtime *rt, lua_State *from, loom_tasklet *t, lua_State *co,
                                 int ud) {
  luaL_Buffer B;
  /* luaL_buffinit pushes a placeholder in 5.4: start the buffer first. */
  luaL_buffinit(from, &B);
  loom__push_error_text(co, -1);
  luaL_traceback(from, co, lua_tostring(co, -1), 0);
  lua_pop(co, 1);
  luaL_addvalue(&B);
  lua_getiuservalue(from, ud, 2);
  if (lua_type(from, -1) == LUA_TTABLE) {
    lua_getfield(from, -1, "site");
    lua_remove(from, -2);
  }
  if (lua_isfunction(from, -1)) {
    lua_Debug ar;
    lua_getinfo(from, ">S", &ar);
    lua_pushfstring(from, "\nspawned at %s:%d", ar.short_src, (int)t->spawn_line);
    luaL_addvalue(&B);
  } else
    lua_pop(from, 1);
  luaL_pushresult(&B);
}

/* The tasklet's function returned (rc == LUA_OK, nres results on its
 * stack) or raised (the error on top). */
static void finish(loom_runtime *rt, lua_State *from, loom_tasklet *t, int rc, int nres) {
  lua_State *co = t->L;
  int ud, base, ok = (rc == LUA_OK), n, killed = 0, tb = 0;
  int watched = (t->flags & LOOM_T_WATCHED) != 0;
  int joined = t->joiners && t->joiners->count > 0;
  int live = lua_gettop(from) + 1, label = 0;
  luaL_checkstack(from, nres + 8, "too many results");
  lua_rawgeti(from, LUA_REGISTRYINDEX, rt->live_ref);
  lua_rawgeti(from, live, t->slot);
  ud = live + 1;
  if (rc != LUA_OK && !watched && !joined) {
    /* The report's label needs the live slot (the name), so it is made now. */
    loom__push_label(from, rt, t);
    label = lua_gettop(from);
  }
  if (ok) {
    n = nres;
    lua_xmove(co, from, nres);
    base = ud + 1;
  } else {
    killed = (t->flags & LOOM_T_KILLED) && loom__error_is(co, rt, -1, LOOM_E_TASKLETEXIT);
    push_death_traceback(rt, from, t, co, ud);
    tb = lua_gettop(from);
    lua_xmove(co, from, 1); /* the error */
    /* Unwind: run the pending __close handlers of its stack. */
    {
      loom_tasklet *prev = rt->current;
      rt->current = t;
      t->status = LOOM_RUNNING;
#if LUA_VERSION_RELEASE_NUM >= 50406
      lua_closethread(co, from);
#else
      lua_resetthread(co);
#endif
      rt->current = prev;
    }
    if (lua_type(from, -1) == LUA_TTABLE && lua_getmetatable(from, -1)) {
      /* A loom error object records the traceback where it escaped. */
      lua_pop(from, 1);
      if (loom__rawgetfield(from, -1, "traceback") == LUA_TNIL) {
        lua_pop(from, 1);
        lua_pushvalue(from, tb);
        loom__rawsetfield(from, -2, "traceback");
      } else
        lua_pop(from, 1);
    }
    n = 1;
    base = tb + 1;
  }
  /* Only a thread that ended normally goes back to the pool: one that died
   * by an error raised in a hook keeps allowhook off (lua_resume restores
   * it only for pcall), so it would never be preempted again. */
  if (ok)
    release_thread(rt, co);
  /* Keep the results for join() callers that come later. */
  if (n > 0 || !ok) {
    int i;
    lua_createtable(from, n, 3);
    for (i = 0; i < n; i++) {
      lua_pushvalue(from, base + i);
      lua_rawseti(from, -2, i + 1);
    }
    lua_pushinteger(from, n);
    lua_setfield(from, -2, "n");
    lua_pushboolean(from, ok);
    lua_setfield(from, -2, "ok");
    if (tb) {
      lua_pushvalue(from, tb);
      lua_setfield(from, -2, "traceback");
    }
    lua_setiuservalue(from, ud, 1);
  }
  /* Otherwise user value 1 keeps the (pooled) thread: join() of a dead
   * tasklet only looks for a results table there. */
  mark_dead(rt, from, t, live);
  if (watched)
    call_on_done(rt, from, ud, ok, base, n);
  if (joined)
    wake_joiners(rt, from, t, ok, base, n);
  free(t->joiners);
  t->joiners = NULL;
  if (!ok && !killed && !watched && !joined) {
    lua_pushfstring(from, "error in %s", lua_tostring(from, label));
    loom__report(rt, from, base, lua_tostring(from, -1), lua_tostring(from, tb));
  }
  lua_settop(from, live - 1);
}

/* A tasklet killed before its first run ends without running. */
static void finish_unstarted(loom_runtime *rt, lua_State *from, loom_tasklet *t) {
  int ud, err, live = lua_gettop(from) + 1;
  luaL_checkstack(from, 6, NULL);
  lua_rawgeti(from, LUA_REGISTRYINDEX, rt->live_ref);
  lua_rawgeti(from, live, t->slot);
  ud = live + 1;
  lua_rawgeti(from, LUA_REGISTRYINDEX, t->pending_ref);
  err = lua_gettop(from);
  luaL_unref(from, LUA_REGISTRYINDEX, t->pending_ref);
  t->pending_ref = LUA_NOREF;
  t->flags &= ~LOOM_T_PENDING;
  lua_createtable(from, 1, 2);
  lua_pushvalue(from, err);
  lua_rawseti(from, -2, 1);
  lua_pushinteger(from, 1);
  lua_setfield(from, -2, "n");
  lua_pushboolean(from, 0);
  lua_setfield(from, -2, "ok");
  lua_setiuservalue(from, ud, 1);
  mark_dead(rt, from, t, live);
  if (t->flags & LOOM_T_WATCHED)
    call_on_done(rt, from, ud, 0, err, 1);
  if (t->joiners && t->joiners->count > 0)
    wake_joiners(rt, from, t, 0, err, 1);
  else if (!(t->flags & (LOOM_T_KILLED | LOOM_T_WATCHED))) {
    loom__push_label(from, rt, t);
    lua_pushfstring(from, "error in %s", lua_tostring(from, -1));
    loom__report(rt, from, err, lua_tostring(from, -1), NULL);
  }
  free(t->joiners);
  t->joiners = NULL;
  lua_settop(from, live - 1);
}

/* ------------------------------------------------------------ the resume site */

void loom__resume(loom_runtime *rt, lua_State *from, loom_tasklet *t) {
  lua_State *co;
  loom_tasklet *prev;
  int nargs, nres, rc;
  if (t->status == LOOM_DEAD)
    return;
  if (!(t->flags & LOOM_T_STARTED)) {
    if (t->flags & LOOM_T_PENDING) {
      finish_unstarted(rt, from, t);
      return;
    }
    if (!start(rt, from, t)) {
      lua_pushliteral(from, "not enough memory to start a tasklet");
      t->pending_ref = luaL_ref(from, LUA_REGISTRYINDEX);
      t->flags |= LOOM_T_PENDING;
      finish_unstarted(rt, from, t);
      return;
    }
  }
  co = t->L;
  nargs = t->nresume;
  t->nresume = 0;
  t->nresume_k = 0;
  t->flags &= ~LOOM_T_HANDED;
  if (!(t->flags & LOOM_T_RAISE))
    t->undo = LOOM_UNDO_NONE;
  prev = rt->current;
  rt->current = t;
  t->status = LOOM_RUNNING;
  rt->switches++;
  rt->resume_n = nargs;
  if (rt->hooked || lua_gethook(co))
    loom__preempt_setup(rt, co);
  if (rt->hooked) {
    rt->run_start = uv_hrtime();
    if (!(t->flags & LOOM_T_PREEMPTED))
      rt->burst_start = rt->run_start;
  }
  t->flags &= ~LOOM_T_PREEMPTED;
  rc = lua_resume(co, from, nargs, &nres);
  rt->current = prev;
  if (rc == LUA_YIELD) {
    lua_pop(co, nres);
    if (t->status == LOOM_RUNNING) {
      /* Not a wait: a preemption by the count hook, or a plain
       * coroutine.yield() at the tasklet's top level. Both requeue. */
      t->flags |= LOOM_T_PREEMPTED;
      loom__ready(rt, t);
    } else
      t->nresume_k = 1;
    return;
  }
  finish(rt, from, t, rc, nres);
}

/* ------------------------------------------------------------ drive */

static int loop_alive(loom_runtime *rt) {
  return rt->nheap > 0 || uv_loop_alive(rt->loop);
}

static void arm_heap_timer(loom_runtime *rt) {
  uint64_t ns = loom__timers_next(rt);
  if (ns == UINT64_MAX) {
    uv_timer_stop(&rt->heap_timer);
    return;
  }
  uv_update_time(rt->loop);
  uv_timer_start(&rt->heap_timer, loom__heap_timer_cb, (ns + 999999) / 1000000, 0);
}

int loom__drive(loom_runtime *rt, lua_State *L, loom_tasklet *until, int once) {
  int rc = LOOM_OK;
  unsigned polls = 0;
  rt->driving++;
  for (;;) {
    int batch;
    if (until && until->status != LOOM_BLOCKED)
      break;
    if (rt->stop || rt->interrupted) {
      rt->stop = 0;
      rc = LOOM_STOPPED;
      break;
    }
    /* Run what is ready, then look at timers and I/O: at most 256
     * resumes between two polls, so I/O is never starved. */
    for (batch = 0; batch < 256 && rt->ready_head; batch++) {
      loom_tasklet *t = pop_ready(rt);
      loom__resume(rt, L, t);
      if (until && until->status != LOOM_BLOCKED)
        break;
      /* A preempted tasklet used a whole slice: look at timers and I/O now
       * rather than after 256 more slices. */
      if ((t->flags & LOOM_T_PREEMPTED) || rt->stop || rt->interrupted)
        break;
    }
    if (rt->nheap)
      loom__timers_run(rt);
    if (until && until->status != LOOM_BLOCKED)
      break;
    if (rt->ready_head) {
      if ((++polls & 3) == 0)
        uv_run(rt->loop, UV_RUN_NOWAIT);
      continue;
    }
    if (once)
      break;
    if (rt->stop || rt->interrupted)
      continue; /* a tasklet asked to stop: do not block in the loop first */
    if (!loop_alive(rt)) {
      if (until || rt->nblocked > 0)
        rc = LOOM_DEADLOCK;
      break;
    }
    arm_heap_timer(rt);
    /* The heap timer is unreferenced so it never keeps a finished program
     * alive; while tasklets sleep it must count, or uv_run(ONCE) would see
     * a dead loop and return without polling (a busy loop that also never
     * reads the signal and async descriptors). */
    if (rt->nheap)
      uv_ref((uv_handle_t *)&rt->heap_timer);
    uv_run(rt->loop, UV_RUN_ONCE);
    uv_unref((uv_handle_t *)&rt->heap_timer);
    if (rt->nheap)
      loom__timers_run(rt);
  }
  rt->driving--;
  return rc;
}

/* ------------------------------------------------------------ deadlock */

void loom__push_deadlock(lua_State *L, loom_runtime *rt) {
  luaL_Buffer B;
  int i, n = 0;
  luaL_checkstack(L, 8, NULL);
  luaL_buffinit(L, &B);
  luaL_addstring(&B, "all tasklets are asleep:");
  if (rt->main.status == LOOM_BLOCKED || rt->main.block) {
    luaL_addstring(&B, "\n  main thread waits on ");
    luaL_addstring(&B, rt->main.block ? rt->main.block->what : "?");
  }
  push_live(L, rt);
  for (i = 1; i < rt->next_slot; i++) {
    loom_tasklet *t;
    if (lua_rawgeti(L, -1, i) != LUA_TUSERDATA) {
      lua_pop(L, 1);
      continue;
    }
    t = lua_touserdata(L, -1);
    lua_pop(L, 1);
    if (t->status != LOOM_BLOCKED)
      continue;
    lua_pop(L, 1); /* the live table, under the buffer's use of the stack */
    luaL_addstring(&B, "\n  ");
    loom__push_label(L, rt, t);
    luaL_addvalue(&B);
    luaL_addstring(&B, " waits on ");
    luaL_addstring(&B, t->block ? t->block->what : "?");
    if (t->L) {
      lua_Debug ar;
      int level;
      for (level = 0; lua_getstack(t->L, level, &ar); level++) {
        lua_getinfo(t->L, "Sl", &ar);
        if (ar.currentline > 0) {
          lua_pushfstring(L, " at %s:%d", ar.short_src, ar.currentline);
          luaL_addvalue(&B);
          break;
        }
      }
    }
    n++;
    push_live(L, rt);
  }
  lua_pop(L, 1);
  luaL_pushresult(&B);
  (void)n;
  {
    const char *msg = lua_tostring(L, -1);
    loom__error_new(L, rt, LOOM_E_DEADLOCK, msg, 1);
    lua_remove(L, -2);
  }
}

/* Kills every tasklet still alive and lets them unwind. */
void loom__kill_all(loom_runtime *rt, lua_State *L) {
  int i, rounds;
  for (rounds = 0; rounds < 8 && rt->nlive > 0; rounds++) {
    push_live(L, rt);
    for (i = 1; i < rt->next_slot; i++) {
      loom_tasklet *t;
      if (lua_rawgeti(L, -1, i) != LUA_TUSERDATA) {
        lua_pop(L, 1);
        continue;
      }
      t = lua_touserdata(L, -1);
      lua_pop(L, 1);
      if (t->status == LOOM_DEAD || t->status == LOOM_RUNNING)
        continue;
      t->flags |= LOOM_T_KILLED;
      loom__error_new(L, rt, LOOM_E_TASKLETEXIT, "killed: the runtime is shutting down", 0);
      loom__raise_in(rt, L, t);
    }
    lua_pop(L, 1);
    /* Run them until they have unwound (they may not block any more). */
    {
      int guard = 0;
      while (rt->ready_head && guard++ < 1000000)
        loom__resume(rt, L, pop_ready(rt));
    }
  }
}

int loom__step(loom_runtime *rt, lua_State *L, uint64_t deadline) {
  rt->driving++;
  while (rt->ready_head && !rt->stop && !rt->interrupted) {
    loom__resume(rt, L, pop_ready(rt));
    if (uv_hrtime() >= deadline)
      break;
  }
  if (rt->nheap)
    loom__timers_run(rt);
  uv_run(rt->loop, UV_RUN_NOWAIT);
  if (rt->nheap)
    loom__timers_run(rt);
  rt->driving--;
  return rt->ready_head != NULL || loop_alive(rt);
}

void loom__block_abort(loom_runtime *rt, loom_block *b) {
  loom_tasklet *t = b->t;
  block_detach(rt, b);
  if (t->block == b)
    t->block = NULL;
  block_release(rt, b);
}
