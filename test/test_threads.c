/*
 * test_threads.c - the threading rules of include/loom.h, also run under
 * ThreadSanitizer: posts from several threads into one runtime (each runs
 * exactly once and in order per thread, also when wakeups coalesce),
 * messages from threads, interrupts from another thread, and several
 * runtimes running on several threads at once.
 */
#include <stdatomic.h>
#include <unistd.h>

#include "harness.h"

#define NTHREADS 4

/* ------------------------------------------------------------ posts */

typedef struct producer {
  uv_thread_t thread;
  loom_runtime *rt;
  int index, count;
  long next_expected; /* checked on the runtime's thread */
  long received, out_of_order;
  atomic_int failed;
} producer;

static atomic_int go;

static producer *producers;

static void count_post(loom_runtime *rt, void *ud) {
  uintptr_t v = (uintptr_t)ud;
  producer *p = &producers[v & 7];
  long seq = (long)(v >> 3);
  (void)rt;
  if (seq != p->next_expected)
    p->out_of_order++;
  p->next_expected = seq + 1;
  p->received++;
}

static void produce(void *arg) {
  producer *p = arg;
  long i;
  while (!atomic_load(&go))
    ;
  for (i = 0; i < p->count; i++) {
    uintptr_t v = ((uintptr_t)i << 3) | (uintptr_t)p->index;
    if (loom_post(p->rt, count_post, NULL, (void *)v) != LOOM_OK)
      atomic_store(&p->failed, 1);
  }
}

static long total_received(producer *ps) {
  long n = 0;
  int i;
  for (i = 0; i < NTHREADS; i++)
    n += ps[i].received;
  return n;
}

/* Drives rt with steps until all posts arrived or a timeout. */
static void drive_posts(loom_runtime *rt, producer *ps, long want, double seconds) {
  double end = now_s() + seconds;
  while (total_received(ps) < want && now_s() < end)
    loom_step(rt, 0.001);
}

TEST(posts_from_4_threads_exactly_once) {
  producer ps[NTHREADS];
  loom_runtime *rt = loom_new(NULL);
  const int per = 100000;
  int i;
  memset(ps, 0, sizeof ps);
  producers = ps;
  atomic_store(&go, 0);
  for (i = 0; i < NTHREADS; i++) {
    ps[i].rt = rt;
    ps[i].index = i;
    ps[i].count = per;
    uv_thread_create(&ps[i].thread, produce, &ps[i]);
  }
  atomic_store(&go, 1);
  drive_posts(rt, ps, (long)per * NTHREADS, 60);
  for (i = 0; i < NTHREADS; i++)
    uv_thread_join(&ps[i].thread);
  drive_posts(rt, ps, (long)per * NTHREADS, 10);
  /* nothing more may arrive: a few more steps must not run anything twice */
  for (i = 0; i < 10; i++)
    loom_step(rt, 0.001);
  for (i = 0; i < NTHREADS; i++) {
    CHECKF(ps[i].received == per, "producer %d: %ld of %d", i, ps[i].received, per);
    CHECK(ps[i].out_of_order == 0 && !atomic_load(&ps[i].failed));
  }
  CHECK(loom_next_timeout(rt) == -1);
  CHECK(loom_close(rt) == LOOM_OK);
}

/* The consumer runs loom_run-style blocking drives: a long sleeping tasklet
 * keeps the loop alive, posts wake uv_run. */
TEST(posts_while_loop_blocks) {
  producer ps[NTHREADS];
  loom_runtime *rt = loom_new(NULL);
  const int per = 20000;
  int i;
  memset(ps, 0, sizeof ps);
  producers = ps;
  atomic_store(&go, 0);
  CHECK(spawn_code(rt, "loom.sleep(3600)") > 0);
  for (i = 0; i < NTHREADS; i++) {
    ps[i].rt = rt;
    ps[i].index = i;
    ps[i].count = per;
    uv_thread_create(&ps[i].thread, produce, &ps[i]);
  }
  atomic_store(&go, 1);
  {
    double end = now_s() + 60;
    while (total_received(ps) < (long)per * NTHREADS && now_s() < end) {
      double t = loom_next_timeout(rt);
      if (t != 0)
        uv_run(loom_loop(rt), UV_RUN_ONCE); /* the host sleeps in the loop */
      loom_step(rt, 0.001);
    }
  }
  for (i = 0; i < NTHREADS; i++)
    uv_thread_join(&ps[i].thread);
  for (i = 0; i < NTHREADS; i++)
    CHECK(ps[i].received == per && ps[i].out_of_order == 0);
  CHECK(loom_close(rt) == LOOM_OK);
}

/* ------------------------------------------------------------ messages */

typedef struct sender {
  uv_thread_t thread;
  loom_runtime *rt;
  int n;
} sender;

static void send_messages(void *arg) {
  sender *s = arg;
  int i;
  char buf[32];
  for (i = 0; i < s->n; i++) {
    int len = snprintf(buf, sizeof buf, "%d", i);
    if (loom_post_message(s->rt, "on_message", buf, (size_t)len) != LOOM_OK)
      abort();
  }
}

TEST(messages_from_threads) {
  errors e;
  loom_runtime *rt = new_runtime(NULL, &e);
  sender s[2];
  int i;
  double end;
  CHECK(run_chunk(rt, "received, sum = 0, 0\n"
                      "function on_message(m) loom.yield(); received = received + 1;"
                      " sum = sum + tonumber(m) end") == LUA_OK);
  for (i = 0; i < 2; i++) {
    s[i].rt = rt;
    s[i].n = 5000;
    uv_thread_create(&s[i].thread, send_messages, &s[i]);
  }
  end = now_s() + 30;
  while (global_int(rt, "received") < 10000 && now_s() < end)
    loom_step(rt, 0.002);
  for (i = 0; i < 2; i++)
    uv_thread_join(&s[i].thread);
  CHECK(global_int(rt, "received") == 10000);
  CHECK(global_int(rt, "sum") == 2L * (4999L * 5000 / 2));
  CHECK(e.n == 0);
  CHECK(loom_close(rt) == LOOM_OK);
}

/* ------------------------------------------------------------ interrupts */

typedef struct interrupter {
  uv_thread_t thread;
  loom_runtime *rt;
  atomic_int stop, sent;
} interrupter;

static void interrupt_loop(void *arg) {
  interrupter *it = arg;
  while (!atomic_load(&it->stop)) {
    usleep(2000);
    if (loom_interrupt(it->rt) == LOOM_OK)
      atomic_fetch_add(&it->sent, 1);
  }
}

TEST(interrupt_from_thread_step) {
  loom_runtime *rt = loom_new(NULL);
  interrupter it;
  int i, stopped = 0, again = 0;
  memset(&it, 0, sizeof it);
  it.rt = rt;
  CHECK(spawn_code(rt, "while true do end") > 0);
  uv_thread_create(&it.thread, interrupt_loop, &it);
  for (i = 0; i < 300 && stopped < 5; i++) {
    int rc = loom_step(rt, 0.005);
    if (rc == LOOM_STOPPED)
      stopped++;
    else if (rc == LOOM_AGAIN)
      again++;
  }
  atomic_store(&it.stop, 1);
  uv_thread_join(&it.thread);
  CHECK(stopped >= 5);
  /* a late interrupt may still stop one more step; then it runs on */
  for (i = 0; i < 3; i++)
    if (loom_step(rt, 0.002) == LOOM_AGAIN)
      again++;
  CHECK(again > 0);
  CHECK(loom_close(rt) == LOOM_OK);
}

TEST(interrupt_from_thread_run) {
  /* loom_run with a slice: the spinner is preempted, the interrupt lands. */
  loom_options o;
  loom_runtime *rt;
  interrupter it;
  loom_options_init(&o);
  o.slice = 0.002;
  rt = loom_new(&o);
  memset(&it, 0, sizeof it);
  it.rt = rt;
  CHECK(spawn_code(rt, "while true do end") > 0);
  CHECK(spawn_code(rt, "while true do loom.sleep(0.001) end") > 0);
  uv_thread_create(&it.thread, interrupt_loop, &it);
  CHECK(loom_run(rt) == LOOM_STOPPED);
  atomic_store(&it.stop, 1);
  uv_thread_join(&it.thread);
  CHECK(atomic_load(&it.sent) >= 1);
  CHECK(loom_close(rt) == LOOM_OK);
}

/* ------------------------------------------------------------ runtimes on threads */

typedef struct world {
  uv_thread_t thread;
  int index;
  int ok; /* read after the join */
  atomic_int finished;
  loom_runtime *peer; /* posts into this one while running */
  atomic_int *posted;
} world;

static const char world_script[] =
    "local n = ...\n"
    "local ch = loom.channel(8)\n"
    "local g = loom.group()\n"
    "for i = 1, 20 do g:spawn(function()\n"
    "  for k = 1, 50 do ch:send(k); loom.sleep(0) end\n"
    "end) end\n"
    "local got = 0\n"
    "loom.spawn(function() for i = 1, 1000 do ch:receive(); got = got + 1 end end)\n"
    "assert(g:wait())\n"
    "loom.sleep(0.01)\n"
    "assert(got == 1000, got)\n"
    "local t = {}\n"
    "for i = 1, 2000 do t[i] = tostring(i * n) end\n"
    "result = #table.concat(t)\n";

static void bump(loom_runtime *rt, void *ud) {
  (void)rt;
  atomic_fetch_add((atomic_int *)ud, 1);
}

static void run_world(void *arg) {
  world *w = arg;
  loom_options o;
  loom_runtime *rt;
  lua_State *L;
  int i;
  loom_options_init(&o);
  o.slice = 0.001;
  o.memory_limit = 64 << 20;
  rt = loom_new(&o);
  if (!rt) {
    atomic_store(&w->finished, 1);
    return;
  }
  L = loom_state(rt);
  lua_pushinteger(L, w->index + 1);
  if (loom_spawn_string(rt, world_script, "=world", 1) <= 0) {
    loom_close(rt);
    atomic_store(&w->finished, 1);
    return;
  }
  for (i = 0; i < 100; i++) {
    if (w->peer)
      loom_post(w->peer, bump, NULL, w->posted);
    if (loom_step(rt, 0.002) == LOOM_OK)
      break;
  }
  if (loom_run(rt) == LOOM_OK && global_int(rt, "result") > 0 && loom_error_count(rt) == 0)
    w->ok = 1;
  loom_close(rt);
  atomic_store(&w->finished, 1);
}

TEST(runtimes_on_threads) {
  world w[NTHREADS];
  loom_runtime *hub = loom_new(NULL);
  atomic_int posted;
  int i;
  double end;
  atomic_init(&posted, 0);
  memset(w, 0, sizeof w);
  for (i = 0; i < NTHREADS; i++) {
    w[i].index = i;
    w[i].peer = hub;
    w[i].posted = &posted;
    uv_thread_create(&w[i].thread, run_world, &w[i]);
  }
  /* the hub runs on this thread meanwhile, receiving the others' posts */
  end = now_s() + 30;
  while (now_s() < end) {
    int done = 1;
    loom_step(hub, 0.002);
    for (i = 0; i < NTHREADS; i++)
      done &= atomic_load(&w[i].finished);
    if (done)
      break;
    usleep(500);
  }
  for (i = 0; i < NTHREADS; i++) {
    uv_thread_join(&w[i].thread);
    CHECKF(w[i].ok, "world %d failed", i);
  }
  loom_step(hub, 0.01);
  CHECK(atomic_load(&posted) > 0);
  CHECK(loom_close(hub) == LOOM_OK);
}

HARNESS_MAIN
