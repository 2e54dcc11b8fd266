/*
 * test_pending.c - C functions that block the calling tasklet
 * (loom_pending_*): completed later on the loop thread, before the wait,
 * from a worker thread through loom_post; cancelled by a timeout, a kill or
 * loom_close; inside a generator; in the main thread; and misuse.
 */
#include <unistd.h>

#include "harness.h"

/* A pending call the tests complete by hand. */
static loom_pending *held[16];
static int nheld;

/* hold(what [, timeout]) -> whatever the test completes it with */
static int l_hold(lua_State *L) {
  double timeout = luaL_optnumber(L, 1, -1);
  loom_pending *p = loom_pending_new(L, "test hold");
  held[nheld++] = p;
  return loom_pending_wait(L, p, timeout);
}

/* instant(n) -> 1..n, completed before the wait (a cache hit) */
static int l_instant(lua_State *L) {
  lua_Integer i, n = luaL_checkinteger(L, 1);
  loom_pending *p = loom_pending_new(L, "instant");
  lua_State *S = loom_pending_state(p);
  for (i = 1; i <= n; i++)
    lua_pushinteger(S, i);
  loom_pending_complete(p, (int)n);
  return loom_pending_wait(L, p, -1);
}

static loom_runtime *pending_runtime(errors *e) {
  loom_runtime *rt = new_runtime(NULL, e);
  lua_register(loom_state(rt), "hold", l_hold);
  lua_register(loom_state(rt), "instant", l_instant);
  nheld = 0;
  return rt;
}

/* Steps until cond(rt) or about two seconds. */
static int step_until(loom_runtime *rt, int (*cond)(loom_runtime *)) {
  int i;
  for (i = 0; i < 2000 && !cond(rt); i++) {
    loom_step(rt, 0.001);
    usleep(500);
  }
  return cond(rt);
}

static int one_held(loom_runtime *rt) {
  (void)rt;
  return nheld >= 1;
}

static int got_result(loom_runtime *rt) { return global_int(rt, "done") == 1; }

TEST(complete_on_loop_thread) {
  errors e;
  loom_runtime *rt = pending_runtime(&e);
  lua_State *S;
  CHECK(spawn_code(rt, "local a, b = hold(); r = a .. b; done = 1") > 0);
  CHECK(step_until(rt, one_held));
  CHECK(loom_step(rt, 0.005) == LOOM_AGAIN); /* a pending is work in flight */
  S = loom_pending_state(held[0]);
  CHECK(S != NULL);
  lua_pushstring(S, "val");
  lua_pushinteger(S, 42);
  loom_pending_complete(held[0], 2);
  CHECK(step_until(rt, got_result));
  CHECK(strcmp(global_str(rt, "r"), "val42") == 0 && e.n == 0);
  CHECK(loom_close(rt) == LOOM_OK);
}

TEST(complete_before_wait) {
  errors e;
  loom_runtime *rt = pending_runtime(&e);
  CHECK(spawn_code(rt, "local a, b, c = instant(3); r = a + b + c\n"
                       "assert(select('#', instant(0)) == 0); done = 1") > 0);
  CHECK(loom_run(rt) == LOOM_OK);
  CHECK(global_int(rt, "r") == 6 && global_int(rt, "done") == 1 && e.n == 0);
  CHECK(loom_close(rt) == LOOM_OK);
}

TEST(results_count) {
  errors e;
  loom_runtime *rt = pending_runtime(&e);
  lua_State *S;
  int i;
  CHECK(spawn_code(rt, "n1 = select('#', hold()); n2 = select('#', hold());\n"
                       "local x, y = hold(); last = x .. y; done = 1") > 0);
  for (i = 0; i < 3; i++) {
    int j, keep = i == 0 ? -1 : i == 1 ? 9 : 2;
    for (j = 0; j < 1000 && nheld <= i; j++)
      loom_step(rt, 0.001);
    CHECK(nheld > i);
    S = loom_pending_state(held[i]);
    CHECK(S != NULL);
    for (j = 1; j <= 3; j++)
      lua_pushinteger(S, j);
    loom_pending_complete(held[i], keep); /* -1: all; 9: all there are; 2: the top 2 */
    loom_step(rt, 0.01);
  }
  CHECK(step_until(rt, got_result));
  CHECK(global_int(rt, "n1") == 3 && global_int(rt, "n2") == 3);
  CHECK(strcmp(global_str(rt, "last"), "23") == 0);
  CHECK(loom_close(rt) == LOOM_OK);
}

TEST(timeout) {
  errors e;
  loom_runtime *rt = pending_runtime(&e);
  CHECK(spawn_code(rt, "local v, msg, code = hold(0.02); r = code; done = 1") > 0);
  CHECK(step_until(rt, got_result));
  CHECK(strcmp(global_str(rt, "r"), "ETIMEDOUT") == 0);
  /* cancelled: no stack to push on, complete only frees */
  CHECK(loom_pending_state(held[0]) == NULL);
  loom_pending_complete(held[0], 0);
  CHECK(loom_close(rt) == LOOM_OK);
}

TEST(kill_cancels) {
  errors e;
  loom_runtime *rt = pending_runtime(&e);
  CHECK(spawn_code(rt, "local t = loom.spawn(function() local ok = pcall(hold); r = ok end)\n"
                       "loom.sleep(0.01); t:kill(); t:join(); done = 1") > 0);
  CHECK(step_until(rt, got_result));
  CHECK(loom_pending_state(held[0]) == NULL);
  loom_pending_complete(held[0], 0);
  CHECK(e.n == 0);
  CHECK(loom_close(rt) == LOOM_OK);
}

TEST(close_cancels) {
  errors e;
  loom_runtime *rt = pending_runtime(&e);
  CHECK(spawn_code(rt, "hold()") > 0);
  CHECK(spawn_code(rt, "hold(30)") > 0);
  CHECK(step_until(rt, one_held) && loom_step(rt, 0.01) >= LOOM_AGAIN && nheld == 2);
  CHECK(loom_close(rt) == LOOM_OK);
  /* after close, from any thread: only frees */
  CHECK(loom_pending_state(held[0]) == NULL);
  loom_pending_complete(held[0], 0);
  loom_pending_complete(held[1], 3);
}

TEST(in_generator) {
  errors e;
  loom_runtime *rt = pending_runtime(&e);
  lua_State *S;
  CHECK(spawn_code(rt, "local gen = coroutine.wrap(function()\n"
                       "  coroutine.yield('first')\n"
                       "  coroutine.yield(hold())\n"
                       "end)\n"
                       "local a = gen(); local b = gen(); r = a .. b; done = 1") > 0);
  CHECK(step_until(rt, one_held));
  S = loom_pending_state(held[0]);
  lua_pushstring(S, "+second");
  loom_pending_complete(held[0], 1);
  CHECK(step_until(rt, got_result));
  CHECK(strcmp(global_str(rt, "r"), "first+second") == 0 && e.n == 0);
  CHECK(loom_close(rt) == LOOM_OK);
}

/* ------------------------------------------------------------ worker threads */

/* A fake database: a worker thread answers each query after a while and
 * hands the answer to the runtime with loom_post. */
typedef struct job {
  loom_pending *p;
  loom_runtime *rt;
  long key;
  struct job *next;
} job;

typedef struct worker {
  uv_thread_t thread;
  uv_mutex_t lock;
  uv_cond_t cond;
  job *head;
  int stop;
} worker;

static worker db;

static void job_done(loom_runtime *rt, void *ud) {
  job *j = ud;
  lua_State *S = loom_pending_state(j->p);
  (void)rt;
  if (S)
    lua_pushinteger(S, j->key * 10);
  loom_pending_complete(j->p, S ? 1 : 0);
  free(j);
}

static void job_dropped(loom_runtime *rt, void *ud) {
  job *j = ud;
  (void)rt;
  loom_pending_complete(j->p, 0); /* cancelled by the close: frees */
  free(j);
}

static void worker_main(void *arg) {
  worker *w = arg;
  uv_mutex_lock(&w->lock);
  for (;;) {
    job *j;
    while (!w->head && !w->stop)
      uv_cond_wait(&w->cond, &w->lock);
    if (!w->head)
      break;
    j = w->head;
    w->head = j->next;
    uv_mutex_unlock(&w->lock);
    usleep(200);
    if (loom_post(j->rt, job_done, job_dropped, j) != LOOM_OK)
      abort();
    uv_mutex_lock(&w->lock);
  }
  uv_mutex_unlock(&w->lock);
}

/* db_get(key) -> key * 10, computed by the worker */
static int l_db_get(lua_State *L) {
  long key = (long)luaL_checkinteger(L, 1);
  job *j = malloc(sizeof *j);
  if (!j)
    return luaL_error(L, "out of memory");
  j->p = loom_pending_new(L, "db_get");
  j->rt = loom_from_state(L);
  j->key = key;
  uv_mutex_lock(&db.lock);
  j->next = db.head;
  db.head = j;
  uv_cond_signal(&db.cond);
  uv_mutex_unlock(&db.lock);
  return loom_pending_wait(L, j->p, -1);
}

static void db_start(void) {
  memset(&db, 0, sizeof db);
  uv_mutex_init(&db.lock);
  uv_cond_init(&db.cond);
  uv_thread_create(&db.thread, worker_main, &db);
}

static void db_stop(void) {
  uv_mutex_lock(&db.lock);
  db.stop = 1;
  uv_cond_signal(&db.cond);
  uv_mutex_unlock(&db.lock);
  uv_thread_join(&db.thread);
  uv_cond_destroy(&db.cond);
  uv_mutex_destroy(&db.lock);
}

TEST(worker_thread_with_run) {
  /* loom_run waits for pendings: their completions come as posts. */
  errors e;
  loom_runtime *rt = new_runtime(NULL, &e);
  db_start();
  lua_register(loom_state(rt), "db_get", l_db_get);
  CHECK(spawn_code(
            rt, "local sum = 0\n"
                "local g = loom.group()\n"
                "for i = 1, 50 do g:spawn(function() local v = db_get(i); sum = sum + v end) end\n"
                "assert(g:wait())\n"
                "for i = 1, 20 do local v = db_get(i); sum = sum + v end\n"
                "total = sum") > 0);
  CHECK(loom_run(rt) == LOOM_OK);
  db_stop();
  fprintf(stderr, "total %lld errors %d %s\n", (long long)global_int(rt, "total"), e.n, e.last);
  CHECK(global_int(rt, "total") == 10 * (50 * 51 / 2 + 20 * 21 / 2) && e.n == 0);
  CHECK(loom_close(rt) == LOOM_OK);
}

TEST(worker_thread_with_step_and_close) {
  errors e;
  loom_runtime *rt = new_runtime(NULL, &e);
  int i;
  db_start();
  lua_register(loom_state(rt), "db_get", l_db_get);
  CHECK(spawn_code(rt, "count = 0\n"
                       "for i = 1, 200 do loom.spawn(function()\n"
                       "  while true do assert(db_get(i) == i * 10); count = count + 1 end\n"
                       "end) end") > 0);
  for (i = 0; i < 20000 && global_int(rt, "count") < 2000; i++) {
    loom_step(rt, 0.002);
    usleep(100);
  }
  fprintf(stderr, "count %lld errors %d %s\n", (long long)global_int(rt, "count"), e.n, e.last);
  CHECK(global_int(rt, "count") >= 2000);
  /* the worker is stopped first (no posts once close begins); the jobs it
   * still holds answer into a closed runtime through job_dropped */
  db_stop();
  {
    job *j = db.head;
    CHECK(loom_close(rt) == LOOM_OK);
    while (j) {
      job *next = j->next;
      loom_pending_complete(j->p, 0);
      free(j);
      j = next;
    }
  }
  CHECK(e.n == 0);
}

/* ------------------------------------------------------------ main thread */

TEST(main_thread_blocks) {
  /* Host code calls a Lua function that blocks on a pending outside any
   * tasklet: the main thread drives the runtime until it is completed. */
  errors e;
  loom_runtime *rt = new_runtime(NULL, &e);
  lua_State *L = loom_state(rt);
  db_start();
  lua_register(L, "db_get", l_db_get);
  CHECK(luaL_loadstring(L, "local s = 0; for i = 1, 5 do s = s + db_get(i) end; return s") ==
        LUA_OK);
  CHECK(lua_pcall(L, 0, 1, 0) == LUA_OK);
  CHECK(lua_tointeger(L, -1) == 150);
  lua_pop(L, 1);
  db_stop();
  CHECK(loom_close(rt) == LOOM_OK);
}

/* ------------------------------------------------------------ misuse */

static int l_bad_wait(lua_State *L) { return loom_pending_wait(L, NULL, -1); }

TEST(misuse) {
  errors e;
  loom_runtime *rt = pending_runtime(&e);
  lua_State *L = loom_state(rt);
  lua_register(L, "bad_wait", l_bad_wait);
  /* in a reactor callback: cannot block */
  CHECK(spawn_code(rt, "loom.call_later(0, function()\n"
                       "  local ok, err = pcall(hold); r1 = tostring(err)\n"
                       "end)") > 0);
  CHECK(spawn_code(rt, "local ok, err = pcall(bad_wait); r2 = tostring(err)") > 0);
  CHECK(spawn_code(rt, "local ok, err = pcall(table.sort, {1, 2}, function() hold() end)\n"
                       "r3 = tostring(err)") > 0);
  CHECK(loom_run(rt) == LOOM_OK);
  CHECK(strstr(global_str(rt, "r1"), "cannot block in the reactor") != NULL);
  CHECK(strstr(global_str(rt, "r2"), "NULL") != NULL);
  CHECK(strstr(global_str(rt, "r3"), "cannot block here") != NULL);
  CHECK(nheld == 0);
  CHECK(loom_pending_new(NULL, "x") == NULL);
  CHECK(loom_pending_state(NULL) == NULL);
  loom_pending_complete(NULL, 1); /* no-op */
  CHECK(loom_close(rt) == LOOM_OK);
}

HARNESS_MAIN
