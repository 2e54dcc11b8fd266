/*
 * loom.h - embed loom, the Lua 5.4 tasklet runtime on libuv, in a C host.
 *
 * A host creates a runtime (its own lua_State and uv_loop_t, or given ones),
 * loads scripts as tasklets, and drives the runtime either to completion
 * (loom_run) or one bounded step per frame (loom_step). All functions must be
 * called from the thread that created the runtime, except loom_post and
 * loom_interrupt, which any thread (loom_interrupt: any signal handler) may
 * call. Functions returning int return LOOM_OK (0) or a negative code.
 */
#ifndef LOOM_H
#define LOOM_H

#include <stddef.h>

#include <lua.h>
#include <uv.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define LOOM_API __attribute__((visibility("default")))
#else
#define LOOM_API
#endif

#define LOOM_VERSION "0.1.0"
#define LOOM_VERSION_NUM 100

/* Results of the functions below. */
#define LOOM_OK 0
#define LOOM_ERROR (-1)    /* a Lua error; the message is on the state's stack */
#define LOOM_DEADLOCK (-2) /* tasklets wait and nothing can ever wake them */
#define LOOM_STOPPED (-3)  /* loom.stop() or loom_interrupt() ended the drive */
#define LOOM_EINVAL (-4)   /* misuse: NULL runtime, closed runtime, bad option */
#define LOOM_ENOMEM (-5)
#define LOOM_AGAIN (-6)    /* loom_step: work is left (run it again) */

typedef struct loom_runtime loom_runtime;

/* Called for an error that escapes a tasklet nobody joins, instead of the
 * report on stderr. `message` includes the traceback. */
typedef void (*loom_error_fn)(void *ud, loom_runtime *rt, const char *message);

typedef struct loom_options {
  lua_State *L;        /* run in this state (NULL: loom creates one) */
  uv_loop_t *loop;     /* use this loop (NULL: loom owns one) */
  size_t memory_limit; /* bytes the state may allocate, 0 = unlimited (needs L == NULL) */
  double slice;        /* preemption slice in seconds, 0 = off */
  double cpu_limit;    /* kill a tasklet running this long without waiting, 0 = off */
  int sandbox;         /* no io, os.execute, os.exit, package.loadlib, C modules,
                          debug, binary chunks, string.dump */
  int open_libs;       /* open the standard libraries in a state loom creates (default 1) */
} loom_options;

/* Fills o with the defaults. */
LOOM_API void loom_options_init(loom_options *o);

/* Creates a runtime; NULL on failure. With o == NULL, the defaults. When
 * o->L is given, loom is loaded into it (package.loaded.loom). */
LOOM_API loom_runtime *loom_new(const loom_options *o);

/* The runtime's state and loop (owned by the runtime unless given). */
LOOM_API lua_State *loom_state(loom_runtime *rt);
LOOM_API uv_loop_t *loom_loop(loom_runtime *rt);

/* The runtime loaded into L (by loom_new or require "loom"), or NULL. */
LOOM_API loom_runtime *loom_from_state(lua_State *L);

/* Loads a file (NULL: stdin) or a string as a tasklet, queued with the
 * nargs values on top of the stack as its arguments (popped). On a load
 * error returns LOOM_ERROR with the message on top of the stack. On success
 * returns the tasklet id (> 0). */
LOOM_API long long loom_spawn_file(loom_runtime *rt, const char *path, int nargs);
LOOM_API long long loom_spawn_string(loom_runtime *rt, const char *code, const char *chunkname,
                                     int nargs);
/* Spawns the function below the nargs values on top of the stack. */
LOOM_API long long loom_spawn(loom_runtime *rt, int nargs);

/* Drives until no work is left. */
LOOM_API int loom_run(loom_runtime *rt);

/* Runs ready tasklets and polls I/O without blocking, returning within
 * about `budget` seconds even when a script spins (the count hook preempts
 * it; needs a slice, which loom_step sets to budget/4 when none is set).
 * Returns LOOM_OK when no work is left, LOOM_AGAIN when there is more. */
LOOM_API int loom_step(loom_runtime *rt, double budget);

/* Seconds until the runtime has something to do: 0 when tasklets are ready,
 * the time to the next timer, or -1 when only I/O can bring work. */
LOOM_API double loom_next_timeout(loom_runtime *rt);

/* Runs fn(rt, ud) on the runtime's thread at its next step. Thread-safe;
 * every post runs exactly once (also when posts coalesce), or is dropped
 * with `dropped(ud)` called if the runtime closes first. */
typedef void (*loom_post_fn)(loom_runtime *rt, void *ud);
LOOM_API int loom_post(loom_runtime *rt, loom_post_fn fn, loom_post_fn dropped, void *ud);

/* Makes the current or next drive return LOOM_STOPPED as soon as possible;
 * a spinning tasklet is preempted to let it. Async-signal-safe. */
LOOM_API void loom_interrupt(loom_runtime *rt);

/* Replaces the uncaught-error report (NULL restores stderr). */
LOOM_API void loom_set_error_handler(loom_runtime *rt, loom_error_fn fn, void *ud);

/* Number of errors reported (to stderr or the handler) so far. */
LOOM_API int loom_error_count(loom_runtime *rt);

/* Closes a runtime with work in flight: tasklets are killed and unwound,
 * handles closed, no callback reaches Lua after this starts. Closes the
 * state and the loop when loom owns them. */
LOOM_API void loom_close(loom_runtime *rt);

/* ---- C functions that block the calling tasklet ----
 * A C function called from Lua in a tasklet may wait for the host:
 *
 *   static int db_get(lua_State *L) {
 *     loom_pending *p = loom_pending_new(L, "db lookup");   // raises if L cannot block
 *     start_host_job(p, luaL_checkstring(L, 1));           // keep p
 *     return loom_pending_wait(L, p, -1);                  // last statement
 *   }
 *   // later, on the runtime's thread (or inside a loom_post):
 *   lua_State *S = loom_pending_state(p);   // push the results here
 *   lua_pushstring(S, "value");
 *   loom_pending_complete(p, 1);            // the tasklet resumes with 1 value
 *
 * If the tasklet is killed or times out first, the pending is cancelled:
 * loom_pending_state returns NULL and loom_pending_complete only frees it.
 * Exactly one loom_pending_complete per pending. */
typedef struct loom_pending loom_pending;
LOOM_API loom_pending *loom_pending_new(lua_State *L, const char *what);
LOOM_API int loom_pending_wait(lua_State *L, loom_pending *p, double timeout);
LOOM_API lua_State *loom_pending_state(loom_pending *p);
LOOM_API void loom_pending_complete(loom_pending *p, int nresults);

/* The Lua module entry points: require "loom" and require "loom.core". */
LOOM_API int luaopen_loom(lua_State *L);
LOOM_API int luaopen_loom_core(lua_State *L);

#ifdef __cplusplus
}
#endif

#endif
