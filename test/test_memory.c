/*
 * test_memory.c - loom_options.memory_limit: a script that allocates
 * without bound gets "not enough memory" in its own tasklet, and the host
 * and the other tasklets carry on; the memory comes back.
 */
#include "harness.h"

#define LIMIT (32u << 20)

static loom_runtime *limited(errors *e) {
  loom_options o;
  loom_options_init(&o);
  o.memory_limit = LIMIT;
  return new_runtime(&o, e);
}

static const char bystander[] =
    "for i = 1, 40 do loom.sleep(0.002); local t = {} for k = 1, 100 do t[k] = k end;"
    " by = i end";

/* Steps for at most `seconds` until the bystander finished and an error
 * came; each step must end normally. */
static int step_until_done(loom_runtime *rt, errors *e, double seconds) {
  double end = now_s() + seconds;
  while (now_s() < end && (e->n == 0 || global_int(rt, "by") < 40))
    if (loom_step(rt, 0.005) < LOOM_AGAIN)
      return 0;
  return 1;
}

/* After a hog died: memory is back well under the limit, and new work runs. */
static int recovered(loom_runtime *rt) {
  if (run_chunk(rt, "collectgarbage(); collectgarbage()") != LUA_OK)
    return 0;
  if (loom_memory(rt) > LIMIT / 4) {
    fprintf(stderr, "still %zu bytes in use\n", loom_memory(rt));
    return 0;
  }
  if (spawn_code(rt, "after = #string.rep('y', 1 << 20)") <= 0 || loom_run(rt) != LOOM_OK)
    return 0;
  return global_int(rt, "after") == 1 << 20;
}

TEST(unbounded_table_of_strings) {
  errors e;
  loom_runtime *rt = limited(&e);
  CHECK(rt != NULL);
  CHECK(spawn_code(rt, bystander) > 0);
  CHECK(spawn_code(rt, "local t, i = {}, 0\n"
                       "while true do i = i + 1; t[i] = string.rep('x', 1000) .. i end") > 0);
  CHECK(loom_run(rt) == LOOM_OK);
  CHECK(e.n == 1 && strstr(e.last, "not enough memory") != NULL);
  CHECK(global_int(rt, "by") == 40);
  CHECK(recovered(rt));
  CHECK(loom_close(rt) == LOOM_OK);
}

TEST(huge_string_caught_by_pcall) {
  errors e;
  loom_runtime *rt = limited(&e);
  CHECK(spawn_code(
            rt,
            "local ok, err = pcall(string.rep, 'x', 1 << 30)\n"
            "r = (not ok and tostring(err):find('not enough memory')) and 1 or 0\n"
            "local ok2 = pcall(function() local s = ('x'):rep(1 << 24) .. ('y'):rep(1 << 24) end)\n"
            "r2 = ok2 and 0 or 1") > 0);
  CHECK(spawn_code(rt, bystander) > 0);
  CHECK(loom_run(rt) == LOOM_OK);
  CHECK(global_int(rt, "r") == 1 && global_int(rt, "r2") == 1 && e.n == 0);
  CHECK(global_int(rt, "by") == 40);
  CHECK(recovered(rt));
  CHECK(loom_close(rt) == LOOM_OK);
}

TEST(table_growth) {
  errors e;
  loom_runtime *rt = limited(&e);
  CHECK(spawn_code(rt, bystander) > 0);
  CHECK(spawn_code(rt, "local t = {} for i = 1, math.maxinteger do t[i] = i end") > 0);
  CHECK(loom_run(rt) == LOOM_OK);
  CHECK(e.n == 1 && strstr(e.last, "not enough memory") != NULL);
  CHECK(global_int(rt, "by") == 40);
  CHECK(recovered(rt));
  CHECK(loom_close(rt) == LOOM_OK);
}

TEST(spawn_flood) {
  /* The flood's sleepers keep their memory after the spawner died, so the
   * runtime stays full: the host carries on and closes it cleanly. */
  errors e;
  loom_runtime *rt = limited(&e);
  double end = now_s() + 20;
  CHECK(spawn_code(rt, "while true do loom.spawn(function() loom.sleep(100) end) end") > 0);
  while (e.n == 0 && now_s() < end)
    CHECK(loom_step(rt, 0.005) >= LOOM_AGAIN);
  CHECK(e.n >= 1 && strstr(e.last, "not enough memory") != NULL);
  CHECK(loom_step(rt, 0.005) == LOOM_AGAIN);
  CHECK(loom_close(rt) == LOOM_OK); /* tens of thousands of sleepers killed */
}

TEST(channel_flood_in_steps) {
  errors e;
  loom_runtime *rt = limited(&e);
  CHECK(spawn_code(rt, bystander) > 0);
  CHECK(spawn_code(rt, "local ch = loom.channel(1 << 40)\n"
                       "while true do ch:send(string.rep('z', 200)) end") > 0);
  CHECK(step_until_done(rt, &e, 20));
  CHECK(e.n == 1 && strstr(e.last, "not enough memory") != NULL);
  CHECK(global_int(rt, "by") == 40);
  CHECK(recovered(rt));
  CHECK(loom_close(rt) == LOOM_OK);
}

TEST(repeated_hogs) {
  errors e;
  loom_runtime *rt = limited(&e);
  int round;
  for (round = 1; round <= 5; round++) {
    CHECK(spawn_code(rt, "local t = {} while true do t[#t + 1] = {1, 2, 3, 4} end") > 0);
    CHECK(loom_run(rt) == LOOM_OK);
    CHECK(e.n == round);
  }
  CHECK(recovered(rt));
  CHECK(loom_close(rt) == LOOM_OK);
}

TEST(host_allocations_are_limited_too) {
  errors e;
  loom_runtime *rt = limited(&e);
  lua_State *L = loom_state(rt);
  /* the host's own Lua calls may use the small reserve, never much more */
  CHECK(luaL_dostring(L, "big = string.rep('x', 64 << 20)") != LUA_OK);
  CHECK(strstr(lua_tostring(L, -1), "not enough memory") != NULL);
  lua_pop(L, 1);
  CHECK(recovered(rt));
  CHECK(loom_close(rt) == LOOM_OK);
}

HARNESS_MAIN
