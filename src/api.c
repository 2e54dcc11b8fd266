/*
 * api.c - the public C API of include/loom.h: creating and closing a
 * runtime for a host (with its memory limit), spawning, driving it
 * (loom_run, loom_step), interrupting, error reports. Posts are in post.c,
 * blocking C calls in pending.c, the sandbox in sandbox.c; host.h holds
 * the host side of a runtime they share.
 *
 * The guard lives here too: it stops code that the count hook cannot
 * preempt (reactor callbacks, coroutines, callbacks of C functions) once a
 * step has overrun, and bounds the unwinding at loom_close.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lualib.h>

#include "host.h"

/* Instructions between two looks of the guard hook (as preempt.c). */
#define GUARD_COUNT 1000

/* ------------------------------------------------------------ memory limit */

/* With a limit, script code (a tasklet, a reactor callback) is held to it;
 * loom's own bookkeeping between two tasklets may dip into a small reserve
 * above it, so that the tasklet that hit the limit can still be reported
 * and unwound, after which its memory is garbage and the others carry on. */
typedef struct limit_alloc {
  size_t used, limit, reserve;
  loom_runtime *rt; /* NULL while the runtime is being created: no reserve */
} limit_alloc;

static void *limited_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  limit_alloc *a = ud;
  size_t old = ptr ? osize : 0;
  if (nsize == 0) {
    free(ptr);
    a->used -= old;
    return NULL;
  }
  if (nsize > old) {
    size_t cap = a->limit;
    loom_runtime *rt = a->rt;
    if (rt && !rt->current && !rt->in_reactor)
      cap += a->reserve;
    if (nsize > cap || a->used - old > cap - nsize)
      return NULL; /* Lua collects, retries once, then raises "not enough memory" */
  }
  ptr = realloc(ptr, nsize);
  if (ptr)
    a->used = a->used - old + nsize;
  return ptr;
}

/* ------------------------------------------------------------ host state */

static host_state *host_of(loom_runtime *rt) { return rt ? rt->posts : NULL; }

/* A runtime the host may drive: created, not closed, not closing. */
static int usable(loom_runtime *rt) {
  return rt && !rt->state_closed && !rt->closing && rt->posts && !rt->posts->closing;
}

/* Not from inside its own drive, a posted function or a close. */
static int idle(loom_runtime *rt) { return !rt->driving && !rt->posts->in_posts; }

static void note_driver(host_state *q) {
  atomic_store_explicit(&q->driver, uv_thread_self(), memory_order_relaxed);
}

/* rt->interrupted is a plain volatile int that sched.c and preempt.c poll
 * (the drive loop, the count hook). loom_interrupt from another thread or
 * a signal handler sets it with an atomic store: a deliberate, benign race
 * in the manner of lua.c's SIGINT flag, kept out of ThreadSanitizer's view
 * until the core reads the flag atomically (see docs/embedding.md). */
__attribute__((no_sanitize("thread"))) static void set_interrupted(loom_runtime *rt) {
  __atomic_store_n(&rt->interrupted, 1, __ATOMIC_RELEASE);
}

/* ------------------------------------------------------------ guard */

/* CPU time of the calling thread, in nanoseconds. */
static uint64_t thread_cpu_ns(void) {
  struct timespec ts;
  if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0)
    return 0;
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Arms the guard: code that cannot be preempted is stopped once `wall` ns
 * of wall time have passed and the thread has used `cpu` ns of CPU. */
static void guard_arm(host_state *q, uint64_t wall_at, uint64_t cpu) {
  q->guard_at = wall_at;
  q->guard_cpu0 = thread_cpu_ns();
  q->guard_cpu = cpu;
}

/* The count hook preempts a tasklet only at its own level and where it can
 * yield (preempt.c). Elsewhere nothing could stop a spin: reactor
 * callbacks (rt->RL), code on the main thread (error reports, posted
 * functions), coroutines that scripts create, and - in a sandbox -
 * callbacks of C functions such as table.sort. There this hook raises an
 * error once a step has overrun its budget by another budget, on an
 * interrupt, or (inside a tasklet) when cpu_limit is exceeded. The strict
 * variant is set for the length of a guarded C call on a tasklet's own
 * thread (sandbox.c); the plain one gives a tasklet's thread back to
 * preempt.c. */
static void guard_check(lua_State *L, int strict) {
  loom_runtime *rt = loom__runtime(L);
  host_state *q;
  loom_tasklet *t;
  uint64_t now;
  if (!rt || !(q = rt->posts))
    return;
  t = rt->current;
  if (!strict && t && t->L == L) {
    lua_sethook(L, NULL, 0, 0); /* inherited by a tasklet thread: not ours */
    return;
  }
  if (rt->interrupted && rt->driving)
    luaL_error(L, "interrupted");
  if (!q->guard_at && !(rt->cpu_limit > 0 && t))
    return;
  now = uv_hrtime();
  if (q->guard_at && now > q->guard_at && thread_cpu_ns() - q->guard_cpu0 > q->guard_cpu)
    luaL_error(L, "stopped: code that cannot be preempted ran past the end of the step");
  if (rt->cpu_limit > 0 && t && (double)(now - rt->burst_start) > rt->cpu_limit * LOOM_NS_PER_S) {
    /* The same kill as preempt.c's: it unwinds through the generators. */
    t->flags |= LOOM_T_KILLED;
    loom__error_new(L, rt, LOOM_E_TASKLETEXIT, "killed: cpu_limit exceeded", 0);
    lua_error(L);
  }
}

static void guard_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  guard_check(L, 0);
}

LOOM_HIDDEN void loom__guard_hook_strict(lua_State *L, lua_Debug *ar) {
  (void)ar;
  guard_check(L, 1);
}

/* The threads loom runs reactor callbacks and host code on carry the
 * guard only while it can fire: during loom_step and loom_close, and
 * throughout with a slice, a cpu_limit or a sandbox (a count hook costs
 * every instruction a check). A hook the host set on the main thread is
 * left alone. */
static void guard_threads(loom_runtime *rt, int on) {
  lua_State *threads[2];
  int i;
  threads[0] = rt->RL;
  threads[1] = rt->L;
  for (i = 0; i < 2; i++) {
    lua_Hook h = lua_gethook(threads[i]);
    if (on && h == NULL)
      lua_sethook(threads[i], guard_hook, LUA_MASKCOUNT, GUARD_COUNT);
    else if (!on && h == guard_hook)
      lua_sethook(threads[i], NULL, 0, 0);
  }
}

static int guard_wanted(loom_runtime *rt) {
  return rt->hooked || (rt->posts && rt->posts->sandbox);
}

/* A new coroutine inherits its creator's hook; give it the guard when a
 * guard can fire (a step, a slice or limit, a sandbox). */
static void guard_thread(loom_runtime *rt, lua_State *co) {
  host_state *q = rt->posts;
  if (q && (q->step_deadline || rt->hooked || q->sandbox || q->closing))
    lua_sethook(co, guard_hook, LUA_MASKCOUNT, GUARD_COUNT);
}

/* coroutine.create / coroutine.wrap of a host runtime: the original (upvalue
 * 2, coro.c's wrap keeps its thread as upvalue 2) and then the guard. */
static int co_create(lua_State *L) {
  loom_runtime *rt = lua_touserdata(L, lua_upvalueindex(1));
  lua_State *co;
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_settop(L, 1);
  lua_pushvalue(L, lua_upvalueindex(2));
  lua_insert(L, 1);
  lua_call(L, 1, 1);
  if ((co = lua_tothread(L, -1)) != NULL)
    guard_thread(rt, co);
  return 1;
}

static int co_wrap(lua_State *L) {
  loom_runtime *rt = lua_touserdata(L, lua_upvalueindex(1));
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_settop(L, 1);
  lua_pushvalue(L, lua_upvalueindex(2));
  lua_insert(L, 1);
  lua_call(L, 1, 1);
  if (lua_iscfunction(L, -1) && lua_getupvalue(L, -1, 2) != NULL) {
    lua_State *co = lua_tothread(L, -1);
    if (co)
      guard_thread(rt, co);
    lua_pop(L, 1);
  }
  return 1;
}

static void guard_coroutines(lua_State *L, loom_runtime *rt) {
  static const struct {
    const char *name;
    lua_CFunction fn;
  } wrap[] = {{"create", co_create}, {"wrap", co_wrap}};
  size_t i;
  if (lua_getglobal(L, "coroutine") != LUA_TTABLE) {
    lua_pop(L, 1);
    return;
  }
  for (i = 0; i < sizeof wrap / sizeof wrap[0]; i++) {
    lua_pushlightuserdata(L, rt);
    if (lua_getfield(L, -2, wrap[i].name) != LUA_TFUNCTION) {
      lua_pop(L, 2);
      continue;
    }
    lua_pushcclosure(L, wrap[i].fn, 2);
    lua_setfield(L, -2, wrap[i].name);
  }
  lua_pop(L, 1);
}

/* ------------------------------------------------------------ create */

void loom_options_init(loom_options *o) {
  if (!o)
    return;
  memset(o, 0, sizeof *o);
  o->open_libs = 1;
}

/* The libraries loom's Lua facade needs when the host opens the rest. */
static const luaL_Reg needed_libs[] = {
    {LUA_GNAME, luaopen_base},          {LUA_LOADLIBNAME, luaopen_package},
    {LUA_COLIBNAME, luaopen_coroutine}, {LUA_TABLIBNAME, luaopen_table},
    {LUA_STRLIBNAME, luaopen_string},   {LUA_MATHLIBNAME, luaopen_math},
    {LUA_UTF8LIBNAME, luaopen_utf8},    {NULL, NULL}};

static int open_libs(lua_State *L) {
  const luaL_Reg *lib;
  if (lua_toboolean(L, 1)) {
    luaL_openlibs(L);
    return 0;
  }
  for (lib = needed_libs; lib->func; lib++) {
    luaL_requiref(L, lib->name, lib->func, 1);
    lua_pop(L, 1);
  }
  return 0;
}

static int open_runtime(lua_State *L) {
  loom_runtime *rt = loom__runtime_create(L, lua_touserdata(L, 1));
  lua_pushlightuserdata(L, rt);
  return 1;
}

/* Loads loom into the state as the global `loom`, guards coroutines and
 * the threads that run reactor and host code, applies the sandbox. */
static int setup_runtime(lua_State *L) {
  loom_runtime *rt = lua_touserdata(L, 1);
  host_state *q = rt->posts;
  luaL_requiref(L, "loom", luaopen_loom, 1);
  lua_pop(L, 1);
  guard_coroutines(L, rt);
  if (q->sandbox)
    loom__sandbox(L, q->sandbox);
  guard_threads(rt, guard_wanted(rt));
  return 0;
}

loom_runtime *loom_new(const loom_options *o) {
  loom_options def;
  lua_State *L;
  loom_runtime *rt;
  limit_alloc *la = NULL;
  if (!o) {
    loom_options_init(&def);
    o = &def;
  }
  if (!(o->slice >= 0) || !(o->cpu_limit >= 0) ||
      (o->sandbox & ~(LOOM_SANDBOX | LOOM_SANDBOX_NET)) ||
      (o->sandbox && !(o->sandbox & LOOM_SANDBOX)))
    return NULL;
  if (o->L) {
    if (o->memory_limit || loom__runtime(o->L))
      return NULL; /* a given state has its own allocator; one runtime per state */
    L = o->L;
  } else {
    if (o->memory_limit) {
      la = calloc(1, sizeof *la);
      if (!la)
        return NULL;
      la->limit = o->memory_limit;
      la->reserve = o->memory_limit / 8;
      if (la->reserve < 64 * 1024)
        la->reserve = 64 * 1024;
      if (la->reserve > 4 * 1024 * 1024)
        la->reserve = 4 * 1024 * 1024;
      L = lua_newstate(limited_alloc, la);
    } else
      L = luaL_newstate(); /* also installs lauxlib's warning function and panic */
    if (!L) {
      free(la);
      return NULL;
    }
    /* Lua leaves the main thread's extra space uninitialised and copies it
     * into every new coroutine; loom tells its own threads by that space. */
    memset(lua_getextraspace(L), 0, LUA_EXTRASPACE);
    lua_pushcfunction(L, open_libs);
    lua_pushboolean(L, o->open_libs);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
      lua_close(L);
      free(la);
      return NULL;
    }
  }
  lua_pushcfunction(L, open_runtime);
  lua_pushlightuserdata(L, o->loop);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
    lua_pop(L, 1);
    if (!o->L)
      lua_close(L);
    free(la);
    return NULL;
  }
  rt = lua_touserdata(L, -1);
  lua_pop(L, 1);
  rt->owned_by_host = 1;
  rt->owns_state = o->L == NULL;
  rt->alloc_ud = la;
  if (!rt->posts) {
    loom_close(rt);
    return NULL;
  }
  rt->slice = o->slice;
  rt->cpu_limit = o->cpu_limit;
  rt->hooked = rt->slice > 0 || rt->cpu_limit > 0;
  rt->sandbox = o->sandbox;
  rt->posts->sandbox = o->sandbox;
  note_driver(rt->posts);
  if (la)
    la->rt = rt;
  lua_pushcfunction(L, setup_runtime);
  lua_pushlightuserdata(L, rt);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    lua_pop(L, 1);
    loom_close(rt);
    return NULL;
  }
  return rt;
}

lua_State *loom_state(loom_runtime *rt) { return rt && !rt->state_closed ? rt->L : NULL; }

uv_loop_t *loom_loop(loom_runtime *rt) { return rt && !rt->state_closed ? rt->loop : NULL; }

loom_runtime *loom_from_state(lua_State *L) { return L ? loom__runtime(L) : NULL; }

size_t loom_memory(loom_runtime *rt) {
  if (!rt || rt->state_closed)
    return 0;
  return (size_t)lua_gc(rt->L, LUA_GCCOUNT, 0) * 1024 + (size_t)lua_gc(rt->L, LUA_GCCOUNTB, 0);
}

/* ------------------------------------------------------------ close */

/* With a given loop, loom__runtime_shutdown runs the loop until it has no
 * referenced handle, so the host's own handles (a listening socket, a
 * repeating timer) would keep it running forever. Unreference them for
 * the length of the shutdown and reference them again after. */
typedef struct handle_list {
  uv_handle_t **v;
  size_t n, cap;
} handle_list;

static void unref_walk(uv_handle_t *h, void *arg) {
  handle_list *l = arg;
  if (!uv_has_ref(h) || uv_is_closing(h))
    return;
  if (l->n == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 16;
    uv_handle_t **v = realloc(l->v, cap * sizeof *v);
    if (!v)
      return; /* this one stays referenced */
    l->v = v;
    l->cap = cap;
  }
  l->v[l->n++] = h;
  uv_unref(h);
}

static void reref_walk(uv_handle_t *h, void *arg) {
  handle_list *l = arg;
  size_t i;
  for (i = 0; i < l->n; i++)
    if (l->v[i] == h) {
      uv_ref(h);
      return;
    }
}

/* During loom_close every thread loom knows carries this hook (rt->hooked
 * is off, so preempt.c leaves it there). Unwinding runs freely until the
 * guard's time is up. After that a tasklet still running at its own level
 * is parked: marked blocked (without a block record) and yielded, so the
 * kill loop stops resuming it and the state's close frees it (a hook's
 * yield always reaches the scheduler, where an error could be caught by a
 * pcall loop). Code that cannot yield is stopped with an error at every
 * instruction. */
static void close_hook(lua_State *L, lua_Debug *ar) {
  loom_runtime *rt = loom__runtime(L);
  host_state *q;
  loom_tasklet *t;
  (void)ar;
  if (!rt || !(q = rt->posts) || !q->closing)
    return;
  if (!q->close_expired) {
    if (uv_hrtime() <= q->guard_at || thread_cpu_ns() - q->guard_cpu0 <= q->guard_cpu)
      return;
    q->close_expired = 1;
  }
  lua_sethook(L, close_hook, LUA_MASKCOUNT, 1);
  t = rt->current;
  if (t && t->L == L && lua_isyieldable(L) && !t->block) {
    t->status = LOOM_BLOCKED;
    rt->nblocked++;
    lua_yield(L, 0);
    return;
  }
  lua_pushliteral(L, "stopped: the runtime is closing");
  lua_error(L);
}

/* Puts close_hook on the reactor and main threads (unless the host hooked
 * the main thread) and on the thread of every live tasklet. */
static void close_hooks(loom_runtime *rt) {
  lua_State *L = rt->L;
  int32_t i;
  if (lua_gethook(rt->RL) == NULL || lua_gethook(rt->RL) == guard_hook)
    lua_sethook(rt->RL, close_hook, LUA_MASKCOUNT, GUARD_COUNT);
  if (lua_gethook(L) == NULL || lua_gethook(L) == guard_hook)
    lua_sethook(L, close_hook, LUA_MASKCOUNT, GUARD_COUNT);
  if (!lua_checkstack(L, 2))
    return;
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->live_ref);
  for (i = 1; i < rt->next_slot; i++) {
    loom_tasklet *t;
    if (lua_rawgeti(L, -1, i) == LUA_TUSERDATA && (t = lua_touserdata(L, -1)) != NULL && t->L)
      lua_sethook(t->L, close_hook, LUA_MASKCOUNT, GUARD_COUNT);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}

int loom_close(loom_runtime *rt) {
  host_state *q;
  limit_alloc *la;
  handle_list borrowed = {NULL, 0, 0};
  if (!rt || !rt->owned_by_host)
    return LOOM_EINVAL;
  q = rt->posts;
  if (rt->driving || (q && (q->in_posts || q->closing)))
    return LOOM_EINVAL;
  la = rt->alloc_ud;
  if (!rt->state_closed && !rt->closing) {
    /* Unwinding is bounded (close_hook): a third of a second of it, in
     * wall and CPU time; then whatever still runs is stopped. */
    if (q) {
      q->closing = 1;
      guard_arm(q, uv_hrtime() + (uint64_t)(0.3 * LOOM_NS_PER_S), (uint64_t)(0.3 * LOOM_NS_PER_S));
    }
    rt->hooked = 0;
    rt->slice = rt->cpu_limit = 0;
    close_hooks(rt);
    /* Closing must not fail nor crawl from one emergency collection to the
     * next in a full state: the memory is about to be freed anyway. */
    if (la)
      la->limit = SIZE_MAX / 2;
    if (!rt->owns_loop)
      uv_walk(rt->loop, unref_walk, &borrowed);
    loom__runtime_shutdown(rt);
    if (!rt->owns_loop) {
      uv_walk(rt->loop, reref_walk, &borrowed);
      free(borrowed.v);
    }
    if (!rt->owns_state) {
      /* The state lives on; its registry sentinel frees rt when the host
       * closes it. */
      rt->owned_by_host = 0;
      rt->state_closed = 1;
      return LOOM_OK;
    }
    lua_close(rt->L); /* the sentinel sees a closed runtime and leaves rt to us */
  }
  free(la);
  free(rt);
  return LOOM_OK;
}

/* ------------------------------------------------------------ spawn */

static int spawn_top(lua_State *L) {
  loom_runtime *rt = lua_touserdata(L, lua_upvalueindex(1));
  loom_tasklet *t = loom__spawn(L, rt, lua_gettop(L) - 1, 0);
  loom__ready(rt, t);
  lua_pushinteger(L, (lua_Integer)t->id);
  return 1;
}

long long loom_spawn(loom_runtime *rt, int nargs) {
  lua_State *L;
  long long id;
  if (!usable(rt) || nargs < 0 || nargs > 250)
    return LOOM_EINVAL;
  L = rt->L;
  if (lua_gettop(L) < nargs + 1 || !lua_isfunction(L, -(nargs + 1)) || !lua_checkstack(L, 2))
    return LOOM_EINVAL;
  lua_pushlightuserdata(L, rt);
  lua_pushcclosure(L, spawn_top, 1);
  lua_insert(L, -(nargs + 2));
  if (lua_pcall(L, nargs + 1, 1, 0) != LUA_OK)
    return LOOM_ERROR;
  id = (long long)lua_tointeger(L, -1);
  lua_pop(L, 1);
  return id;
}

/* After a load: the chunk (or the message) goes below the arguments. */
static long long spawn_loaded(loom_runtime *rt, int status, int nargs) {
  lua_insert(rt->L, -(nargs + 1));
  if (status != LUA_OK) {
    lua_pop(rt->L, nargs);
    return LOOM_ERROR;
  }
  return loom_spawn(rt, nargs);
}

long long loom_spawn_file(loom_runtime *rt, const char *path, int nargs) {
  int status;
  if (!usable(rt) || nargs < 0 || nargs > 250 || lua_gettop(rt->L) < nargs ||
      !lua_checkstack(rt->L, 4))
    return LOOM_EINVAL;
  status = luaL_loadfilex(rt->L, path, rt->sandbox ? "t" : NULL);
  return spawn_loaded(rt, status, nargs);
}

long long loom_spawn_string(loom_runtime *rt, const char *code, const char *chunkname, int nargs) {
  int status;
  if (!usable(rt) || !code || nargs < 0 || nargs > 250 || lua_gettop(rt->L) < nargs ||
      !lua_checkstack(rt->L, 4))
    return LOOM_EINVAL;
  status = luaL_loadbufferx(rt->L, code, strlen(code), chunkname ? chunkname : code,
                            rt->sandbox ? "t" : NULL);
  return spawn_loaded(rt, status, nargs);
}

/* ------------------------------------------------------------ drive */

static int run_protected(lua_State *L) {
  loom_runtime *rt = lua_touserdata(L, 1);
  int rc = loom__drive(rt, L, NULL, 0);
  if (rc == LOOM_DEADLOCK) {
    loom__push_deadlock(L, rt);
    loom__report(rt, L, -1, "deadlock", NULL);
    loom__kill_all(rt, L);
  }
  lua_pushinteger(L, rc);
  return 1;
}

int loom_run(loom_runtime *rt) {
  host_state *q = host_of(rt);
  int rc;
  if (!usable(rt) || !idle(rt) || !lua_checkstack(rt->L, 3))
    return LOOM_EINVAL;
  note_driver(q);
  if (rt->interrupted) {
    rt->interrupted = 0;
    return LOOM_STOPPED;
  }
  guard_threads(rt, guard_wanted(rt));
  lua_pushcfunction(rt->L, run_protected);
  lua_pushlightuserdata(rt->L, rt);
  if (lua_pcall(rt->L, 1, 1, 0) != LUA_OK)
    rc = LOOM_ERROR;
  else {
    rc = (int)lua_tointeger(rt->L, -1);
    lua_pop(rt->L, 1);
  }
  rt->interrupted = 0;
  rt->stop = 0;
  return rc;
}

/* Rounds of loom__step (ready tasklets, timers, a poll) until the deadline
 * or until nothing is ready: tasklets woken by this step's timers and I/O
 * run in this step when there is time. */
static int step_protected(lua_State *L) {
  loom_runtime *rt = lua_touserdata(L, 1);
  uint64_t deadline = rt->posts->step_deadline;
  do
    loom__step(rt, L, deadline);
  while (rt->ready_head && !rt->stop && !rt->interrupted && uv_hrtime() < deadline);
  return 0;
}

int loom_step(loom_runtime *rt, double budget) {
  host_state *q = host_of(rt);
  int rc, saved_hooked;
  double saved_slice, slice;
  uint64_t now, span, grace;
  if (!usable(rt) || !idle(rt) || !(budget >= 0) || !lua_checkstack(rt->L, 3))
    return LOOM_EINVAL;
  if (budget > 1e6)
    budget = 1e6;
  note_driver(q);
  if (rt->interrupted) {
    rt->interrupted = 0;
    return LOOM_STOPPED;
  }
  /* A tick must end in time even if a script spins: tasklets are preempted
   * within a sixteenth of the budget (the count hook reads the clock every
   * 1,000 instructions; the overrun is at most one slice, as the step looks
   * at its deadline between two resumes). */
  saved_slice = rt->slice;
  saved_hooked = rt->hooked;
  slice = budget / 16;
  if (slice < 50e-6)
    slice = 50e-6;
  if (rt->slice > 0 && rt->slice < slice)
    slice = rt->slice;
  rt->slice = slice;
  rt->hooked = 1;
  now = uv_hrtime();
  span = (uint64_t)(budget * LOOM_NS_PER_S);
  grace = span > 1000000 ? span : 1000000;
  q->step_deadline = now + span;
  guard_arm(q, q->step_deadline + grace, span + grace);
  guard_threads(rt, 1);
  /* uv_run does not even poll a loop without referenced handles, and the
   * post queue's async is unreferenced (posts must not keep loom_run
   * alive): reference it for the length of the step. */
  uv_ref((uv_handle_t *)&q->async);
  lua_pushcfunction(rt->L, step_protected);
  lua_pushlightuserdata(rt->L, rt);
  rc = lua_pcall(rt->L, 1, 0, 0) == LUA_OK ? LOOM_OK : LOOM_ERROR;
  if (!q->nwaiting)
    uv_unref((uv_handle_t *)&q->async);
  if (rc == LOOM_OK && (rt->ready_head || rt->nheap > 0 || uv_loop_alive(rt->loop)))
    rc = LOOM_AGAIN;
  q->step_deadline = q->guard_at = 0;
  rt->slice = saved_slice;
  rt->hooked = saved_hooked;
  guard_threads(rt, guard_wanted(rt));
  if (rt->interrupted || rt->stop) {
    rt->interrupted = rt->stop = 0;
    if (rc != LOOM_ERROR)
      rc = LOOM_STOPPED;
  }
  return rc;
}

double loom_next_timeout(loom_runtime *rt) {
  uint64_t ns;
  if (!usable(rt))
    return -1;
  if (rt->ready_head || !loom__posts_empty(rt->posts) || rt->interrupted)
    return 0;
  ns = loom__timers_next(rt);
  if (ns == UINT64_MAX)
    return -1;
  return (double)ns / LOOM_NS_PER_S;
}

/* ------------------------------------------------------------ control */

/* Set on the running tasklet by an interrupt on the runtime's thread: it
 * yields the tasklet at every instruction for as long as the interrupt is
 * pending (loom__drive may resume the same tasklet again before it looks
 * at rt->interrupted; preempt.c's one-shot hook would then let it spin),
 * and gives the thread back to preempt.c once the drive has seen it. */
static void interrupt_hook(lua_State *L, lua_Debug *ar) {
  loom_runtime *rt = loom__runtime(L);
  if (!rt || !rt->interrupted) {
    lua_sethook(L, NULL, 0, 0);
    if (rt)
      loom__preempt_setup(rt, L);
    return;
  }
  if (ar->event == LUA_HOOKCOUNT && rt->current && rt->current->L == L && lua_isyieldable(L))
    lua_yield(L, 0);
}

int loom_interrupt(loom_runtime *rt) {
  host_state *q;
  uv_thread_t self, driver;
  if (!rt || !(q = rt->posts) || atomic_load_explicit(&q->closed, memory_order_relaxed))
    return LOOM_EINVAL;
  set_interrupted(rt);
  self = uv_thread_self();
  driver = atomic_load_explicit(&q->driver, memory_order_relaxed);
  if (uv_thread_equal(&self, &driver)) {
    /* On the runtime's own thread (a signal handler, or a C function a
     * tasklet called): like lua.c on SIGINT, a hook on the running
     * tasklet stops a spin even without a slice. */
    loom_tasklet *t = rt->current;
    if (t && t->L)
      lua_sethook(t->L, interrupt_hook, LUA_MASKCOUNT, 1);
  }
  /* Wakes a drive that waits in the loop. */
  uv_async_send(&q->async);
  return LOOM_OK;
}

int loom_set_error_handler(loom_runtime *rt, loom_error_fn fn, void *ud) {
  if (!usable(rt))
    return LOOM_EINVAL;
  rt->host_error = fn;
  rt->host_error_ud = ud;
  return LOOM_OK;
}

int loom_error_count(loom_runtime *rt) {
  if (!rt || rt->state_closed)
    return LOOM_EINVAL;
  return rt->unhandled;
}
