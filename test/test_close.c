/*
 * test_close.c - loom_close with work in flight: tasklets (running,
 * sleeping, blocked on channels, joins, events, pendings), timers,
 * reactor callbacks, Deferreds, queued posts, sockets and processes when
 * those modules are there. Nothing leaks (the ASan build checks), nothing
 * reaches Lua after close begins, and a given loop is left with none of
 * loom's handles: uv_loop_close returns 0.
 */
#include <unistd.h>

#include <lualib.h>

#include "harness.h"

static const char busy_world[] =
    "local ch = loom.channel()\n"
    "local ev = loom.event()\n"
    "for i = 1, 50 do loom.spawn(function() loom.sleep(100 + i) end) end\n"
    "for i = 1, 20 do loom.spawn(function() ch:receive() end) end\n"
    "for i = 1, 20 do loom.spawn(function() ev:wait() end) end\n"
    "local sleeper = loom.spawn(function() loom.sleep(1000) end)\n"
    "for i = 1, 10 do loom.spawn(function() sleeper:join() end) end\n"
    "for i = 1, 10 do loom.spawn(function()\n"
    "  local x <close> = setmetatable({}, {__close = function() closed = (closed or 0) + 1 end})\n"
    "  loom.sleep(1000)\n"
    "end) end\n"
    "loom.call_later(500, function() late = 1 end)\n"
    "loom.looping_call(0.001, function() loops = (loops or 0) + 1 end)\n"
    "local d = loom.deferred(); d:add_callback(function() late = 2 end)\n"
    "loom.spawn(function() while true do loom.yield() end end)\n"
    "started = 1\n";

/* A given loop: after loom_close, libuv must find nothing of loom's. */
TEST(close_busy_runtime_given_loop) {
  uv_loop_t loop;
  loom_options o;
  loom_runtime *rt;
  errors e;
  int i;
  CHECK(uv_loop_init(&loop) == 0);
  loom_options_init(&o);
  o.loop = &loop;
  rt = new_runtime(&o, &e);
  CHECK(spawn_code(rt, busy_world) > 0);
  for (i = 0; i < 10; i++)
    CHECK(loom_step(rt, 0.002) == LOOM_AGAIN);
  CHECK(global_int(rt, "started") == 1);
  CHECK(loom_close(rt) == LOOM_OK);
  CHECK(e.n == 0);
  CHECK(close_loop(&loop) == 0);
}

TEST(close_busy_runtime_own_loop) {
  errors e;
  loom_runtime *rt = new_runtime(NULL, &e);
  int i;
  CHECK(spawn_code(rt, busy_world) > 0);
  for (i = 0; i < 10; i++)
    CHECK(loom_step(rt, 0.002) == LOOM_AGAIN);
  CHECK(loom_close(rt) == LOOM_OK);
  CHECK(e.n == 0);
}

TEST(close_runs_close_handlers) {
  /* With a given state the state outlives the runtime: the <close>
   * handlers ran, the reactor callbacks did not. */
  lua_State *L = luaL_newstate();
  loom_options o;
  loom_runtime *rt;
  int i;
  luaL_openlibs(L);
  loom_options_init(&o);
  o.L = L;
  rt = loom_new(&o);
  CHECK(spawn_code(rt, busy_world) > 0);
  for (i = 0; i < 5; i++)
    loom_step(rt, 0.002);
  CHECK(loom_close(rt) == LOOM_OK);
  CHECK(luaL_dostring(L, "assert(closed == 10, closed); assert(late == nil)\n"
                         "local n = loops; return n") == LUA_OK);
  lua_close(L);
}

static int inner_close_rc = 1;
static void close_inside_post(loom_runtime *rt, void *ud) {
  (void)ud;
  inner_close_rc = loom_close(rt);
}

static int handler_close_rc = 1;
static void close_inside_handler(void *ud, loom_runtime *rt, const char *message) {
  (void)ud;
  (void)message;
  handler_close_rc = loom_close(rt);
}

TEST(close_from_inside_refused) {
  loom_runtime *rt = loom_new(NULL);
  CHECK(loom_post(rt, close_inside_post, NULL, NULL) == LOOM_OK);
  CHECK(loom_step(rt, 0.01) == LOOM_OK);
  CHECK(inner_close_rc == LOOM_EINVAL);
  loom_set_error_handler(rt, close_inside_handler, NULL);
  CHECK(spawn_code(rt, "error('x')") > 0);
  CHECK(loom_run(rt) == LOOM_OK);
  CHECK(handler_close_rc == LOOM_EINVAL);
  /* an error during close reaches the handler, which may not close again */
  handler_close_rc = 1;
  CHECK(spawn_code(rt, "loom.on_shutdown(function() error('late') end); loom.sleep(10)") > 0);
  CHECK(loom_step(rt, 0.01) == LOOM_AGAIN);
  CHECK(loom_close(rt) == LOOM_OK);
  CHECK(handler_close_rc == LOOM_EINVAL);
}

static int dropped_count;
static void never_runs(loom_runtime *rt, void *ud) {
  (void)rt;
  (void)ud;
  abort();
}
static void dropped(loom_runtime *rt, void *ud) {
  (void)rt;
  dropped_count++;
  free(ud);
}

TEST(close_drops_queued_posts) {
  loom_runtime *rt = loom_new(NULL);
  int i;
  dropped_count = 0;
  for (i = 0; i < 1000; i++)
    CHECK(loom_post(rt, never_runs, dropped, malloc(16)) == LOOM_OK);
  CHECK(loom_close(rt) == LOOM_OK);
  CHECK(dropped_count == 1000);
}

TEST(close_with_spinners) {
  loom_options o;
  loom_runtime *rt;
  double t0;
  loom_options_init(&o);
  o.slice = 0.001;
  rt = loom_new(&o);
  CHECK(spawn_code(rt, "for i = 1, 10 do loom.spawn(function() while true do end end) end") > 0);
  CHECK(spawn_code(rt, "for i = 1, 10 do loom.spawn(function()\n"
                       "  while true do pcall(function() while true do end end) end\n"
                       "end) end") > 0);
  CHECK(loom_step(rt, 0.005) == LOOM_AGAIN);
  t0 = now_s();
  CHECK(loom_close(rt) == LOOM_OK);
  CHECK(now_s() - t0 < 5);
}

/* Sockets and processes: only when the modules are there (other parts of
 * loom provide them). */
static int has_module(loom_runtime *rt, const char *name) {
  lua_State *L = loom_state(rt);
  int yes;
  lua_getglobal(L, "loom");
  lua_getfield(L, -1, name);
  yes = lua_istable(L, -1);
  lua_pop(L, 2);
  return yes;
}

TEST(close_with_sockets_in_flight) {
  uv_loop_t loop;
  loom_options o;
  loom_runtime *rt;
  errors e;
  int i;
  CHECK(uv_loop_init(&loop) == 0);
  loom_options_init(&o);
  o.loop = &loop;
  rt = new_runtime(&o, &e);
  if (!has_module(rt, "tcp") || !has_module(rt, "udp")) {
    fprintf(stderr, "loom.tcp/udp not there: skipped\n");
    loom_close(rt);
    CHECK(close_loop(&loop) == 0);
    return;
  }
  CHECK(spawn_code(rt, "local server = assert(loom.tcp.listen('127.0.0.1', 0))\n"
                       "local host, port = server:sockname()\n"
                       "loom.spawn(function()\n"
                       "  while true do\n"
                       "    local c = server:accept()\n"
                       "    if not c then return end\n"
                       "    loom.spawn(function() while c:read() do end end)\n"
                       "  end\n"
                       "end)\n"
                       "conns = {}\n"
                       "for i = 1, 10 do\n"
                       "  local c = assert(loom.tcp.connect(host, port))\n"
                       "  conns[i] = c\n"
                       "  loom.spawn(function() c:write(string.rep('x', 1 << 16)); c:read() end)\n"
                       "end\n"
                       "local u = assert(loom.udp.bind('127.0.0.1', 0))\n"
                       "loom.spawn(function() u:receive() end)\n"
                       "ready = 1\n"
                       "loom.sleep(100)") > 0);
  for (i = 0; i < 200 && global_int(rt, "ready") != 1; i++)
    loom_step(rt, 0.005);
  CHECK(global_int(rt, "ready") == 1);
  for (i = 0; i < 5; i++)
    loom_step(rt, 0.005);
  CHECK(loom_close(rt) == LOOM_OK);
  CHECK(close_loop(&loop) == 0);
}

TEST(close_with_processes_in_flight) {
  uv_loop_t loop;
  loom_options o;
  loom_runtime *rt;
  errors e;
  int i;
  CHECK(uv_loop_init(&loop) == 0);
  loom_options_init(&o);
  o.loop = &loop;
  rt = new_runtime(&o, &e);
  if (!has_module(rt, "process")) {
    fprintf(stderr, "loom.process not there: skipped\n");
    loom_close(rt);
    CHECK(close_loop(&loop) == 0);
    return;
  }
  CHECK(spawn_code(rt,
                   "procs = {}\n"
                   "for i = 1, 3 do\n"
                   "  local p = assert(loom.process.spawn('sleep', {'30'}, {stdout = 'pipe'}))\n"
                   "  procs[i] = p\n"
                   "  loom.spawn(function() p:wait() end)\n"
                   "  loom.spawn(function() p.stdout:read() end)\n"
                   "end\n"
                   "ready = 1\n") > 0);
  for (i = 0; i < 200 && global_int(rt, "ready") != 1; i++)
    loom_step(rt, 0.005);
  CHECK(global_int(rt, "ready") == 1);
  CHECK(loom_close(rt) == LOOM_OK);
  CHECK(close_loop(&loop) == 0);
}

HARNESS_MAIN
