/*
 * preempt.c - time slices and CPU limits through Lua 5.4's count hook.
 *
 * With loom.config{ slice = s } every tasklet thread carries a count hook;
 * every LOOM_HOOK_COUNT instructions it reads the clock, and a tasklet that
 * has run longer than the slice yields from the hook (allowed for count
 * hooks) and goes to the back of the run queue. cpu_limit kills a tasklet
 * that has run that long without waiting. The hook costs a VM check per
 * instruction, so it is only installed when one of the two is set.
 */
#include "loom_int.h"

#define LOOM_HOOK_COUNT 1000

static void hook(lua_State *L, lua_Debug *ar) {
  loom_runtime *rt = loom__runtime(L);
  loom_tasklet *t;
  uint64_t now;
  (void)ar;
  if (!rt || !(t = rt->current) || t->L != L)
    return; /* only at a tasklet's own level, never inside generators */
  if (t->flags & LOOM_T_PENDING)
    loom__check_pending(L, rt, t);
  if (rt->interrupted && lua_isyieldable(L)) {
    lua_yield(L, 0);
    return;
  }
  if (!rt->hooked)
    return;
  now = uv_hrtime();
  if (rt->cpu_limit > 0 && (double)(now - rt->burst_start) > rt->cpu_limit * LOOM_NS_PER_S) {
    t->flags |= LOOM_T_KILLED;
    loom__error_new(L, rt, LOOM_E_TASKLETEXIT, "killed: cpu_limit exceeded", 0);
    lua_error(L);
  }
  if (rt->slice > 0 && (double)(now - rt->run_start) > rt->slice * LOOM_NS_PER_S &&
      lua_isyieldable(L)) {
    rt->preemptions++;
    lua_yield(L, 0);
  }
}

/* Installs or removes the hook on a tasklet thread about to be resumed. */
void loom__preempt_setup(loom_runtime *rt, lua_State *co) {
  if (rt->hooked) {
    if (lua_gethook(co) != hook)
      lua_sethook(co, hook, LUA_MASKCOUNT, LOOM_HOOK_COUNT);
  } else if (lua_gethook(co) == hook)
    lua_sethook(co, NULL, 0, 0);
}

/* Set by loom_interrupt (possibly from a signal handler) on the running
 * tasklet's thread: at the next instruction, put the normal hook back and
 * yield, so the drive loop regains control and sees the interrupt. */
void loom__interrupt_hook(lua_State *L, lua_Debug *ar) {
  loom_runtime *rt = loom__runtime(L);
  if (!rt)
    return;
  if (rt->hooked)
    lua_sethook(L, hook, LUA_MASKCOUNT, LOOM_HOOK_COUNT);
  else
    lua_sethook(L, NULL, 0, 0);
  if (ar->event == LUA_HOOKCOUNT && rt->current && rt->current->L == L && lua_isyieldable(L))
    lua_yield(L, 0);
}
