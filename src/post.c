/*
 * post.c - loom_post and loom_post_message: work for a runtime from any
 * thread. A lock-free MPSC queue (Vyukov's intrusive queue) and one
 * uv_async: producers never lock, the runtime's thread runs the posts made
 * before each wakeup exactly once, in order per producer.
 */
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "host.h"

static void q_push(host_state *q, post_node *n) {
  post_node *prev;
  atomic_store_explicit(&n->next, NULL, memory_order_relaxed);
  prev = atomic_exchange_explicit(&q->head, n, memory_order_acq_rel);
  /* seq_cst: the link must be visible before this thread reads the async
   * handle's pending flag in uv_async_send (a store-load order). */
  atomic_store_explicit(&prev->next, n, memory_order_seq_cst);
}

/* NULL when empty, or when a producer is between its exchange and its
 * link: that producer's own uv_async_send follows and brings us back. */
static post_node *q_pop(host_state *q) {
  post_node *tail = q->tail;
  post_node *next = atomic_load_explicit(&tail->next, memory_order_acquire);
  if (tail == &q->stub) {
    if (!next)
      return NULL;
    q->tail = tail = next;
    next = atomic_load_explicit(&next->next, memory_order_acquire);
  }
  if (next) {
    q->tail = next;
    return tail;
  }
  if (tail != atomic_load_explicit(&q->head, memory_order_acquire))
    return NULL;
  q_push(q, &q->stub);
  next = atomic_load_explicit(&tail->next, memory_order_acquire);
  if (next) {
    q->tail = next;
    return tail;
  }
  return NULL;
}

int loom__posts_empty(host_state *q) {
  return q->tail == &q->stub && atomic_load_explicit(&q->head, memory_order_acquire) == &q->stub;
}

/* Runs the current batch (on_async); each node is popped before its
 * function runs, so a function that raises has still run exactly once. */
static int run_batch(lua_State *L) {
  host_state *q = lua_touserdata(L, 1);
  unsigned n = 0;
  while (!q->batch_done) {
    post_node *p = q_pop(q);
    loom_post_fn fn;
    void *ud;
    if (!p) {
      q->batch_done = 1;
      q->batch_more = !loom__posts_empty(q);
      break;
    }
    if (p == q->batch_last)
      q->batch_done = 1;
    fn = p->fn;
    ud = p->ud;
    free(p);
    fn(q->rt, ud);
    if (!q->batch_done && (++n & 31) == 0 && q->step_deadline && uv_hrtime() >= q->step_deadline) {
      q->batch_done = 1;
      q->batch_more = 1; /* the rest runs at the next poll */
    }
  }
  return 0;
}

/* The async callback: the posts made before it started (later ones come
 * with their own wakeup), in protected mode on the main thread. */
static void on_async(uv_async_t *a) {
  host_state *q = a->data;
  loom_runtime *rt = q->rt;
  lua_State *L = rt->L;
  if (rt->closing || atomic_load_explicit(&q->closed, memory_order_relaxed) || loom__posts_empty(q))
    return;
  if (!lua_checkstack(L, 3)) {
    uv_async_send(a);
    return;
  }
  q->batch_last = atomic_load_explicit(&q->head, memory_order_acquire);
  q->batch_done = q->batch_more = 0;
  q->in_posts++;
  while (!q->batch_done) {
    lua_pushcfunction(L, run_batch);
    lua_pushlightuserdata(L, q);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
      loom__report(rt, L, -1, "error in a posted function", NULL);
      lua_pop(L, 1);
    }
  }
  q->in_posts--;
  if (q->batch_more)
    uv_async_send(a);
}

void loom__posts_init(loom_runtime *rt) {
  host_state *q = calloc(1, sizeof *q);
  if (!q)
    return;
  atomic_init(&q->stub.next, NULL);
  atomic_init(&q->head, &q->stub);
  q->tail = &q->stub;
  atomic_init(&q->closed, 0);
  atomic_init(&q->driver, uv_thread_self());
  q->rt = rt;
  if (uv_async_init(rt->loop, &q->async, on_async) != 0) {
    free(q);
    return;
  }
  q->async.data = q;
  uv_unref((uv_handle_t *)&q->async);
  rt->internal_handles++;
  rt->posts = q;
}

static void free_posts(uv_handle_t *h) {
  host_state *q = h->data;
  free(q);
}

/* Shutdown: refuse new posts, drop the queued ones (dropped() runs), close
 * the async. The rule that no thread posts once loom_close has begun means
 * nobody can be between its exchange and its link here; spin if one is. */
void loom__posts_close(loom_runtime *rt) {
  host_state *q = rt->posts;
  post_node *p;
  if (!q)
    return;
  atomic_store(&q->closed, 1);
  while (!loom__posts_empty(q)) {
    if ((p = q_pop(q)) == NULL) {
      sched_yield();
      continue;
    }
    if (p->dropped)
      p->dropped(rt, p->ud);
    free(p);
  }
  rt->posts = NULL;
  rt->internal_handles--;
  uv_close((uv_handle_t *)&q->async, free_posts);
}

int loom_post(loom_runtime *rt, loom_post_fn fn, loom_post_fn dropped, void *ud) {
  host_state *q;
  post_node *p;
  if (!rt || !fn || !(q = rt->posts) || atomic_load_explicit(&q->closed, memory_order_relaxed))
    return LOOM_EINVAL;
  p = malloc(sizeof *p);
  if (!p)
    return LOOM_ENOMEM;
  p->fn = fn;
  p->dropped = dropped;
  p->ud = ud;
  q_push(q, p);
  uv_async_send(&q->async);
  return LOOM_OK;
}

/* A message: the handler's name and the bytes, in one allocation. */
typedef struct message {
  size_t len;
  const char *handler;
  char bytes[];
} message;

static int deliver_protected(lua_State *L) {
  message *m = lua_touserdata(L, 1);
  loom_runtime *rt = loom__runtime(L);
  if (lua_getglobal(L, m->handler) != LUA_TFUNCTION)
    return luaL_error(L, "message for '%s': no such global function", m->handler);
  lua_pushlstring(L, m->bytes, m->len);
  loom__ready(rt, loom__spawn(L, rt, 1, 0));
  return 0;
}

static void deliver_message(loom_runtime *rt, void *ud) {
  lua_State *L = rt->L;
  lua_pushcfunction(L, deliver_protected);
  lua_pushlightuserdata(L, ud);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    loom__report(rt, L, -1, "loom_post_message", NULL);
    lua_pop(L, 1);
  }
  free(ud);
}

static void drop_message(loom_runtime *rt, void *ud) {
  (void)rt;
  free(ud);
}

int loom_post_message(loom_runtime *rt, const char *handler, const void *data, size_t len) {
  message *m;
  size_t hlen;
  int rc;
  if (!rt || !handler || (!data && len > 0))
    return LOOM_EINVAL;
  hlen = strlen(handler);
  if (len > SIZE_MAX - sizeof *m - hlen - 1)
    return LOOM_ENOMEM;
  m = malloc(sizeof *m + len + hlen + 1);
  if (!m)
    return LOOM_ENOMEM;
  m->len = len;
  if (len)
    memcpy(m->bytes, data, len);
  memcpy(m->bytes + len, handler, hlen + 1);
  m->handler = m->bytes + len;
  rc = loom_post(rt, deliver_message, drop_message, m);
  if (rc != LOOM_OK)
    free(m);
  return rc;
}
