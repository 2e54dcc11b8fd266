/*
 * server.c - a small game server that embeds loom: a fixed 30 Hz tick
 * drives one sandboxed runtime with loom_step; NPC scripts sleep and wait
 * on world events the host posts; players connect over TCP, one tasklet
 * each; host.db_get is a C function that blocks the calling tasklet while a
 * worker thread plays the database; bad.lua spins forever and the tick
 * still holds. Prints tick timing statistics. docs/embedding.md walks
 * through it.
 *
 *   embed_server [--seconds N] [--port P] [--npcs N] [--budget MS]
 *                [--scripts DIR] [--cpu-limit S] [--selftest]
 *
 * --selftest also runs bots (a second loom runtime on another thread) that
 * log in over TCP, and exits 1 unless everything worked and the tick held.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>
#include <loom.h>

#ifndef EMBED_SCRIPTS_DIR
#define EMBED_SCRIPTS_DIR "examples/embed/scripts"
#endif

#define TICK_HZ 30

static struct {
  double seconds, budget, cpu_limit;
  int port, npcs, selftest;
  const char *scripts;
} opt = {0, 0.005, 0, 0, 200, 0, EMBED_SCRIPTS_DIR};

static volatile sig_atomic_t quit;
static loom_runtime *world_rt;

/* ------------------------------------------------------------ time */

static double wall_s(void) { return (double)uv_hrtime() / 1e9; }

static double cpu_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_until(double t) {
  struct timespec ts;
  uint64_t ns = (uint64_t)(t * 1e9);
  /* uv_hrtime is CLOCK_MONOTONIC */
  ts.tv_sec = (time_t)(ns / 1000000000u);
  ts.tv_nsec = (long)(ns % 1000000000u);
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR && !quit)
    ;
}

/* ------------------------------------------------------------ the database */

/* A fake database: one worker thread answers lookups after 5-30 ms. The
 * answer travels back with loom_post and completes the pending call on the
 * runtime's thread, which resumes the tasklet that asked. */
typedef struct query {
  struct query *next;
  loom_runtime *rt;
  loom_pending *pending;
  char key[64];
  char answer[96];
} query;

static struct {
  uv_thread_t thread;
  uv_mutex_t lock;
  uv_cond_t cond;
  query *head, *tail;
  int stop;
  long served;
} db;

static void db_answer(loom_runtime *rt, void *ud) {
  query *q = ud;
  lua_State *S = loom_pending_state(q->pending); /* NULL: the caller was killed */
  (void)rt;
  if (S)
    lua_pushstring(S, q->answer);
  loom_pending_complete(q->pending, S ? 1 : 0);
  free(q);
}

static void db_dropped(loom_runtime *rt, void *ud) {
  query *q = ud;
  (void)rt;
  loom_pending_complete(q->pending, 0); /* the runtime closed: only frees */
  free(q);
}

static void db_main(void *arg) {
  unsigned seed = 42;
  (void)arg;
  uv_mutex_lock(&db.lock);
  for (;;) {
    query *q;
    while (!db.head && !db.stop)
      uv_cond_wait(&db.cond, &db.lock);
    if (db.stop)
      break;
    q = db.head;
    db.head = q->next;
    if (!db.head)
      db.tail = NULL;
    uv_mutex_unlock(&db.lock);
    uv_sleep(5 + rand_r(&seed) % 25); /* the "query" */
    snprintf(q->answer, sizeof q->answer, "level %u, gold %u", 1 + rand_r(&seed) % 60,
             rand_r(&seed) % 1000);
    loom_post(q->rt, db_answer, db_dropped, q);
    uv_mutex_lock(&db.lock);
    db.served++;
  }
  uv_mutex_unlock(&db.lock); /* queries still queued are answered after loom_close */
}

static long db_served(void) {
  long n;
  uv_mutex_lock(&db.lock);
  n = db.served;
  uv_mutex_unlock(&db.lock);
  return n;
}

/* host.db_get(key) -> record: blocks the calling tasklet only. */
static int l_db_get(lua_State *L) {
  size_t len;
  const char *key = luaL_checklstring(L, 1, &len);
  query *q;
  luaL_argcheck(L, len < sizeof q->key, 1, "key too long");
  q = calloc(1, sizeof *q);
  if (!q)
    return luaL_error(L, "out of memory");
  q->pending = loom_pending_new(L, "host.db_get"); /* raises if L cannot block */
  q->rt = loom_from_state(L);
  memcpy(q->key, key, len + 1);
  uv_mutex_lock(&db.lock);
  if (db.tail)
    db.tail->next = q;
  else
    db.head = q;
  db.tail = q;
  uv_cond_signal(&db.cond);
  uv_mutex_unlock(&db.lock);
  return loom_pending_wait(L, q->pending, 5.0); /* nil, "ETIMEDOUT..." after 5 s */
}

/* host.log(msg) */
static int l_log(lua_State *L) {
  fprintf(stderr, "[script] %s\n", luaL_checkstring(L, 1));
  return 0;
}

/* ------------------------------------------------------------ errors */

static int errors_reported;
static void on_script_error(void *ud, loom_runtime *rt, const char *message) {
  (void)ud;
  (void)rt;
  errors_reported++;
  fprintf(stderr, "[error] %s\n", message);
}

/* ------------------------------------------------------------ the bots */

typedef struct bots {
  uv_thread_t thread;
  int port, count, ok;
  char failures[2048];
} bots;

/* The self-test's players: another runtime, on another thread. */
static void bots_main(void *arg) {
  bots *b = arg;
  char path[1024];
  loom_runtime *rt = loom_new(NULL);
  lua_State *L;
  if (!rt)
    return;
  L = loom_state(rt);
  snprintf(path, sizeof path, "%s/bots.lua", opt.scripts);
  lua_pushinteger(L, b->port);
  lua_pushinteger(L, b->count);
  if (loom_spawn_file(rt, path, 2) > 0 && loom_run(rt) == LOOM_OK) {
    lua_getglobal(L, "bots_ok");
    b->ok = (int)lua_tointeger(L, -1);
    lua_getglobal(L, "bot_failures");
    snprintf(b->failures, sizeof b->failures, "%s", lua_isstring(L, -1) ? lua_tostring(L, -1) : "");
    lua_pop(L, 2);
  } else
    snprintf(b->failures, sizeof b->failures, "%s", lua_tostring(L, -1));
  loom_close(rt);
}

/* ------------------------------------------------------------ statistics */

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* p-th percentile of n sorted values. */
static double pct(const double *v, int n, double p) {
  int i = (int)(p / 100.0 * (n - 1) + 0.5);
  return n ? v[i] : 0;
}

static void report(const char *what, double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  printf("  %-22s p50 %6.2f ms  p99 %6.2f ms  max %6.2f ms\n", what, pct(v, n, 50) * 1e3,
         pct(v, n, 99) * 1e3, n ? v[n - 1] * 1e3 : 0);
}

static lua_Integer world_stat(lua_State *L, const char *name) {
  lua_Integer v = 0;
  if (lua_getglobal(L, "world") == LUA_TTABLE && lua_getfield(L, -1, "stats") == LUA_TTABLE) {
    lua_getfield(L, -1, name);
    v = lua_tointeger(L, -1);
    lua_pop(L, 1);
  }
  lua_settop(L, 0);
  return v;
}

/* ------------------------------------------------------------ main */

static void on_signal(int sig) {
  (void)sig;
  quit = 1;
  if (world_rt)
    loom_interrupt(world_rt); /* async-signal-safe: ends the step at once */
}

static int spawn_script(loom_runtime *rt, const char *name, int nargs) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", opt.scripts, name);
  if (loom_spawn_file(rt, path, nargs) <= 0) {
    fprintf(stderr, "%s: %s\n", name, lua_tostring(loom_state(rt), -1));
    return 0;
  }
  return 1;
}

static void parse(int argc, char **argv) {
  int i;
  for (i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(a, "--selftest") == 0)
      opt.selftest = 1;
    else if (v && strcmp(a, "--seconds") == 0)
      opt.seconds = atof(argv[++i]);
    else if (v && strcmp(a, "--port") == 0)
      opt.port = atoi(argv[++i]);
    else if (v && strcmp(a, "--npcs") == 0)
      opt.npcs = atoi(argv[++i]);
    else if (v && strcmp(a, "--budget") == 0)
      opt.budget = atof(argv[++i]) / 1000;
    else if (v && strcmp(a, "--cpu-limit") == 0)
      opt.cpu_limit = atof(argv[++i]);
    else if (v && strcmp(a, "--scripts") == 0)
      opt.scripts = argv[++i];
    else {
      fprintf(stderr,
              "usage: %s [--seconds N] [--port P] [--npcs N] [--budget MS] "
              "[--scripts DIR] [--cpu-limit S] [--selftest]\n",
              argv[0]);
      exit(2);
    }
  }
  if (opt.selftest && opt.seconds <= 0)
    opt.seconds = 3;
}

int main(int argc, char **argv) {
  static const luaL_Reg host_funcs[] = {{"db_get", l_db_get}, {"log", l_log}, {NULL, NULL}};
  loom_options o;
  loom_runtime *rt;
  lua_State *L;
  double period = 1.0 / TICK_HZ, start, next, last_report;
  double *wall = NULL, *cpu = NULL;
  int nticks = 0, cap = 0, i, port = 0, overruns = 0, failed = 0;
  bots b;
  memset(&b, 0, sizeof b);
  parse(argc, argv);

  /* One sandboxed runtime for all the world's scripts; the network stays
   * (players connect), files and processes do not. */
  loom_options_init(&o);
  o.sandbox = LOOM_SANDBOX | LOOM_SANDBOX_NET;
  o.memory_limit = 256u << 20;
  o.cpu_limit = opt.cpu_limit;
  world_rt = rt = loom_new(&o);
  if (!rt) {
    fprintf(stderr, "loom_new failed\n");
    return 1;
  }
  L = loom_state(rt);
  loom_set_error_handler(rt, on_script_error, NULL);
  luaL_newlib(L, host_funcs); /* the host's API for scripts: host.db_get, host.log */
  lua_setglobal(L, "host");

  uv_mutex_init(&db.lock);
  uv_cond_init(&db.cond);
  uv_thread_create(&db.thread, db_main, NULL);
  signal(SIGINT, on_signal);
  signal(SIGTERM, on_signal);

  if (!spawn_script(rt, "world.lua", 0))
    return 1;
  for (i = 1; i <= opt.npcs; i++) {
    lua_pushinteger(L, i);
    if (!spawn_script(rt, "npc.lua", 1))
      return 1;
  }
  lua_pushinteger(L, opt.port);
  if (!spawn_script(rt, "players.lua", 1) || !spawn_script(rt, "bad.lua", 0))
    return 1;

  printf("loom %s game server: %d NPCs, %d Hz, step budget %.1f ms\n", LOOM_VERSION, opt.npcs,
         TICK_HZ, opt.budget * 1e3);
  start = next = last_report = wall_s();
  while (!quit && (opt.seconds <= 0 || wall_s() - start < opt.seconds)) {
    double t0 = wall_s(), c0 = cpu_s();
    int rc;
    /* the host's own simulation would run here; then the scripts */
    rc = loom_step(rt, opt.budget);
    if (rc < LOOM_AGAIN && rc != LOOM_OK)
      break; /* LOOM_STOPPED (a signal) or an error */
    if (nticks == cap) {
      cap = cap ? cap * 2 : 1024;
      wall = realloc(wall, (size_t)cap * sizeof *wall);
      cpu = realloc(cpu, (size_t)cap * sizeof *cpu);
      if (!wall || !cpu)
        return 1;
    }
    wall[nticks] = wall_s() - t0;
    cpu[nticks] = cpu_s() - c0;
    nticks++;

    if (!port) {
      lua_getglobal(L, "PORT");
      port = (int)lua_tointeger(L, -1);
      lua_pop(L, 1);
      if (port) {
        printf("players: telnet 127.0.0.1 %d\n", port);
        if (opt.selftest) {
          b.port = port;
          b.count = 20;
          uv_thread_create(&b.thread, bots_main, &b);
        }
      }
    }
    /* day and night: a world event every two seconds, posted like any
     * other thread would (loom_post_message is thread-safe) */
    if (nticks % (2 * TICK_HZ) == 0)
      loom_post_message(rt, "world_event", (nticks / (2 * TICK_HZ)) % 2 ? "dusk" : "dawn", 4);
    if (wall_s() - last_report >= 5) {
      last_report = wall_s();
      printf("t=%.0fs ticks %d, npc actions %lld, players %lld, db %ld, mem %.1f MB\n",
             last_report - start, nticks, (long long)world_stat(L, "npc_actions"),
             (long long)world_stat(L, "logins"), db_served(), loom_memory(rt) / 1048576.0);
    }
    next += period;
    if (wall_s() > next) {
      overruns++; /* the tick ran long: start the next one at once */
      next = wall_s();
    } else
      sleep_until(next);
  }

  if (opt.selftest && b.port)
    uv_thread_join(&b.thread);
  printf("%d ticks in %.1f s; %d ticks overran the %.1f ms period\n", nticks, wall_s() - start,
         overruns, period * 1e3);
  printf("npc actions %lld, npc db lookups %lld, logins %lld, commands %lld, db served %ld\n",
         (long long)world_stat(L, "npc_actions"), (long long)world_stat(L, "npc_lookups"),
         (long long)world_stat(L, "logins"), (long long)world_stat(L, "commands"), db_served());
  printf("loom_step(%.1f ms budget):\n", opt.budget * 1e3);
  report("wall time", wall, nticks);
  report("CPU time", cpu, nticks);
  if (opt.selftest) {
    double cpu_max = nticks ? cpu[nticks - 1] : 0; /* sorted by report() */
    printf("bots ok %d of %d%s%s\n", b.ok, b.count, b.failures[0] ? "; " : "", b.failures);
    if (b.ok != b.count || world_stat(L, "npc_actions") == 0 || errors_reported)
      failed = 1;
    /* the spinning script never stopped and the tick's own work held */
    if (cpu_max > opt.budget + 0.005 * 4)
      failed = 1;
    printf("selftest %s\n", failed ? "FAILED" : "passed");
  }

  /* Shutdown: no thread may post once loom_close begins, so the database
   * stops first; then the runtime closes with everything in flight. */
  uv_mutex_lock(&db.lock);
  db.stop = 1;
  uv_cond_signal(&db.cond);
  uv_mutex_unlock(&db.lock);
  uv_thread_join(&db.thread);
  world_rt = NULL;
  loom_close(rt); /* cancels every pending call still waiting */
  while (db.head) {
    query *q = db.head;
    db.head = q->next;
    loom_pending_complete(q->pending, 0); /* cancelled: only frees */
    free(q);
  }
  uv_cond_destroy(&db.cond);
  uv_mutex_destroy(&db.lock);
  free(wall);
  free(cpu);
  return failed;
}
