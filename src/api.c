/*
 * api.c - the public C API of include/loom.h: creating and closing a
 * runtime for a host, driving it (loom_run, loom_step), posting work from
 * other threads, interrupting, and C functions that block a tasklet.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <lualib.h>

#include "loom_int.h"

/* ------------------------------------------------------------ memory limit */

typedef struct limit_alloc {
  size_t used, limit;
} limit_alloc;

static void *limited_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  limit_alloc *a = ud;
  size_t old = ptr ? osize : 0;
  if (nsize == 0) {
    free(ptr);
    a->used -= old;
    return NULL;
  }
  if (nsize > old && a->limit && a->used - old + nsize > a->limit)
    return NULL; /* Lua raises "not enough memory" in the allocating tasklet */
  ptr = realloc(ptr, nsize);
  if (ptr)
    a->used = a->used - old + nsize;
  return ptr;
}

/* ------------------------------------------------------------ sandbox */

LOOM_HIDDEN void loom__sandbox(lua_State *L);

/* ------------------------------------------------------------ create / close */

void loom_options_init(loom_options *o) {
  memset(o, 0, sizeof *o);
  o->open_libs = 1;
}

static int open_runtime(lua_State *L) {
  loom_runtime *rt;
  uv_loop_t *loop = lua_touserdata(L, 1);
  rt = loom__runtime_create(L, loop);
  lua_pushlightuserdata(L, rt);
  return 1;
}

static int require_loom(lua_State *L) {
  luaL_requiref(L, "loom", luaopen_loom, 0);
  return 1;
}

loom_runtime *loom_new(const loom_options *o) {
  loom_options def;
  lua_State *L;
  loom_runtime *rt;
  limit_alloc *la = NULL;
  if (!o) {
    loom_options_init(&def);
    o = &def;
  }
  if (o->slice < 0 || o->cpu_limit < 0 || isnan(o->slice) || isnan(o->cpu_limit))
    return NULL;
  if (o->L) {
    if (o->memory_limit)
      return NULL; /* a given state has its own allocator */
    L = o->L;
  } else {
    la = calloc(1, sizeof *la);
    if (!la)
      return NULL;
    la->limit = o->memory_limit;
    L = lua_newstate(limited_alloc, la);
    if (!L) {
      free(la);
      return NULL;
    }
    if (o->open_libs)
      luaL_openlibs(L);
  }
  lua_pushcfunction(L, open_runtime);
  lua_pushlightuserdata(L, o->loop);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
    lua_pop(L, 1);
    if (!o->L)
      lua_close(L);
    free(la);
    return NULL;
  }
  rt = lua_touserdata(L, -1);
  lua_pop(L, 1);
  rt->owned_by_host = 1;
  rt->owns_state = o->L == NULL;
  rt->alloc_ud = la;
  rt->slice = o->slice;
  rt->cpu_limit = o->cpu_limit;
  rt->hooked = rt->slice > 0 || rt->cpu_limit > 0;
  rt->sandbox = o->sandbox;
  lua_pushcfunction(L, require_loom);
  if (lua_pcall(L, 0, 1, 0) != LUA_OK) {
    lua_pop(L, 1);
    loom_close(rt);
    return NULL;
  }
  lua_setglobal(L, "loom");
  if (o->sandbox)
    loom__sandbox(L);
  return rt;
}

lua_State *loom_state(loom_runtime *rt) { return rt && !rt->state_closed ? rt->L : NULL; }
uv_loop_t *loom_loop(loom_runtime *rt) { return rt ? rt->loop : NULL; }
loom_runtime *loom_from_state(lua_State *L) { return L ? loom__runtime(L) : NULL; }

void loom_close(loom_runtime *rt) {
  void *la;
  if (!rt || !rt->owned_by_host)
    return;
  la = rt->alloc_ud;
  if (!rt->state_closed) {
    loom__runtime_shutdown(rt);
    if (rt->owns_state) {
      rt->owned_by_host = 1;
      lua_close(rt->L); /* the sentinel sees a closed runtime */
    } else {
      rt->state_closed = 1;
      return; /* the state's sentinel frees rt when the host closes it */
    }
  }
  free(la);
  free(rt);
}

/* ------------------------------------------------------------ spawn */

static int usable(loom_runtime *rt) { return rt && !rt->state_closed && !rt->closing; }

static int spawn_top(lua_State *L) {
  loom_runtime *rt = lua_touserdata(L, lua_upvalueindex(1));
  loom_tasklet *t = loom__spawn(L, rt, lua_gettop(L) - 1, 0);
  loom__ready(rt, t);
  lua_pushinteger(L, (lua_Integer)t->id);
  return 1;
}

long long loom_spawn(loom_runtime *rt, int nargs) {
  lua_State *L;
  long long id;
  if (!usable(rt) || nargs < 0)
    return LOOM_EINVAL;
  L = rt->L;
  if (lua_gettop(L) < nargs + 1 || !lua_isfunction(L, -(nargs + 1)))
    return LOOM_EINVAL;
  lua_pushlightuserdata(L, rt);
  lua_pushcclosure(L, spawn_top, 1);
  lua_insert(L, -(nargs + 2));
  if (lua_pcall(L, nargs + 1, 1, 0) != LUA_OK)
    return LOOM_ERROR;
  id = (long long)lua_tointeger(L, -1);
  lua_pop(L, 1);
  return id;
}

long long loom_spawn_file(loom_runtime *rt, const char *path, int nargs) {
  if (!usable(rt) || nargs < 0 || lua_gettop(rt->L) < nargs)
    return LOOM_EINVAL;
  if (luaL_loadfilex(rt->L, path, rt->sandbox ? "t" : NULL) != LUA_OK) {
    lua_insert(rt->L, -(nargs + 1));
    lua_pop(rt->L, nargs);
    return LOOM_ERROR;
  }
  lua_insert(rt->L, -(nargs + 1));
  return loom_spawn(rt, nargs);
}

long long loom_spawn_string(loom_runtime *rt, const char *code, const char *chunkname, int nargs) {
  if (!usable(rt) || !code || nargs < 0 || lua_gettop(rt->L) < nargs)
    return LOOM_EINVAL;
  if (luaL_loadbufferx(rt->L, code, strlen(code), chunkname ? chunkname : code,
                       rt->sandbox ? "t" : NULL) != LUA_OK) {
    lua_insert(rt->L, -(nargs + 1));
    lua_pop(rt->L, nargs);
    return LOOM_ERROR;
  }
  lua_insert(rt->L, -(nargs + 1));
  return loom_spawn(rt, nargs);
}

/* ------------------------------------------------------------ drive */

static int run_protected(lua_State *L) {
  loom_runtime *rt = lua_touserdata(L, 1);
  int rc = loom__drive(rt, L, NULL, 0);
  if (rc == LOOM_DEADLOCK) {
    loom__push_deadlock(L, rt);
    loom__report(rt, L, -1, "deadlock", NULL);
    loom__kill_all(rt, L);
  }
  lua_pushinteger(L, rc);
  return 1;
}

int loom_run(loom_runtime *rt) {
  int rc;
  if (!usable(rt) || rt->driving)
    return LOOM_EINVAL;
  lua_pushcfunction(rt->L, run_protected);
  lua_pushlightuserdata(rt->L, rt);
  if (lua_pcall(rt->L, 1, 1, 0) != LUA_OK)
    return LOOM_ERROR;
  rc = (int)lua_tointeger(rt->L, -1);
  lua_pop(rt->L, 1);
  rt->interrupted = 0;
  return rc;
}

static int step_protected(lua_State *L) {
  loom_runtime *rt = lua_touserdata(L, 1);
  uint64_t deadline = (uint64_t)lua_tointeger(L, 2);
  lua_pushboolean(L, loom__step(rt, L, deadline));
  return 1;
}

int loom_step(loom_runtime *rt, double budget) {
  int more, saved_hooked;
  double saved_slice;
  if (!usable(rt) || rt->driving || !(budget >= 0))
    return LOOM_EINVAL;
  /* A tick must end in time even if a script spins: make sure tasklets are
   * preempted well within the budget. */
  saved_slice = rt->slice;
  saved_hooked = rt->hooked;
  if (rt->slice == 0 || rt->slice > budget / 4) {
    rt->slice = budget / 4 > 0.0001 ? budget / 4 : 0.0001;
    rt->hooked = 1;
  }
  lua_pushcfunction(rt->L, step_protected);
  lua_pushlightuserdata(rt->L, rt);
  lua_pushinteger(rt->L, (lua_Integer)(uv_hrtime() + (uint64_t)(budget * LOOM_NS_PER_S)));
  if (lua_pcall(rt->L, 2, 1, 0) != LUA_OK) {
    rt->slice = saved_slice;
    rt->hooked = saved_hooked;
    return LOOM_ERROR;
  }
  more = lua_toboolean(rt->L, -1);
  lua_pop(rt->L, 1);
  rt->slice = saved_slice;
  rt->hooked = saved_hooked;
  if (rt->interrupted) {
    rt->interrupted = 0;
    return LOOM_STOPPED;
  }
  return more ? LOOM_AGAIN : LOOM_OK;
}

double loom_next_timeout(loom_runtime *rt) {
  uint64_t ns;
  if (!usable(rt))
    return -1;
  if (rt->ready_head)
    return 0;
  ns = loom__timers_next(rt);
  if (ns == UINT64_MAX)
    return -1;
  return (double)ns / LOOM_NS_PER_S;
}

/* ------------------------------------------------------------ posts */

typedef struct post {
  struct post *next;
  loom_post_fn fn, dropped;
  void *ud;
} post;

struct loom_post_queue {
  uv_mutex_t lock;
  uv_async_t async;
  post *head, *tail;
  int closed;
};

static void run_posts(uv_async_t *a) {
  loom_runtime *rt = a->data;
  struct loom_post_queue *q = rt->posts;
  post *p;
  uv_mutex_lock(&q->lock);
  p = q->head;
  q->head = q->tail = NULL;
  uv_mutex_unlock(&q->lock);
  while (p) {
    post *next = p->next;
    p->fn(rt, p->ud);
    free(p);
    p = next;
  }
}

void loom__posts_init(loom_runtime *rt) {
  struct loom_post_queue *q = calloc(1, sizeof *q);
  if (!q)
    return;
  if (uv_mutex_init(&q->lock) != 0) {
    free(q);
    return;
  }
  uv_async_init(rt->loop, &q->async, run_posts);
  q->async.data = rt;
  uv_unref((uv_handle_t *)&q->async);
  rt->posts = q;
}

static void free_posts(uv_handle_t *h) {
  struct loom_post_queue *q = (struct loom_post_queue *)((char *)h - offsetof(struct loom_post_queue, async));
  uv_mutex_destroy(&q->lock);
  free(q);
}

void loom__posts_close(loom_runtime *rt) {
  struct loom_post_queue *q = rt->posts;
  post *p;
  if (!q)
    return;
  uv_mutex_lock(&q->lock);
  q->closed = 1;
  p = q->head;
  q->head = q->tail = NULL;
  uv_mutex_unlock(&q->lock);
  while (p) {
    post *next = p->next;
    if (p->dropped)
      p->dropped(rt, p->ud);
    free(p);
    p = next;
  }
  rt->posts = NULL;
  uv_close((uv_handle_t *)&q->async, free_posts);
}

int loom_post(loom_runtime *rt, loom_post_fn fn, loom_post_fn dropped, void *ud) {
  struct loom_post_queue *q;
  post *p;
  if (!rt || !fn || !(q = rt->posts))
    return LOOM_EINVAL;
  p = malloc(sizeof *p);
  if (!p)
    return LOOM_ENOMEM;
  p->next = NULL;
  p->fn = fn;
  p->dropped = dropped;
  p->ud = ud;
  uv_mutex_lock(&q->lock);
  if (q->closed) {
    uv_mutex_unlock(&q->lock);
    free(p);
    return LOOM_EINVAL;
  }
  if (q->tail)
    q->tail->next = p;
  else
    q->head = p;
  q->tail = p;
  uv_mutex_unlock(&q->lock);
  uv_async_send(&q->async);
  return LOOM_OK;
}

/* ------------------------------------------------------------ control */

void loom_interrupt(loom_runtime *rt) {
  loom_tasklet *t;
  if (!rt)
    return;
  rt->interrupted = 1;
  t = rt->current;
  /* lua.c does the same from its SIGINT handler: the hook stops a spin. */
  if (t && t->L)
    lua_sethook(t->L, loom__interrupt_hook, LUA_MASKCOUNT, 1);
  if (rt->posts)
    uv_async_send(&rt->posts->async);
}

void loom_set_error_handler(loom_runtime *rt, loom_error_fn fn, void *ud) {
  if (!rt)
    return;
  rt->host_error = fn;
  rt->host_error_ud = ud;
}

int loom_error_count(loom_runtime *rt) { return rt ? rt->unhandled : 0; }

/* ------------------------------------------------------------ pending C calls */

struct loom_pending {
  loom_runtime *rt;
  loom_block *b; /* NULL once cancelled (kill, timeout, close) */
};

static void pending_cancel(loom_runtime *rt, loom_block *b, int why) {
  loom_pending *p = b->data;
  (void)rt;
  (void)why;
  p->b = NULL;
}

loom_pending *loom_pending_new(lua_State *L, const char *what) {
  loom_runtime *rt = loom__runtime(L);
  loom_pending *p;
  if (!rt)
    luaL_error(L, "loom is not loaded in this state");
  loom__check_block(L, rt);
  p = malloc(sizeof *p);
  if (!p)
    luaL_error(L, "not enough memory");
  p->rt = rt;
  p->b = loom__block_new(rt, L, what ? what : "host call");
  p->b->data = p;
  p->b->cancel = pending_cancel;
  return p;
}

int loom_pending_wait(lua_State *L, loom_pending *p, double timeout) {
  loom__block_timeout(p->rt, p->b, timeout);
  return loom__suspend(L, p->rt, p->b);
}

lua_State *loom_pending_state(loom_pending *p) {
  if (!p || !p->b)
    return NULL;
  return loom__wake_stack(p->rt, p->b->t, LUA_MINSTACK);
}

void loom_pending_complete(loom_pending *p, int nresults) {
  if (!p)
    return;
  if (p->b) {
    loom_block *b = p->b;
    b->cancel = NULL;
    loom__wake(p->rt, b, nresults, LOOM_WOKE_DONE);
  }
  free(p);
}
