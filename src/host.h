/*
 * host.h - the host side of a runtime, shared by api.c (create, drive,
 * close, the guard), post.c (posts from any thread) and pending.c (C calls
 * that block a tasklet): struct loom_post_queue, which loom_int.h keeps as
 * the opaque rt->posts. Internal: nothing here is exported.
 */
#ifndef LOOM_HOST_H
#define LOOM_HOST_H

#include <stdatomic.h>
#include <stdint.h>

#include "loom_int.h"

/* A posted call. Nodes go through a Vyukov intrusive MPSC queue: a
 * producer makes one atomic exchange, the runtime's thread pops without
 * atomics read-modify-writes, and nothing is ever locked. */
typedef struct post_node {
  _Atomic(struct post_node *) next;
  loom_post_fn fn, dropped;
  void *ud;
} post_node;

struct loom_post_queue {
  _Atomic(post_node *) head; /* the last node pushed (producers) */
  char pad[64];              /* keeps the producers' line away from the rest */
  post_node *tail;           /* the next node to pop (runtime's thread) */
  post_node stub;
  atomic_int closed;           /* loom_close began: posts are refused */
  _Atomic(uv_thread_t) driver; /* the thread that last drove the runtime */
  uv_async_t async;
  loom_runtime *rt;
  /* the batch of posts being run (on_async) */
  post_node *batch_last;
  int batch_done, batch_more;
  int in_posts; /* > 0 while posted functions run */
  int nwaiting; /* pendings waiting: they keep the loop alive */
  /* the step in progress: hrtime deadlines, 0 outside loom_step */
  uint64_t step_deadline;
  uint64_t guard_at;   /* code that cannot be preempted stops after this... */
  uint64_t guard_cpu0; /* ...and once this thread has used guard_cpu ns of CPU */
  uint64_t guard_cpu;  /* since guard_cpu0 (time the OS gave to others does not count) */
  int sandbox;         /* loom_options.sandbox */
  int closing;         /* loom_close is running */
  int close_expired;   /* ...and its time for unwinding is up */
};

typedef struct loom_post_queue host_state;

/* post.c: 1 when no post waits (the runtime's thread only). */
LOOM_HIDDEN int loom__posts_empty(host_state *q);

/* api.c: the guard hook for code the count hook cannot preempt, in its
 * strict form (set around a guarded C call, sandbox.c). */
LOOM_HIDDEN void loom__guard_hook_strict(lua_State *L, lua_Debug *ar);

/* sandbox.c: applies loom_options.sandbox (LOOM_SANDBOX bits) to L. */
LOOM_HIDDEN void loom__sandbox(lua_State *L, int flags);

#endif
