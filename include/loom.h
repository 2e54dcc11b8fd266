/*
 * loom.h - embed loom, the Lua 5.4 tasklet runtime on libuv, in a C host.
 *
 * A host creates a runtime (its own lua_State and uv_loop_t, or given ones),
 * loads scripts as tasklets, and drives the runtime either to completion
 * (loom_run) or one bounded step per frame (loom_step). docs/embedding.md
 * walks through it, from "hello host" to a game server's fixed tick.
 *
 * Threads. A runtime belongs to one thread at a time: every function below
 * must be called from the thread that drives it (it may be handed to another
 * thread with the usual synchronisation), except loom_post,
 * loom_post_message and loom_interrupt, which any thread may call at any
 * moment until loom_close begins (loom_interrupt also from a signal
 * handler). Separate runtimes share nothing: several runtimes may run on
 * several threads at once.
 *
 * Errors. Functions returning int return LOOM_OK (0) or a negative LOOM_*
 * code; misuse (a NULL or closed runtime, a bad option, a call from inside
 * the runtime's own drive) gives LOOM_EINVAL and changes nothing.
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

/* The version of this header and of the library built from it. */
#define LOOM_VERSION "0.1.0"
#define LOOM_VERSION_NUM 100

/* Results of the functions below. */
#define LOOM_OK 0
#define LOOM_ERROR (-1)    /* a Lua error; the message is on top of loom_state's stack */
#define LOOM_DEADLOCK (-2) /* tasklets wait and nothing can ever wake them (reported) */
#define LOOM_STOPPED (-3)  /* loom.stop() or loom_interrupt() ended the drive */
#define LOOM_EINVAL (-4)   /* misuse: NULL or closed runtime, bad argument, wrong moment */
#define LOOM_ENOMEM (-5)   /* out of memory (C side) */
#define LOOM_AGAIN (-6)    /* loom_step: work is left, call it again */

/* A runtime: one Lua state, one libuv loop, one scheduler. Opaque. */
typedef struct loom_runtime loom_runtime;

/* Bits of loom_options.sandbox. LOOM_SANDBOX takes away everything that
 * reaches the host's files, processes, memory or configuration (docs/
 * embedding.md, "The sandbox", lists each route); LOOM_SANDBOX_NET keeps
 * loom.tcp, loom.udp and loom.dns in a sandbox (they are removed otherwise). */
#define LOOM_SANDBOX 1
#define LOOM_SANDBOX_NET 2

/* How loom_new builds a runtime. Always fill it with loom_options_init
 * first, so that fields added later get their defaults. */
typedef struct loom_options {
  lua_State *L;        /* run in this state (NULL: loom creates one); it must have the base,
                          package, coroutine, table and string libraries open */
  uv_loop_t *loop;     /* use this initialised loop (NULL: loom owns one) */
  size_t memory_limit; /* bytes the state may allocate, 0 = unlimited (needs L == NULL) */
  double slice;        /* preemption slice in seconds, 0 = off (loom_step sets its own) */
  double cpu_limit;    /* kill a tasklet running this long without waiting, 0 = off */
  int sandbox;         /* 0, or LOOM_SANDBOX possibly | LOOM_SANDBOX_NET */
  int open_libs;       /* for a state loom creates: 1 (default) opens all the standard
                          libraries; 0 only base, package, coroutine, table, string, math
                          and utf8 (the host opens the others itself) */
} loom_options;

/* Fills o with the defaults (everything off, open_libs = 1). NULL: no-op. */
LOOM_API void loom_options_init(loom_options *o);

/* Creates a runtime, with the defaults when o is NULL. Returns NULL on a
 * bad option (negative or NaN slice/cpu_limit, memory_limit with a given L,
 * unknown sandbox bits, a given L that already has loom loaded) or when
 * memory runs out. The state gets the global `loom` (also
 * package.loaded.loom); with o->sandbox the sandbox is applied to it. */
LOOM_API loom_runtime *loom_new(const loom_options *o);

/* The runtime's state (its main thread) and loop; NULL once closed or for a
 * NULL runtime. The host may use the state between drives, from the
 * runtime's thread, like any lua_State. */
LOOM_API lua_State *loom_state(loom_runtime *rt);
LOOM_API uv_loop_t *loom_loop(loom_runtime *rt);

/* The runtime loaded into L (by loom_new or require "loom"), or NULL. Any
 * thread (coroutine) of the state will do: C functions called from Lua use
 * it to find their runtime. */
LOOM_API loom_runtime *loom_from_state(lua_State *L);

/* Spawning. Each function queues a new tasklet (it first runs at the next
 * drive) and returns its id (> 0), which scripts see as t.id. The nargs
 * values on top of loom_state's stack are its arguments.
 *   loom_spawn_file   loads the file at path (NULL: stdin);
 *   loom_spawn_string loads code, named chunkname (NULL: the code itself);
 *   loom_spawn        spawns the function just below the arguments.
 * On success the function and arguments are popped. On LOOM_ERROR (a syntax
 * error, a file that cannot be read) they are replaced by the message. On
 * LOOM_EINVAL (bad runtime, NULL code, fewer than nargs values, no function
 * where loom_spawn expects it) the stack is left as it was. A sandboxed
 * runtime loads text chunks only. */
LOOM_API long long loom_spawn_file(loom_runtime *rt, const char *path, int nargs);
LOOM_API long long loom_spawn_string(loom_runtime *rt, const char *code, const char *chunkname,
                                     int nargs);
LOOM_API long long loom_spawn(loom_runtime *rt, int nargs);

/* Drives the runtime until no work is left: every tasklet has ended, or
 * tasklets wait and nothing can wake them (LOOM_DEADLOCK: reported through
 * the error report, and those tasklets are killed). Returns LOOM_OK,
 * LOOM_DEADLOCK, LOOM_STOPPED (loom.stop() or loom_interrupt()), LOOM_ERROR
 * (out of memory inside the scheduler: close the runtime) or LOOM_EINVAL
 * (also when called from inside a drive, e.g. from a posted function).
 * Posts do not keep it running: a host that feeds a runtime only through
 * loom_post drives it with loom_step. */
LOOM_API int loom_run(loom_runtime *rt);

/* One bounded step, for a game tick: runs ready tasklets, fires due timers,
 * polls I/O and runs posted functions without blocking, and repeats while
 * tasklets are ready and time is left. It returns about `budget` seconds
 * after it started at the latest, also when a script spins: tasklets are
 * preempted through the count hook with a slice of at most budget/16 (the
 * runtime's own slice when smaller), so the overrun is at most one slice.
 * Code that cannot be preempted (a reactor callback, a coroutine inside a
 * tasklet, a callback of a C function such as table.sort in a sandbox) is
 * stopped with an error once the step has overrun its budget by another
 * budget. Returns LOOM_AGAIN when work is left (ready tasklets, timers,
 * active handles, pending C calls), LOOM_OK when there is none (tasklets may still wait for
 * posts), LOOM_STOPPED, LOOM_ERROR or LOOM_EINVAL (bad runtime, budget < 0
 * or NaN, called from inside a drive). A deadlock is not detected here. */
LOOM_API int loom_step(loom_runtime *rt, double budget);

/* Seconds until the runtime has something to do: 0 when tasklets are ready
 * or posts wait, the time to the next timer, or -1 when only I/O or a post
 * can bring work (or for a bad runtime). A host sleeps at most that long,
 * or polls loom_loop's backend fd. */
LOOM_API double loom_next_timeout(loom_runtime *rt);

/* A function posted to a runtime: called on the runtime's thread, inside a
 * drive (loom_step, loom_run, or any blocking call of the main thread), in
 * protected mode: it may use loom_state(rt), spawn tasklets, complete
 * pendings. It must not call loom_step, loom_run or loom_close. */
typedef void (*loom_post_fn)(loom_runtime *rt, void *ud);

/* Queues fn(rt, ud) to run on the runtime's thread at its next drive.
 * Thread-safe and lock-free (not async-signal-safe: it allocates); posts
 * from one thread run in the order they were made. Every successful post
 * runs exactly once, also when wakeups coalesce, or, if the runtime closes
 * first, `dropped(rt, ud)` (if not NULL) runs instead, inside loom_close.
 * Returns LOOM_OK, LOOM_ENOMEM, or LOOM_EINVAL (NULL rt or fn, runtime
 * closing). No thread may call it once loom_close has begun: stop or join
 * the posting threads first. */
LOOM_API int loom_post(loom_runtime *rt, loom_post_fn fn, loom_post_fn dropped, void *ud);

/* Posts a message for the scripts: on the runtime's thread, a new tasklet
 * runs the global function named `handler` with the message (a Lua string,
 * a copy of data[0..len)) as its argument; if there is no such function
 * the message is reported as an error. Same rules and results as loom_post. */
LOOM_API int loom_post_message(loom_runtime *rt, const char *handler, const void *data, size_t len);

/* Makes the drive in progress, or else the next one, return LOOM_STOPPED as
 * soon as possible. From the runtime's thread (also from a signal handler
 * on it) a spinning tasklet is preempted at once, like lua.c's SIGINT.
 * From another thread the flag is set and the loop woken: a spinning
 * tasklet stops at the end of its slice (always within loom_step; in
 * loom_run only with a slice). Async-signal-safe. Returns LOOM_OK or
 * LOOM_EINVAL (NULL or closed runtime). */
LOOM_API int loom_interrupt(loom_runtime *rt);

/* Called for an error that escapes a tasklet nobody joins (and for other
 * unhandled errors: reactor callbacks, posted functions, deadlocks)
 * instead of the report on stderr, on the runtime's thread. `message` is
 * "where: error" followed by a traceback, valid during the call. */
typedef void (*loom_error_fn)(void *ud, loom_runtime *rt, const char *message);

/* Replaces the uncaught-error report (fn NULL restores stderr). A script's
 * loom.on_error handler, when set, still comes first (a sandbox removes
 * loom.on_error). Returns LOOM_OK or LOOM_EINVAL. */
LOOM_API int loom_set_error_handler(loom_runtime *rt, loom_error_fn fn, void *ud);

/* Number of errors reported (to stderr or the host's handler) so far, or
 * LOOM_EINVAL. */
LOOM_API int loom_error_count(loom_runtime *rt);

/* Bytes the runtime's state currently uses (Lua's own count), 0 for a bad
 * runtime. */
LOOM_API size_t loom_memory(loom_runtime *rt);

/* Closes a runtime with work in flight: every tasklet is killed and
 * unwound (its <close> variables and pcall handlers run, bounded in time),
 * timers, sockets, processes and other handles are closed, pending C calls
 * are cancelled, queued posts are dropped; no callback reaches Lua after
 * that. Closes the state and the loop when loom owns them (a given loop is
 * left with none of loom's handles; a given state keeps working as a plain
 * state, and rt is freed when the host closes it). rt is invalid
 * afterwards. Returns LOOM_OK, or LOOM_EINVAL for NULL, a runtime that
 * loom_new did not make, or a call from inside the runtime's own drive or
 * close (nothing happens then). */
LOOM_API int loom_close(loom_runtime *rt);

/* ---- C functions that block the calling tasklet ----
 * A host's C function, called from Lua in a tasklet, may suspend that
 * tasklet (only it) until the host completes the call:
 *
 *   static int db_get(lua_State *L) {
 *     const char *key = luaL_checkstring(L, 1);          // check arguments first
 *     loom_pending *p = loom_pending_new(L, "db lookup"); // raises if L cannot block
 *     start_host_job(p, key);                            // keep p; must not raise
 *     return loom_pending_wait(L, p, 5.0);               // last statement
 *   }
 *   // later, on the runtime's thread (directly, or in a loom_post from a worker):
 *   lua_State *S = loom_pending_state(p);   // NULL: the wait was cancelled
 *   if (S) lua_pushstring(S, "value");
 *   loom_pending_complete(p, S ? 1 : 0);    // the tasklet resumes with 1 value
 *
 * Between loom_pending_new and loom_pending_wait nothing may raise. The
 * call may also complete before the wait (a cache hit): then
 * loom_pending_state returns L itself and loom_pending_wait returns the
 * values at once. If the tasklet is killed, its wait times out (it then
 * returns nil, "ETIMEDOUT: ...", "ETIMEDOUT") or the runtime closes, the
 * pending is cancelled: loom_pending_state returns NULL and
 * loom_pending_complete only frees it. Each pending needs exactly one
 * loom_pending_complete, on the runtime's thread (after loom_close, from
 * any thread: it only frees). */
typedef struct loom_pending loom_pending;

/* Starts a pending call for the C function running on L. Raises (a Lua
 * error) when L cannot block here: outside loom, in a reactor callback,
 * under a C call that cannot yield, while the runtime closes. */
LOOM_API loom_pending *loom_pending_new(lua_State *L, const char *what);

/* Suspends the caller until loom_pending_complete (or returns at once if it
 * already happened); timeout in seconds, < 0 for none. Must be the C
 * function's last statement: `return loom_pending_wait(L, p, t);`. Raises
 * for a NULL p or a p made on another thread than L. */
LOOM_API int loom_pending_wait(lua_State *L, loom_pending *p, double timeout);

/* The stack to push the results on before loom_pending_complete, or NULL
 * when the pending was cancelled (or p is NULL or already completed). It
 * has room for LUA_MINSTACK values; use lua_checkstack for more. */
LOOM_API lua_State *loom_pending_state(loom_pending *p);

/* Completes p with the top nresults values pushed on loom_pending_state(p)
 * since it was called (fewer are pushed: all of them; nresults < 0: all of
 * them), queues the tasklet, and frees p unless its wait is still to come.
 * NULL: no-op. */
LOOM_API void loom_pending_complete(loom_pending *p, int nresults);

/* The Lua module entry points: require "loom" and require "loom.core". */
LOOM_API int luaopen_loom(lua_State *L);
LOOM_API int luaopen_loom_core(lua_State *L);

#ifdef __cplusplus
}
#endif

#endif
