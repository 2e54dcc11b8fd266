/*
 * embed_tick.c - the example host's loop, measured (bench/embed.md):
 *
 * 1. Tick: 1,000 scripted NPC tasklets (sleeping, waiting on events and
 *    channels, doing a little work) and one script that spins forever, in a
 *    sandboxed runtime driven at 30 Hz by loom_step with a 5 ms budget for
 *    10 s. Reports the step's duration p50/p99/max (wall clock, and the
 *    thread's CPU time, which shows what the OS took away on a busy box).
 *    Targets: p99 <= budget + 1 ms, max <= budget + 2 ms.
 * 2. Posts: 4 threads post as fast as they can into one runtime that runs
 *    loom_step; every post carries (thread, sequence) and is checked to
 *    run exactly once and in order. Target: >= 1,000,000 posts/s.
 *
 *   embed_tick [--seconds 10] [--npcs 1000] [--budget 5] [--posts 4000000]
 *              [--no-sandbox] [--no-spinner]
 * Exit status 1 when a post was lost or run twice.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>
#include <loom.h>

static double seconds = 10, budget = 0.005;
static int npcs = 1000, sandbox = 1, spinner = 1;
static long total_posts = 4000000;

static double wall_s(void) { return (double)uv_hrtime() / 1e9; }

static double cpu_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double pct(const double *v, int n, double p) {
  return n ? v[(int)(p / 100.0 * (n - 1) + 0.5)] : 0;
}

/* ------------------------------------------------------------ 1. tick */

static const char npc_script[] =
    "local id = ...\n"
    "local rng = id * 7919\n"
    "local function rand() rng = (rng * 1103515245 + 12345) % 2147483648; return rng / 2147483648 "
    "end\n"
    "while true do\n"
    "  local r = rand()\n"
    "  if r < 0.6 then\n"
    "    loom.sleep(0.05 + rand() * 0.45)          -- wander\n"
    "  elseif r < 0.8 then\n"
    "    world.alarm:wait(0.1 + rand() * 0.4)      -- wait for an event\n"
    "  else\n"
    "    world.mail:send(id, 0.2)                  -- talk to the mailman\n"
    "  end\n"
    "  local x = 0\n"
    "  for k = 1, 200 do x = x + k % 7 end       -- think a little\n"
    "  world.actions = world.actions + 1\n"
    "end\n";

static const char world_script[] =
    "world = { alarm = loom.event(), mail = loom.channel(16), actions = 0, letters = 0 }\n"
    "loom.spawn(function()\n"
    "  while true do world.mail:receive(); world.letters = world.letters + 1 end\n"
    "end)\n"
    "loom.spawn(function()\n"
    "  while true do loom.sleep(0.25); world.alarm:set(); loom.yield(); world.alarm:clear() end\n"
    "end)\n";

static lua_Integer world_field(lua_State *L, const char *name) {
  lua_Integer v;
  lua_getglobal(L, "world");
  lua_getfield(L, -1, name);
  v = lua_tointeger(L, -1);
  lua_pop(L, 2);
  return v;
}

static int bench_tick(void) {
  loom_options o;
  loom_runtime *rt;
  lua_State *L;
  double period = 1.0 / 30, start, next;
  int cap = (int)(seconds * 30) + 64, n = 0, i, overruns = 0;
  double *wall = malloc((size_t)cap * sizeof *wall), *cpu = malloc((size_t)cap * sizeof *cpu);
  lua_Integer actions0;
  loom_options_init(&o);
  o.sandbox = sandbox ? LOOM_SANDBOX : 0;
  o.memory_limit = 512u << 20;
  rt = loom_new(&o);
  if (!rt || !wall || !cpu)
    return 1;
  L = loom_state(rt);
  if (loom_spawn_string(rt, world_script, "=world", 0) <= 0)
    return 1;
  loom_step(rt, 0.05);
  for (i = 1; i <= npcs; i++) {
    lua_pushinteger(L, i);
    if (loom_spawn_string(rt, npc_script, "=npc", 1) <= 0)
      return 1;
  }
  if (spinner && loom_spawn_string(rt, "while true do end", "=spinner", 0) <= 0)
    return 1;
  /* one second of warm-up, not measured */
  start = next = wall_s();
  while (wall_s() - start < 1) {
    loom_step(rt, budget);
    next += period;
    while (wall_s() < next)
      uv_sleep(1);
  }
  actions0 = world_field(L, "actions");
  start = next = wall_s();
  while (n < cap && wall_s() - start < seconds) {
    double t0 = wall_s(), c0 = cpu_s();
    loom_step(rt, budget);
    wall[n] = wall_s() - t0;
    cpu[n] = cpu_s() - c0;
    n++;
    next += period;
    if (wall_s() > next) {
      overruns++;
      next = wall_s();
    } else {
      struct timespec ts;
      uint64_t ns = (uint64_t)(next * 1e9);
      ts.tv_sec = (time_t)(ns / 1000000000u);
      ts.tv_nsec = (long)(ns % 1000000000u);
      while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
    }
  }
  qsort(wall, (size_t)n, sizeof *wall, cmp_double);
  qsort(cpu, (size_t)n, sizeof *cpu, cmp_double);
  printf("tick: %d NPCs + %s, %d steps at 30 Hz over %.1f s, budget %.1f ms%s\n", npcs,
         spinner ? "1 spinner" : "no spinner", n, seconds, budget * 1e3,
         sandbox ? ", sandboxed" : "");
  printf("  step wall  p50 %.2f ms  p99 %.2f ms  max %.2f ms\n", pct(wall, n, 50) * 1e3,
         pct(wall, n, 99) * 1e3, wall[n - 1] * 1e3);
  printf("  step CPU   p50 %.2f ms  p99 %.2f ms  max %.2f ms\n", pct(cpu, n, 50) * 1e3,
         pct(cpu, n, 99) * 1e3, cpu[n - 1] * 1e3);
  printf("  NPC actions %.0f/s, ticks that overran the period: %d\n",
         (double)(world_field(L, "actions") - actions0) / seconds, overruns);
  printf("RESULT tick_p50_ms=%.3f tick_p99_ms=%.3f tick_max_ms=%.3f cpu_p99_ms=%.3f "
         "cpu_max_ms=%.3f\n",
         pct(wall, n, 50) * 1e3, pct(wall, n, 99) * 1e3, wall[n - 1] * 1e3, pct(cpu, n, 99) * 1e3,
         cpu[n - 1] * 1e3);
  free(wall);
  free(cpu);
  loom_close(rt);
  return 0;
}

/* ------------------------------------------------------------ 2. posts */

#define NPRODUCERS 4

typedef struct producer {
  uv_thread_t thread;
  loom_runtime *rt;
  long count;
  long expect, received, disorder; /* the runtime's thread only */
  atomic_int failed;
  char pad[64];
} producer;

static producer prod[NPRODUCERS];
static atomic_int go;

static void on_post(loom_runtime *rt, void *ud) {
  uintptr_t v = (uintptr_t)ud;
  producer *p = &prod[v & 3];
  long seq = (long)(v >> 2);
  (void)rt;
  if (seq != p->expect)
    p->disorder++;
  p->expect = seq + 1;
  p->received++;
}

static void produce(void *arg) {
  producer *p = arg;
  long i;
  while (!atomic_load_explicit(&go, memory_order_acquire))
    ;
  for (i = 0; i < p->count; i++)
    if (loom_post(p->rt, on_post, NULL, (void *)(((uintptr_t)i << 2) | (uintptr_t)(p - prod))) !=
        LOOM_OK)
      atomic_store(&p->failed, 1);
}

static int bench_posts(void) {
  loom_runtime *rt = loom_new(NULL);
  long per = total_posts / NPRODUCERS, got = 0, want = per * NPRODUCERS;
  double t0, t1, producers_done = 0;
  int i, bad = 0, joined = 0;
  if (!rt)
    return 1;
  memset(prod, 0, sizeof prod);
  for (i = 0; i < NPRODUCERS; i++) {
    prod[i].rt = rt;
    prod[i].count = per;
    uv_thread_create(&prod[i].thread, produce, &prod[i]);
  }
  t0 = wall_s();
  atomic_store_explicit(&go, 1, memory_order_release);
  while (got < want && wall_s() - t0 < 120) {
    loom_step(rt, 0.01);
    for (got = 0, i = 0; i < NPRODUCERS; i++)
      got += prod[i].received;
  }
  t1 = wall_s();
  for (i = 0; i < NPRODUCERS; i++)
    uv_thread_join(&prod[i].thread), joined++;
  producers_done = t1;
  /* a few more steps: nothing may run twice */
  for (i = 0; i < 10; i++)
    loom_step(rt, 0.001);
  for (got = 0, i = 0; i < NPRODUCERS; i++) {
    got += prod[i].received;
    if (prod[i].received != per || prod[i].disorder || atomic_load(&prod[i].failed))
      bad = 1;
  }
  printf("posts: %d threads x %ld posts into one runtime: %.2f s, %.0f posts/s; "
         "%ld executed, %s\n",
         NPRODUCERS, per, producers_done - t0, (double)want / (producers_done - t0), got,
         bad ? "LOST, DUPLICATED OR OUT OF ORDER" : "each exactly once, in order per thread");
  printf("RESULT posts_per_s=%.0f exactly_once=%d\n", (double)want / (producers_done - t0), !bad);
  (void)joined;
  loom_close(rt);
  return bad;
}

int main(int argc, char **argv) {
  int i, rc = 0;
  for (i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--no-sandbox") == 0)
      sandbox = 0;
    else if (strcmp(a, "--no-spinner") == 0)
      spinner = 0;
    else if (i + 1 < argc && strcmp(a, "--seconds") == 0)
      seconds = atof(argv[++i]);
    else if (i + 1 < argc && strcmp(a, "--npcs") == 0)
      npcs = atoi(argv[++i]);
    else if (i + 1 < argc && strcmp(a, "--budget") == 0)
      budget = atof(argv[++i]) / 1000;
    else if (i + 1 < argc && strcmp(a, "--posts") == 0)
      total_posts = atol(argv[++i]);
    else {
      fprintf(stderr,
              "usage: %s [--seconds S] [--npcs N] [--budget MS] [--posts N] "
              "[--no-sandbox] [--no-spinner]\n",
              argv[0]);
      return 2;
    }
  }
  if (seconds > 0)
    rc |= bench_tick();
  if (total_posts > 0)
    rc |= bench_posts();
  return rc;
}
