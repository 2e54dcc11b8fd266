/*
 * test_api.c - every function of include/loom.h on its ordinary path and
 * on misuse (NULL, a closed runtime, bad options, calls from inside the
 * runtime's own drive): an error code, never a crash.
 */
#include <math.h>
#include <unistd.h>

#include <lualib.h>

#include "harness.h"

/* ------------------------------------------------------------ options / new */

TEST(options_init) {
  loom_options o;
  memset(&o, 0xff, sizeof o);
  loom_options_init(&o);
  CHECK(o.L == NULL && o.loop == NULL && o.memory_limit == 0);
  CHECK(o.slice == 0 && o.cpu_limit == 0 && o.sandbox == 0 && o.open_libs == 1);
  loom_options_init(NULL); /* no crash */
  CHECK(LOOM_VERSION_NUM == 100 && strcmp(LOOM_VERSION, "0.1.0") == 0);
}

TEST(new_defaults) {
  loom_runtime *rt = loom_new(NULL);
  lua_State *L;
  CHECK(rt != NULL);
  L = loom_state(rt);
  CHECK(L != NULL && loom_loop(rt) != NULL);
  CHECK(loom_from_state(L) == rt);
  lua_getglobal(L, "loom");
  CHECK(lua_istable(L, -1));
  lua_pop(L, 1);
  CHECK(run_chunk(rt, "assert(package.loaded.loom == loom and io and debug and os.execute)") ==
        LUA_OK);
  CHECK(loom_error_count(rt) == 0);
  CHECK(loom_memory(rt) > 10000);
  CHECK(loom_close(rt) == LOOM_OK);
}

TEST(new_bad_options) {
  loom_options o;
  lua_State *L;
  loom_options_init(&o);
  o.slice = -1;
  CHECK(loom_new(&o) == NULL);
  o.slice = NAN;
  CHECK(loom_new(&o) == NULL);
  o.slice = 0;
  o.cpu_limit = -0.5;
  CHECK(loom_new(&o) == NULL);
  o.cpu_limit = NAN;
  CHECK(loom_new(&o) == NULL);
  o.cpu_limit = 0;
  o.sandbox = 4;
  CHECK(loom_new(&o) == NULL);
  o.sandbox = LOOM_SANDBOX_NET; /* NET alone is meaningless */
  CHECK(loom_new(&o) == NULL);
  o.sandbox = 0;
  /* a memory limit needs loom's allocator */
  L = luaL_newstate();
  luaL_openlibs(L);
  o.L = L;
  o.memory_limit = 1 << 20;
  CHECK(loom_new(&o) == NULL);
  lua_close(L);
  /* a limit too small for the runtime itself: NULL, no crash, no leak */
  loom_options_init(&o);
  o.memory_limit = 2000;
  CHECK(loom_new(&o) == NULL);
  o.memory_limit = 40000;
  CHECK(loom_new(&o) == NULL);
}

TEST(new_given_state) {
  lua_State *L = luaL_newstate();
  loom_options o;
  loom_runtime *rt;
  errors e;
  luaL_openlibs(L);
  loom_options_init(&o);
  o.L = L;
  rt = new_runtime(&o, &e);
  CHECK(rt != NULL);
  CHECK(loom_state(rt) == L && loom_from_state(L) == rt);
  /* a second runtime in the same state is refused */
  CHECK(loom_new(&o) == NULL);
  CHECK(spawn_code(rt, "loom.sleep(0.01); done = 1") > 0);
  CHECK(loom_run(rt) == LOOM_OK);
  CHECK(global_int(rt, "done") == 1);
  CHECK(loom_close(rt) == LOOM_OK);
  /* the state keeps working as a plain state; rt is a closed runtime */
  CHECK(luaL_dostring(L, "x = 1 + 1") == LUA_OK);
  CHECK(loom_state(rt) == NULL && loom_loop(rt) == NULL);
  CHECK(loom_spawn_string(rt, "x = 1", NULL, 0) == LOOM_EINVAL);
  CHECK(loom_run(rt) == LOOM_EINVAL && loom_step(rt, 0.01) == LOOM_EINVAL);
  CHECK(loom_post(rt, (loom_post_fn)abort, NULL, NULL) == LOOM_EINVAL);
  CHECK(loom_error_count(rt) == LOOM_EINVAL && loom_interrupt(rt) == LOOM_EINVAL);
  CHECK(loom_close(rt) == LOOM_EINVAL); /* a second close: refused, rt still valid */
  lua_close(L);                         /* frees rt */
}

TEST(given_state_closed_first) {
  lua_State *L = luaL_newstate();
  loom_options o;
  loom_runtime *rt;
  luaL_openlibs(L);
  loom_options_init(&o);
  o.L = L;
  rt = loom_new(&o);
  CHECK(rt != NULL);
  CHECK(spawn_code(rt, "loom.sleep(10)") > 0);
  CHECK(loom_step(rt, 0.001) == LOOM_AGAIN);
  lua_close(L); /* the host closes the state under the runtime */
  CHECK(loom_state(rt) == NULL);
  CHECK(loom_spawn_string(rt, "x = 1", NULL, 0) == LOOM_EINVAL);
  CHECK(loom_step(rt, 0.01) == LOOM_EINVAL && loom_run(rt) == LOOM_EINVAL);
  CHECK(loom_next_timeout(rt) == -1 && loom_memory(rt) == 0);
  CHECK(loom_post(rt, (loom_post_fn)abort, NULL, NULL) == LOOM_EINVAL);
  CHECK(loom_set_error_handler(rt, NULL, NULL) == LOOM_EINVAL);
  CHECK(loom_close(rt) == LOOM_OK); /* frees rt */
}

static void host_tick(uv_timer_t *t) { (*(int *)t->data)++; }

TEST(new_given_loop) {
  uv_loop_t loop;
  uv_timer_t host_timer;
  int ticks = 0;
  loom_options o;
  loom_runtime *rt;
  CHECK(uv_loop_init(&loop) == 0);
  /* The host's own repeating timer: loom_close must not wait for it. */
  uv_timer_init(&loop, &host_timer);
  host_timer.data = &ticks;
  uv_timer_start(&host_timer, host_tick, 1, 1);
  loom_options_init(&o);
  o.loop = &loop;
  rt = loom_new(&o);
  CHECK(rt != NULL && loom_loop(rt) == &loop);
  CHECK(spawn_code(rt, "loom.sleep(0.02); done = 1") > 0);
  CHECK(spawn_code(rt, "loom.sleep(60)") > 0); /* still sleeping at close */
  while (global_int(rt, "done") != 1)
    CHECK(loom_step(rt, 0.005) == LOOM_AGAIN);
  CHECK(loom_close(rt) == LOOM_OK);
  /* the host's handle is still there, referenced, and the loop runs it */
  CHECK(uv_is_active((uv_handle_t *)&host_timer) && uv_has_ref((uv_handle_t *)&host_timer));
  ticks = 0;
  while (ticks < 3)
    uv_run(&loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&host_timer, NULL);
  CHECK(close_loop(&loop) == 0); /* loom left nothing behind */
}

TEST(open_libs_zero) {
  loom_options o;
  loom_runtime *rt;
  loom_options_init(&o);
  o.open_libs = 0;
  rt = loom_new(&o);
  CHECK(rt != NULL);
  CHECK(spawn_code(
            rt,
            "assert(io == nil and os == nil and debug == nil)\n"
            "local ch = loom.channel(1); ch:send(1); loom.sleep(0.001)\n"
            "ok = (ch:receive() == 1 and string.rep('a', 2) == 'aa' and math.pi and utf8) and 1") >
        0);
  CHECK(loom_run(rt) == LOOM_OK);
  CHECK(global_int(rt, "ok") == 1);
  CHECK(loom_close(rt) == LOOM_OK);
}

TEST(require_loom_runtime) {
  /* A runtime that require "loom" made belongs to its state. */
  lua_State *L = luaL_newstate();
  loom_runtime *rt;
  luaL_openlibs(L);
  luaL_requiref(L, "loom", luaopen_loom, 1);
  lua_pop(L, 1);
  rt = loom_from_state(L);
  CHECK(rt != NULL);
  CHECK(loom_close(rt) == LOOM_EINVAL);
  CHECK(loom_from_state(NULL) == NULL);
  CHECK(luaL_dostring(L, "loom.run(function() loom.sleep(0.001) end)") == LUA_OK);
  lua_close(L);
}

/* ------------------------------------------------------------ spawning */

TEST(spawn_string) {
  loom_runtime *rt = loom_new(NULL);
  lua_State *L = loom_state(rt);
  long long a, b;
  int top = lua_gettop(L);
  lua_pushinteger(L, 20);
  lua_pushstring(L, "x");
  a = loom_spawn_string(rt, "local n, s = ...; r1 = n .. s", "=one", 2);
  b = loom_spawn_string(rt, "r2 = 'two'", NULL, 0);
  CHECK(a > 0 && b == a + 1);
  CHECK(lua_gettop(L) == top);
  CHECK(loom_run(rt) == LOOM_OK);
  CHECK(strcmp(global_str(rt, "r1"), "20x") == 0 && strcmp(global_str(rt, "r2"), "two") == 0);
  /* a syntax error: LOOM_ERROR, arguments replaced by the message */
  lua_pushinteger(L, 1);
  CHECK(loom_spawn_string(rt, "this is not lua", "=bad", 1) == LOOM_ERROR);
  CHECK(lua_gettop(L) == top + 1 && strstr(lua_tostring(L, -1), "bad:1:") != NULL);
  lua_pop(L, 1);
  /* misuse: the stack is left alone */
  CHECK(loom_spawn_string(NULL, "x = 1", NULL, 0) == LOOM_EINVAL);
  CHECK(loom_spawn_string(rt, NULL, NULL, 0) == LOOM_EINVAL);
  CHECK(loom_spawn_string(rt, "x = 1", NULL, -1) == LOOM_EINVAL);
  CHECK(loom_spawn_string(rt, "x = 1", NULL, 5) == LOOM_EINVAL);
  CHECK(loom_spawn_string(rt, "x = 1", NULL, 300) == LOOM_EINVAL);
  CHECK(lua_gettop(L) == top);
  CHECK(loom_close(rt) == LOOM_OK);
}

TEST(spawn_file) {
  char path[] = "/tmp/loom_test_XXXXXX";
  int fd = mkstemp(path);
  loom_runtime *rt = loom_new(NULL);
  lua_State *L = loom_state(rt);
  int top = lua_gettop(L);
  const char *code = "local a = ...; from_file = a * 2\n";
  CHECK(fd >= 0);
  CHECK(write(fd, code, strlen(code)) == (ssize_t)strlen(code));
  close(fd);
  lua_pushinteger(L, 21);
  CHECK(loom_spawn_file(rt, path, 1) > 0);
  CHECK(lua_gettop(L) == top);
  CHECK(loom_run(rt) == LOOM_OK);
  CHECK(global_int(rt, "from_file") == 42);
  unlink(path);
  lua_pushinteger(L, 1);
  CHECK(loom_spawn_file(rt, path, 1) == LOOM_ERROR); /* gone now */
  CHECK(lua_gettop(L) == top + 1 && strstr(lua_tostring(L, -1), "loom_test_") != NULL);
  lua_pop(L, 1);
  CHECK(loom_spawn_file(NULL, path, 0) == LOOM_EINVAL);
  CHECK(loom_spawn_file(rt, path, 3) == LOOM_EINVAL);
  CHECK(loom_close(rt) == LOOM_OK);
}

static int add_results(lua_State *L) {
  lua_pushinteger(L, luaL_checkinteger(L, 1) + luaL_checkinteger(L, 2));
  lua_setglobal(L, "sum");
  return 0;
}

TEST(spawn_function) {
  loom_runtime *rt = loom_new(NULL);
  lua_State *L = loom_state(rt);
  int top = lua_gettop(L);
  lua_pushcfunction(L, add_results);
  lua_pushinteger(L, 40);
  lua_pushinteger(L, 2);
  CHECK(loom_spawn(rt, 2) > 0);
  CHECK(lua_gettop(L) == top);
  CHECK(loom_run(rt) == LOOM_OK);
  CHECK(global_int(rt, "sum") == 42);
  /* not a function below the arguments: refused, stack unchanged */
  lua_pushinteger(L, 1);
  lua_pushinteger(L, 2);
  CHECK(loom_spawn(rt, 1) == LOOM_EINVAL);
  CHECK(loom_spawn(rt, 2) == LOOM_EINVAL);
  CHECK(lua_gettop(L) == top + 2);
  lua_settop(L, top);
  CHECK(loom_spawn(NULL, 0) == LOOM_EINVAL);
  CHECK(loom_spawn(rt, -1) == LOOM_EINVAL);
  CHECK(loom_close(rt) == LOOM_OK);
}

/* ------------------------------------------------------------ driving */

TEST(run_results) {
  errors e;
  loom_runtime *rt = new_runtime(NULL, &e);
  CHECK(spawn_code(rt, "local ch = loom.channel(); ch:receive()") > 0);
  CHECK(loom_run(rt) == LOOM_DEADLOCK);
  CHECK(e.n == 1 && strstr(e.last, "all tasklets are asleep") != NULL);
  CHECK(spawn_code(rt, "loom.spawn(function() loom.sleep(5) end); loom.stop()") > 0);
  CHECK(loom_run(rt) == LOOM_STOPPED);
  CHECK(loom_run(NULL) == LOOM_EINVAL);
  CHECK(loom_close(rt) == LOOM_OK); /* the sleeper is killed */
}

static int reentrant_rc[4];

static int call_api_inside(lua_State *L) {
  loom_runtime *rt = loom_from_state(L);
  reentrant_rc[0] = loom_run(rt);
  reentrant_rc[1] = loom_step(rt, 0.01);
  reentrant_rc[2] = loom_close(rt);
  reentrant_rc[3] = loom_spawn_string(rt, "inner = 1", NULL, 0) > 0;
  return 0;
}

TEST(reentrant_calls) {
  loom_runtime *rt = loom_new(NULL);
  lua_register(loom_state(rt), "call_api_inside", call_api_inside);
  CHECK(spawn_code(rt, "call_api_inside()") > 0);
  CHECK(loom_run(rt) == LOOM_OK);
  CHECK(reentrant_rc[0] == LOOM_EINVAL && reentrant_rc[1] == LOOM_EINVAL);
  CHECK(reentrant_rc[2] == LOOM_EINVAL && reentrant_rc[3] == 1);
  CHECK(global_int(rt, "inner") == 1); /* the spawned one ran in the same drive */
  CHECK(loom_close(rt) == LOOM_OK);
}

TEST(step_basic) {
  loom_runtime *rt = loom_new(NULL);
  int rc, steps = 0;
  CHECK(loom_step(rt, 0.01) == LOOM_OK); /* nothing to do */
  CHECK(spawn_code(rt, "for i = 1, 3 do loom.sleep(0.01) end; done = 1") > 0);
  while ((rc = loom_step(rt, 0.002)) == LOOM_AGAIN && steps < 10000) {
    steps++;
    usleep(1000);
  }
  CHECK(rc == LOOM_OK && global_int(rt, "done") == 1);
  CHECK(steps >= 3);
  CHECK(loom_step(NULL, 0.01) == LOOM_EINVAL);
  CHECK(loom_step(rt, -1) == LOOM_EINVAL);
  CHECK(loom_step(rt, NAN) == LOOM_EINVAL);
  CHECK(loom_step(rt, INFINITY) == LOOM_OK); /* clamped, nothing to do */
  CHECK(loom_close(rt) == LOOM_OK);
}

TEST(step_restores_slice) {
  loom_options o;
  loom_runtime *rt;
  loom_options_init(&o);
  o.slice = 0.25;
  rt = loom_new(&o);
  CHECK(spawn_code(rt, "in_step = loom.config().slice") > 0);
  CHECK(loom_step(rt, 0.004) == LOOM_OK);
  CHECK(run_chunk(rt, "after = loom.config().slice") == LUA_OK);
  lua_getglobal(loom_state(rt), "in_step");
  lua_getglobal(loom_state(rt), "after");
  CHECK(lua_tonumber(loom_state(rt), -2) <= 0.0005 && lua_tonumber(loom_state(rt), -1) == 0.25);
  lua_pop(loom_state(rt), 2);
  CHECK(loom_close(rt) == LOOM_OK);
}

TEST(step_stop) {
  loom_runtime *rt = loom_new(NULL);
  CHECK(spawn_code(rt, "loom.stop(); loom.sleep(0.001); after = 1") > 0);
  CHECK(loom_step(rt, 0.01) == LOOM_STOPPED);
  while (global_int(rt, "after") != 1)
    CHECK(loom_step(rt, 0.01) >= LOOM_AGAIN);
  CHECK(loom_close(rt) == LOOM_OK);
}

static void nothing(loom_runtime *rt, void *ud) {
  (void)rt;
  (void)ud;
}

TEST(next_timeout) {
  loom_runtime *rt = loom_new(NULL);
  double t;
  CHECK(loom_next_timeout(rt) == -1);
  CHECK(spawn_code(rt, "loom.sleep(0.2)") > 0);
  CHECK(loom_next_timeout(rt) == 0); /* ready */
  CHECK(loom_step(rt, 0.01) == LOOM_AGAIN);
  t = loom_next_timeout(rt);
  CHECK(t > 0.1 && t <= 0.2);
  CHECK(loom_post(rt, nothing, NULL, NULL) == LOOM_OK);
  CHECK(loom_next_timeout(rt) == 0); /* a post waits */
  CHECK(loom_step(rt, 0.01) == LOOM_AGAIN);
  CHECK(loom_next_timeout(rt) > 0);
  CHECK(loom_next_timeout(NULL) == -1);
  CHECK(loom_close(rt) == LOOM_OK);
}

/* ------------------------------------------------------------ errors */

TEST(error_handler) {
  errors e;
  loom_runtime *rt = new_runtime(NULL, &e);
  CHECK(spawn_code(rt, "local function inner() error('boom') end\n"
                       "loom.spawn(function() inner() end)") > 0);
  CHECK(loom_run(rt) == LOOM_OK);
  CHECK(e.n == 1 && loom_error_count(rt) == 1);
  CHECK(strstr(e.last, "boom") != NULL && strstr(e.last, "traceback") != NULL);
  CHECK(strstr(e.last, "inner") != NULL && strstr(e.last, "spawned at") != NULL);
  /* joined errors are not reported */
  CHECK(spawn_code(rt, "local t = loom.spawn(error, 'x'); t:join()") > 0);
  CHECK(loom_run(rt) == LOOM_OK && e.n == 1);
  CHECK(loom_set_error_handler(NULL, collect_error, &e) == LOOM_EINVAL);
  CHECK(loom_error_count(NULL) == LOOM_EINVAL);
  CHECK(loom_set_error_handler(rt, NULL, NULL) == LOOM_OK); /* back to stderr */
  CHECK(loom_close(rt) == LOOM_OK);
}

TEST(memory_count) {
  loom_runtime *rt = loom_new(NULL);
  size_t before = loom_memory(rt);
  CHECK(run_chunk(rt, "big = string.rep('x', 4 << 20)") == LUA_OK);
  CHECK(loom_memory(rt) > before + (3 << 20));
  CHECK(loom_memory(NULL) == 0);
  CHECK(loom_close(rt) == LOOM_OK);
}

/* ------------------------------------------------------------ control */

static int interrupt_me(lua_State *L) {
  lua_pushboolean(L, loom_interrupt(loom_from_state(L)) == LOOM_OK);
  return 1;
}

TEST(interrupt_same_thread) {
  loom_runtime *rt = loom_new(NULL);
  int rc;
  lua_register(loom_state(rt), "interrupt_me", interrupt_me);
  /* loom_run without a slice: the hook that loom_interrupt sets stops the spin */
  CHECK(spawn_code(rt, "assert(interrupt_me()); while true do end") > 0);
  CHECK(loom_run(rt) == LOOM_STOPPED);
  /* an interrupt between drives stops the next one at once */
  CHECK(loom_interrupt(rt) == LOOM_OK);
  CHECK(loom_step(rt, 0.01) == LOOM_STOPPED);
  rc = loom_step(rt, 0.002); /* the spinner is still there, preempted */
  CHECK(rc == LOOM_AGAIN);
  CHECK(loom_interrupt(NULL) == LOOM_EINVAL);
  CHECK(loom_close(rt) == LOOM_OK);
}

/* ------------------------------------------------------------ posts */

static void record_post(loom_runtime *rt, void *ud) {
  lua_State *L = loom_state(rt);
  lua_getglobal(L, "posts");
  lua_pushinteger(L, (lua_Integer)(intptr_t)ud);
  lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
  lua_pop(L, 1);
}

static int drops;
static void count_drop(loom_runtime *rt, void *ud) {
  (void)rt;
  drops += (int)(intptr_t)ud;
}

static void raise_in_post(loom_runtime *rt, void *ud) {
  (void)ud;
  luaL_error(loom_state(rt), "posted boom");
}

TEST(post_same_thread) {
  errors e;
  loom_runtime *rt = new_runtime(NULL, &e);
  intptr_t i;
  CHECK(run_chunk(rt, "posts = {}") == LUA_OK);
  for (i = 1; i <= 5; i++)
    CHECK(loom_post(rt, record_post, NULL, (void *)i) == LOOM_OK);
  CHECK(loom_post(rt, raise_in_post, NULL, NULL) == LOOM_OK);
  CHECK(loom_post(rt, record_post, NULL, (void *)6) == LOOM_OK);
  CHECK(loom_step(rt, 0.01) == LOOM_OK);
  CHECK(run_chunk(rt, "assert(#posts == 6, #posts); for i = 1, 6 do assert(posts[i] == i) end") ==
        LUA_OK);
  CHECK(e.n == 1 && strstr(e.last, "posted boom") != NULL);
  CHECK(loom_post(NULL, record_post, NULL, NULL) == LOOM_EINVAL);
  CHECK(loom_post(rt, NULL, NULL, NULL) == LOOM_EINVAL);
  /* queued at close: dropped, not run */
  drops = 0;
  CHECK(loom_post(rt, record_post, count_drop, (void *)1) == LOOM_OK);
  CHECK(loom_post(rt, record_post, count_drop, (void *)10) == LOOM_OK);
  CHECK(loom_close(rt) == LOOM_OK);
  CHECK(drops == 11);
}

TEST(post_message) {
  errors e;
  loom_runtime *rt = new_runtime(NULL, &e);
  CHECK(run_chunk(rt, "got = {}; function on_msg(m) got[#got + 1] = m end") == LUA_OK);
  CHECK(loom_post_message(rt, "on_msg", "a\0b", 3) == LOOM_OK);
  CHECK(loom_post_message(rt, "on_msg", NULL, 0) == LOOM_OK);
  CHECK(loom_post_message(rt, "no_such_handler", "x", 1) == LOOM_OK);
  CHECK(loom_run(rt) == LOOM_OK); /* no work: posts do not keep loom_run going */
  CHECK(loom_step(rt, 0.01) >= LOOM_AGAIN);
  CHECK(loom_step(rt, 0.01) >= LOOM_AGAIN);
  CHECK(run_chunk(rt, "assert(#got == 2 and got[1] == 'a\\0b' and got[2] == '')") == LUA_OK);
  CHECK(e.n == 1 && strstr(e.last, "no_such_handler") != NULL);
  CHECK(loom_post_message(NULL, "on_msg", "x", 1) == LOOM_EINVAL);
  CHECK(loom_post_message(rt, NULL, "x", 1) == LOOM_EINVAL);
  CHECK(loom_post_message(rt, "on_msg", NULL, 5) == LOOM_EINVAL);
  CHECK(loom_close(rt) == LOOM_OK);
}

TEST(close_misuse) { CHECK(loom_close(NULL) == LOOM_EINVAL); }

HARNESS_MAIN
