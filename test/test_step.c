/*
 * test_step.c - loom_step holds a game tick: with a spinning script it
 * returns within its budget (plus about one slice), other tasklets keep
 * running; code the count hook cannot preempt (a coroutine, a reactor
 * callback, an error's __tostring, a posted function) is stopped once the
 * step overran by another budget; interrupts from a signal handler; the
 * cpu_limit. Margins are generous (sanitizer builds, loaded CI machines):
 * the tight figures are measured by bench/embed_tick.c.
 */
#include <signal.h>
#include <sys/time.h>
#include <unistd.h>

#include "harness.h"

#define BUDGET 0.005
#define MARGIN (0.030 * SLOWDOWN) /* what a loaded machine or a sanitizer may add */

typedef struct timing {
  double max, sum;
  int n, over;
} timing;

/* Runs `steps` steps of BUDGET and records their durations (CPU time of
 * this thread, see harness.h). */
static void steps(loom_runtime *rt, int n, timing *t) {
  int i;
  memset(t, 0, sizeof *t);
  for (i = 0; i < n; i++) {
    double t0 = cpu_s(), d;
    int rc = loom_step(rt, BUDGET);
    d = cpu_s() - t0;
    if (rc < LOOM_AGAIN)
      fprintf(stderr, "step returned %d\n", rc);
    if (d > t->max)
      t->max = d;
    if (d > BUDGET + 0.002)
      t->over++;
    t->sum += d;
    t->n++;
  }
}

static const char npcs[] = "ticks = 0\n"
                           "for i = 1, 100 do loom.spawn(function()\n"
                           "  while true do loom.sleep(0.001 * (i % 7)); ticks = ticks + 1 end\n"
                           "end) end\n";

TEST(plain_spin_holds_the_tick) {
  errors e;
  loom_runtime *rt = new_runtime(NULL, &e);
  timing t;
  lua_Integer before;
  CHECK(spawn_code(rt, npcs) > 0);
  CHECK(spawn_code(rt, "while true do end") > 0);
  CHECK(spawn_code(rt, "while true do local t = {} for i = 1, 100 do t[i] = i end end") > 0);
  steps(rt, 5, &t); /* warm up */
  before = global_int(rt, "ticks");
  steps(rt, 100, &t);
  fprintf(stderr, "max %.2f ms, mean %.2f ms, %d of %d over budget+2ms\n", t.max * 1e3,
          t.sum / t.n * 1e3, t.over, t.n);
  CHECK(t.max < BUDGET + MARGIN);
  CHECK(t.sum / t.n < BUDGET + 0.003 * SLOWDOWN);
  CHECK(global_int(rt, "ticks") > before + 100); /* the others ran */
  CHECK(e.n == 0);
  CHECK(loom_close(rt) == LOOM_OK);
}

/* Steps until an error was reported or n steps; checks each step's time. */
static int stopped_in_time(loom_runtime *rt, errors *e, double limit, int n) {
  int i;
  for (i = 0; i < n && e->n == 0; i++) {
    double t0 = cpu_s();
    loom_step(rt, BUDGET);
    if (cpu_s() - t0 > limit) {
      fprintf(stderr, "a step took %.1f ms of CPU\n", (cpu_s() - t0) * 1e3);
      return 0;
    }
  }
  return e->n > 0;
}

/* The guard lets code that cannot be preempted run for the step's budget
 * plus another budget. */
#define GUARD_LIMIT (2 * BUDGET + 0.001 + MARGIN)

TEST(spin_in_coroutine) {
  errors e;
  loom_runtime *rt = new_runtime(NULL, &e);
  CHECK(spawn_code(rt, npcs) > 0);
  CHECK(spawn_code(rt, "local gen = coroutine.wrap(function() while true do end end)\n"
                       "gen()") > 0);
  CHECK(stopped_in_time(rt, &e, GUARD_LIMIT, 50));
  CHECK(strstr(e.last, "cannot be preempted") != NULL);
  /* coroutine.create too, and pcall around it does not help the spin */
  e.n = 0;
  CHECK(spawn_code(rt, "local co = coroutine.create(function() while true do end end)\n"
                       "local ok, err = coroutine.resume(co); error(err)") > 0);
  CHECK(stopped_in_time(rt, &e, GUARD_LIMIT, 50));
  CHECK(loom_close(rt) == LOOM_OK);
}

TEST(spin_in_reactor_callback) {
  errors e;
  loom_runtime *rt = new_runtime(NULL, &e);
  CHECK(spawn_code(rt, npcs) > 0);
  CHECK(spawn_code(rt, "loom.call_later(0.002, function() while true do end end)") > 0);
  CHECK(stopped_in_time(rt, &e, GUARD_LIMIT, 50));
  CHECK(strstr(e.last, "cannot be preempted") != NULL);
  e.n = 0;
  CHECK(spawn_code(rt, "loom.spawn_with(function() while true do end end, function() end)") > 0);
  CHECK(stopped_in_time(rt, &e, GUARD_LIMIT, 50));
  CHECK(loom_close(rt) == LOOM_OK);
}

/* Known open (needs the core change described in docs/embedding.md,
 * "Known limits"): the report of a dead tasklet runs the error's __tostring
 * on the tasklet's own thread after it died, where neither preempt.c's hook
 * nor the guard looks, so
 *   error(setmetatable({}, {__tostring = function() while true do end end}))
 * still freezes a step. Not registered as a test until then. */

static void spin_post(loom_runtime *rt, void *ud) {
  lua_State *L = loom_state(rt);
  (void)ud;
  if (luaL_dostring(L, "while true do end") != LUA_OK) {
    lua_setglobal(L, "post_error");
    loom_interrupt(rt); /* ends this step at once */
  }
}

TEST(spin_in_posted_function) {
  errors e;
  loom_runtime *rt = new_runtime(NULL, &e);
  double t0;
  CHECK(loom_post(rt, spin_post, NULL, NULL) == LOOM_OK);
  t0 = cpu_s();
  CHECK(loom_step(rt, BUDGET) == LOOM_STOPPED);
  CHECK(cpu_s() - t0 < GUARD_LIMIT);
  CHECK(strstr(global_str(rt, "post_error"), "cannot be preempted") != NULL);
  CHECK(loom_close(rt) == LOOM_OK);
}

TEST(cpu_limit_kills) {
  errors e;
  loom_options o;
  loom_runtime *rt;
  double t0;
  loom_options_init(&o);
  o.cpu_limit = 0.05;
  rt = new_runtime(&o, &e);
  CHECK(spawn_code(rt, "local t = loom.spawn(function() while true do end end)\n"
                       "local g = loom.spawn(function()\n"
                       "  coroutine.wrap(function() while true do end end)()\n"
                       "end)\n"
                       "local ok1, e1 = t:join(); local ok2, e2 = g:join()\n"
                       "r = (not ok1 and loom.TaskletExit:is(e1) and not ok2 and\n"
                       "     loom.TaskletExit:is(e2)) and 1 or 0") > 0);
  t0 = now_s();
  CHECK(loom_run(rt) == LOOM_OK);
  CHECK(now_s() - t0 < 2);
  CHECK(global_int(rt, "r") == 1 && e.n == 0);
  CHECK(loom_close(rt) == LOOM_OK);
}

static loom_runtime *alarm_rt;
static void on_alarm(int sig) {
  (void)sig;
  loom_interrupt(alarm_rt); /* async-signal-safe */
}

TEST(interrupt_from_signal_handler) {
  loom_options o;
  loom_runtime *rt = loom_new(NULL);
  struct sigaction sa;
  struct itimerval it;
  double t0;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_alarm;
  sigaction(SIGALRM, &sa, NULL);
  alarm_rt = rt;
  memset(&it, 0, sizeof it);
  it.it_value.tv_usec = 20000;
  /* loom_run, no slice: only the hook that the handler sets can stop it */
  CHECK(spawn_code(rt, "while true do end") > 0);
  t0 = now_s();
  setitimer(ITIMER_REAL, &it, NULL);
  CHECK(loom_run(rt) == LOOM_STOPPED);
  CHECK(now_s() - t0 < 1);
  CHECK(loom_close(rt) == LOOM_OK);
  /* a spin inside a coroutine, in a runtime with a slice: the guard sees
   * the interrupt (without slice, limit, sandbox or step there is no hook
   * on a coroutine, see docs/embedding.md) */
  loom_options_init(&o);
  o.slice = 10;
  alarm_rt = rt = loom_new(&o);
  CHECK(spawn_code(rt, "coroutine.wrap(function() while true do end end)()") > 0);
  t0 = now_s();
  setitimer(ITIMER_REAL, &it, NULL);
  CHECK(loom_run(rt) == LOOM_STOPPED);
  CHECK(now_s() - t0 < 1);
  signal(SIGALRM, SIG_DFL);
  CHECK(loom_close(rt) == LOOM_OK);
}

TEST(many_npcs_and_spinner) {
  errors e;
  loom_runtime *rt = new_runtime(NULL, &e);
  timing t;
  CHECK(spawn_code(
            rt,
            "ticks = 0\n"
            "local ev = loom.event()\n"
            "for i = 1, 1000 do loom.spawn(function()\n"
            "  local x = 0\n"
            "  while true do\n"
            "    for k = 1, 50 do x = x + k end\n"
            "    if i % 10 == 0 then ev:wait(0.02) else loom.sleep(0.01 + (i % 13) * 0.001) end\n"
            "    ticks = ticks + 1\n"
            "  end\n"
            "end) end\n"
            "loom.looping_call(0.05, function() ev:set(); ev:clear() end)\n") > 0);
  CHECK(spawn_code(rt, "while true do end") > 0);
  steps(rt, 20, &t);
  steps(rt, 100, &t);
  fprintf(stderr, "max %.2f ms, mean %.2f ms, ticks %lld\n", t.max * 1e3, t.sum / t.n * 1e3,
          (long long)global_int(rt, "ticks"));
  CHECK(t.max < BUDGET + MARGIN);
  CHECK(global_int(rt, "ticks") > 1000);
  CHECKF(e.n == 0, "%s", e.last);
  CHECK(loom_close(rt) == LOOM_OK);
}

HARNESS_MAIN
