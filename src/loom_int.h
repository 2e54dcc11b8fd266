/*
 * loom_int.h - the internal contract between loom's C files.
 *
 * Everything here is hidden (-fvisibility=hidden): `loom__*` is internal,
 * `loom_*` (include/loom.h) is the public C API, `loom.core` the Lua module.
 *
 * The one rule every file follows: a tasklet waits through exactly one
 * primitive (loom__suspend) on a block record, and is woken through exactly
 * one function (loom__wake) that records its resume values and queues it;
 * the scheduler resumes tasklets from one place (loom__resume).
 */
#ifndef LOOM_INT_H
#define LOOM_INT_H

#include <stddef.h>
#include <stdint.h>

#include <lauxlib.h>
#include <lua.h>
#include <uv.h>

#include "loom.h"

#define LOOM_HIDDEN __attribute__((visibility("hidden")))

/* ------------------------------------------------------------ forward */
typedef struct loom_tasklet loom_tasklet;
typedef struct loom_block loom_block;
typedef struct loom_wait loom_wait;
typedef struct loom_waitq loom_waitq;
typedef struct loom_timer loom_timer;
typedef struct loom_deadline loom_deadline;

/* ------------------------------------------------------------ timers */
/* A node of the runtime's timer heap (one uv_timer drives the whole heap).
 * Equal deadlines fire in start order (seq). index == SIZE_MAX: not armed. */
typedef void (*loom_timer_fn)(loom_runtime *rt, loom_timer *tm);
struct loom_timer {
  uint64_t due; /* uv_hrtime() nanoseconds */
  uint64_t seq;
  size_t index;
  loom_timer_fn fire;
};

LOOM_HIDDEN void loom__timer_init(loom_timer *tm, loom_timer_fn fire);
LOOM_HIDDEN int loom__timer_start(loom_runtime *rt, loom_timer *tm, double seconds);
LOOM_HIDDEN void loom__timer_stop(loom_runtime *rt, loom_timer *tm);
LOOM_HIDDEN int loom__timer_armed(const loom_timer *tm);
/* Fires every expired timer; returns how many fired. */
LOOM_HIDDEN int loom__timers_run(loom_runtime *rt);
/* Nanoseconds until the earliest timer, or UINT64_MAX when none. */
LOOM_HIDDEN uint64_t loom__timers_next(loom_runtime *rt);
LOOM_HIDDEN void loom__timers_free(loom_runtime *rt);
LOOM_HIDDEN void loom__heap_timer_cb(uv_timer_t *h);

/* ------------------------------------------------------------ waits */
/* A wait node sits in one wait queue (a channel's senders, an event's
 * waiters, a tasklet's joiners...) on behalf of one block. */
struct loom_wait {
  loom_wait *next, *prev;
  loom_waitq *queue; /* NULL when not linked */
  loom_block *block;
  int kind;          /* owner-defined (send/receive...) */
  int index;         /* select case number, 1-based */
  lua_State *vL;     /* where a value to hand over sits (send) */
  int vidx;          /* its absolute stack index in vL */
};

struct loom_waitq {
  loom_wait *head, *tail;
  int count;
};

LOOM_HIDDEN void loom__waitq_push(loom_waitq *q, loom_wait *w);
LOOM_HIDDEN loom_wait *loom__waitq_pop(loom_waitq *q);
LOOM_HIDDEN void loom__waitq_remove(loom_wait *w);

/* ------------------------------------------------------------ blocks */
/* Why a block ended. Anything but DONE runs the block's cancel hook. */
enum { LOOM_WOKE_DONE = 0, LOOM_WOKE_TIMEOUT, LOOM_WOKE_KILL, LOOM_WOKE_CLOSE };

/* What a blocked tasklet waits for. Taken from a per-runtime pool by
 * loom__block_new and returned by loom__wake, so blocking costs no GC
 * allocation. An operation that outlives its block (an uncancellable
 * libuv request) must drop its pointer to the block in `cancel`. */
typedef void (*loom_cancel_fn)(loom_runtime *rt, loom_block *b, int why);
struct loom_block {
  loom_tasklet *t;
  const char *what;     /* "channel receive", "sleep", ... (dump/deadlock) */
  loom_cancel_fn cancel; /* detach from the operation; may be NULL */
  void *data;           /* the operation's own state */
  loom_timer timer;     /* the call's own timeout (ETIMEDOUT triple) */
  loom_wait w;          /* one embedded wait node */
  loom_wait *extra;     /* more nodes (select); malloc'd */
  int nextra;
  loom_block *next_free;
};

/* ------------------------------------------------------------ tasklets */
enum {
  LOOM_READY = 0,
  LOOM_RUNNING,
  LOOM_BLOCKED,
  LOOM_DEAD
};

enum {
  LOOM_T_STARTED = 1 << 0,  /* owns a thread */
  LOOM_T_RAISE = 1 << 1,    /* the resume value is an error to raise */
  LOOM_T_QUEUED = 1 << 2,   /* in the ready queue */
  LOOM_T_WATCHED = 1 << 3,  /* an on_done handler takes its end */
  LOOM_T_KILLED = 1 << 4,   /* a kill is on its way */
  LOOM_T_MAIN = 1 << 5,     /* the pseudo-tasklet of the main thread */
  LOOM_T_PENDING = 1 << 6,  /* pending_ref holds an error to raise at the next wait */
  LOOM_T_PREEMPTED = 1 << 7,
  LOOM_T_HANDED = 1 << 8    /* its wake handed it a value or unit (see undo) */
};

/* What a handed-over wake must give back if the tasklet is killed or timed
 * out before it runs (design rule Y8): nothing is lost. */
enum {
  LOOM_UNDO_NONE = 0,
  LOOM_UNDO_RECEIVE,   /* a channel value: give it back */
  LOOM_UNDO_SELECT,    /* a select's received value: give it back */
  LOOM_UNDO_SEMAPHORE, /* a semaphore unit: release it again */
  LOOM_UNDO_KEEP       /* a completed send: let it return, raise at the next wait */
};
/* Gives back what a wake handed over: runs in the continuation of the
 * waiting C function (its arguments are at 1..), with the nvals woken values
 * below the error on top (channel.c, sync.c). */
LOOM_HIDDEN void loom__undo(lua_State *L, loom_runtime *rt, int kind, int nvals);
LOOM_HIDDEN void loom__semaphore_giveback(lua_State *L, loom_runtime *rt, int idx);

/* The C side of a tasklet: the memory of its full userdata ("loom.tasklet").
 * User values: 1 = the function before start, the thread while alive, the
 * results table after death; 2 = the spawn site function or a table
 * {site, on_done}; 3.. = the start arguments. */
struct loom_tasklet {
  uint32_t magic;      /* LOOM_MAGIC(LOOM_MT_TASKLET) */
  loom_tasklet *next;  /* ready queue link */
  lua_State *L;        /* its thread while started, else NULL */
  loom_block *block;   /* what it waits for while BLOCKED */
  loom_waitq *joiners; /* waits of join() callers; allocated by the first join */
  loom_deadline *deadlines; /* loom.timeout stack, innermost first */
  uint64_t id;
  int32_t slot;        /* index in the live table */
  int32_t spawn_line;
  int32_t pending_ref; /* registry ref of an error to raise (LOOM_T_PENDING) */
  uint16_t nargs;      /* start arguments */
  uint16_t nresume;    /* values waiting on L for the next resume */
  uint8_t status;
  uint8_t nresume_k;   /* 1: it last yielded at a wait point (has a continuation) */
  uint8_t undo;        /* LOOM_UNDO_*: what its pending wake handed over */
  uint16_t flags;
};

/* Types whose checks sit on hot paths (loom__checkud). */
enum { LOOM_MT_TASKLET = 0, LOOM_MT_CHANNEL, LOOM_MT_EVENT, LOOM_MT_SEMAPHORE, LOOM_MT_N };

/* ------------------------------------------------------------ objects */
/* Every I/O object with libuv handles links itself into its runtime, so a
 * runtime that shuts down can close them all (close() unlinks first). */
typedef struct loom_link loom_link;
struct loom_link {
  loom_link *next, *prev;
  void (*close)(loom_runtime *rt, loom_link *l);
};
LOOM_HIDDEN void loom__link(loom_runtime *rt, loom_link *l);
LOOM_HIDDEN void loom__unlink(loom_link *l);

/* ------------------------------------------------------------ runtime */
struct loom_runtime {
  lua_State *L;          /* the main thread of the state */
  lua_State *RL;         /* the reactor thread: callbacks from the loop */
  lua_State *mstack;     /* resume values for the main thread collect here */
  int resume_n;          /* values passed by the resume in progress */
  int hooked;            /* slice or cpu_limit set: threads get the count hook */
  uv_loop_t *loop;
  uv_loop_t own_loop;
  int owns_loop, owns_state;
  int owned_by_host;     /* loom_new made it: loom_close frees it */
  int state_closed;      /* the state is gone; only loom_close may follow */
  loom_link objects;     /* open I/O objects (ring) */

  /* scheduler */
  loom_tasklet *ready_head, *ready_tail;
  int nready;
  loom_tasklet *current;  /* running tasklet, NULL in main/reactor */
  loom_tasklet main;      /* stands for the main thread when it blocks */
  int in_reactor;         /* > 0 while a reactor callback runs */
  int driving;            /* > 0 while a drive loop runs */
  int stop;               /* loom.stop() was called */
  int closing;            /* loom_close began: nothing reenters Lua */
  int unwinding;          /* shutdown is killing the tasklets: no new waits */
  uint64_t next_id;

  /* live tasklets: registry table slot -> userdata */
  int live_ref;
  int32_t *free_slots;
  int nfree, cap_free;
  int32_t next_slot;
  int nlive, nblocked;

  /* thread pool: finished threads, anchored on the pool thread's stack */
  lua_State *pool;
  int npool;

  /* block records */
  loom_block *free_blocks;

  /* timers */
  loom_timer **heap;
  size_t nheap, capheap;
  uint64_t timer_seq;
  uv_timer_t heap_timer;

  /* preemption (seconds, 0 = off) */
  double slice, cpu_limit;
  uint64_t run_start;  /* hrtime when current tasklet was resumed */
  uint64_t burst_start; /* hrtime when it last blocked or started */

  /* counters */
  uint64_t switches, preemptions, spawned;
  int unhandled;        /* errors reported by the default reporter */
  int on_error_ref;     /* loom.on_error handler or LUA_NOREF */
  int shutdown_ref;     /* table of on_shutdown functions */
  int errors_ref;       /* table name -> error class */
  int internal_handles; /* unref'd handles of the runtime itself */

  /* host hooks (include/loom.h) */
  loom_error_fn host_error;
  void *host_error_ud;
  void *alloc_ud;       /* memory-limit allocator state, if any */
  struct loom_post_queue *posts;
  volatile int interrupted;
  int sandbox;
  uint64_t rand;             /* select's fair start (xorshift state) */
  const void *mt[LOOM_MT_N]; /* metatables of the hot types (identity only) */
};

/* Finds the runtime of a state (stored in the registry); NULL if none. */
LOOM_HIDDEN loom_runtime *loom__runtime(lua_State *L);
/* The runtime upvalue that every loom.core C function carries. */
#define loom__rt(L) ((loom_runtime *)lua_touserdata((L), lua_upvalueindex(1)))
/* Registers funcs with the runtime as upvalue 1 into the table on top. */
LOOM_HIDDEN void loom__setfuncs(lua_State *L, loom_runtime *rt, const luaL_Reg *l);

LOOM_HIDDEN loom_runtime *loom__runtime_create(lua_State *L, uv_loop_t *loop);
LOOM_HIDDEN void loom__runtime_shutdown(loom_runtime *rt);
LOOM_HIDDEN void loom__run_shutdown(loom_runtime *rt);
LOOM_HIDDEN void loom__open_runtime(lua_State *L, loom_runtime *rt);
/* Cross-thread posts (api.c). */
LOOM_HIDDEN void loom__posts_init(loom_runtime *rt);
LOOM_HIDDEN void loom__posts_close(loom_runtime *rt);

/* ------------------------------------------------------------ scheduler */
/* Raises unless the caller may block here (tasklet at a yieldable point, or
 * the main thread with no loop running). */
LOOM_HIDDEN void loom__check_block(lua_State *L, loom_runtime *rt);
/* Non-raising variant: NULL if blocking is allowed, else the reason. */
LOOM_HIDDEN const char *loom__why_not_block(lua_State *L, loom_runtime *rt);
/* A fresh block for the caller (current tasklet or main). */
LOOM_HIDDEN loom_block *loom__block_new(loom_runtime *rt, lua_State *L, const char *what);
/* Arms the block's own timeout: seconds < 0 means none. */
LOOM_HIDDEN void loom__block_timeout(loom_runtime *rt, loom_block *b, double seconds);
/* Suspends the caller on b; returns (through a continuation when in a
 * tasklet) the values the waker pushed. Must be the last call of a C
 * function: `return loom__suspend(L, rt, b);`. */
LOOM_HIDDEN int loom__suspend(lua_State *L, loom_runtime *rt, loom_block *b);
/* The stack a waker pushes resume values on: check room for n first. */
LOOM_HIDDEN lua_State *loom__wake_stack(loom_runtime *rt, loom_tasklet *t, int n);
/* Ends b: unlinks its waits, stops its timer, runs cancel unless DONE,
 * releases it, and queues its tasklet to receive the n values pushed on
 * loom__wake_stack. */
LOOM_HIDDEN void loom__wake(loom_runtime *rt, loom_block *b, int n, int why);
/* Releases a block that was never suspended on (the operation failed to
 * start): the caller then returns its fail triple directly. */
LOOM_HIDDEN void loom__block_abort(loom_runtime *rt, loom_block *b);
/* Wakes with the fail triple nil, "CODE: msg", "CODE". */
LOOM_HIDDEN void loom__wake_fail(loom_runtime *rt, loom_block *b, const char *code,
                                 const char *msg, int why);
/* Queues a ready tasklet at the tail. */
LOOM_HIDDEN void loom__ready(loom_runtime *rt, loom_tasklet *t);
/* Raises the value on top of L's stack in t at its waiting point
 * (kill/throw/timeout). Pops the value. */
LOOM_HIDDEN void loom__raise_in(loom_runtime *rt, lua_State *L, loom_tasklet *t);
/* Resumes t once (the one resume site). from: the running thread. */
LOOM_HIDDEN void loom__resume(loom_runtime *rt, lua_State *from, loom_tasklet *t);
/* Runs the scheduler and the loop until `until` is woken (until != NULL) or
 * no work is left. Returns LOOM_OK, LOOM_DEADLOCK or LOOM_STOPPED. */
LOOM_HIDDEN int loom__drive(loom_runtime *rt, lua_State *L, loom_tasklet *until, int once);
/* Pushes the Deadlock error describing every waiting tasklet. */
LOOM_HIDDEN void loom__push_deadlock(lua_State *L, loom_runtime *rt);
/* Kills every blocked tasklet (after a deadlock or at close). */
LOOM_HIDDEN void loom__kill_all(loom_runtime *rt, lua_State *L);
/* Pushes the tasklet's userdata. */
LOOM_HIDDEN void loom__push_tasklet(lua_State *L, loom_runtime *rt, loom_tasklet *t);
/* Creates a tasklet for the function at idx-... : fn and nargs values on
 * top of L are consumed. Pushes the userdata. */
LOOM_HIDDEN loom_tasklet *loom__spawn(lua_State *L, loom_runtime *rt, int nargs, int on_done_idx);
/* Short description for dumps: "tasklet #3 'name'". */
LOOM_HIDDEN void loom__push_label(lua_State *L, loom_runtime *rt, loom_tasklet *t);
/* Calls the function on top of RL's stack (nargs below it) in reactor
 * context, protected; an error is reported with `where`. */
LOOM_HIDDEN int loom__call_reactor(loom_runtime *rt, int nargs, const char *where);
/* Preemption hook management. */
LOOM_HIDDEN void loom__preempt_setup(loom_runtime *rt, lua_State *co);
LOOM_HIDDEN void loom__interrupt_hook(lua_State *L, lua_Debug *ar);
LOOM_HIDDEN void loom__deadlines_free(loom_runtime *rt, loom_tasklet *t);
/* Raises the error a kill/throw/deadline left for t, if any. */
LOOM_HIDDEN void loom__check_pending(lua_State *L, loom_runtime *rt, loom_tasklet *t);
/* loom.yield() for the caller (tasklet or main). */
LOOM_HIDDEN int loom__yield(lua_State *L, loom_runtime *rt);
/* Pushes a printable text for the error value at idx without running code
 * that could fail. */
LOOM_HIDDEN void loom__push_error_text(lua_State *L, int idx);
/* Field access on error values never runs their metamethods: an error
 * object with a hostile __index/__newindex must not raise where nothing
 * protects the call. */
static inline int loom__rawgetfield(lua_State *L, int idx, const char *k) {
  idx = lua_absindex(L, idx);
  lua_pushstring(L, k);
  return lua_rawget(L, idx);
}
static inline void loom__rawsetfield(lua_State *L, int idx, const char *k) {
  idx = lua_absindex(L, idx);
  lua_pushstring(L, k);
  lua_insert(L, -2);
  lua_rawset(L, idx);
}
LOOM_HIDDEN extern void *loom__sentinel;

/* ------------------------------------------------------------ errors */
enum {
  LOOM_E_TASKLETEXIT = 0,
  LOOM_E_CANCELLED,
  LOOM_E_TIMEOUT,
  LOOM_E_ALREADYCALLED,
  LOOM_E_DEADLOCK,
  LOOM_E_NCLASSES
};
/* Pushes a new error object of class cls with the message; traceback of L
 * at level `level` (0 = no traceback). */
LOOM_HIDDEN void loom__error_new(lua_State *L, loom_runtime *rt, int cls, const char *msg,
                                 int level);
LOOM_HIDDEN int loom__error_is(lua_State *L, loom_runtime *rt, int idx, int cls);
/* Pushes nil, "CODE: msg", "CODE"; returns 3. */
LOOM_HIDDEN int loom__fail(lua_State *L, const char *code, const char *fmt, ...);
/* Fail triple for a libuv error code; `ctx` (may be NULL) names the path/host. */
LOOM_HIDDEN int loom__fail_uv(lua_State *L, int err, const char *ctx);
/* Reports an error nobody handled (value at idx), `where` says what it was. */
LOOM_HIDDEN void loom__report(loom_runtime *rt, lua_State *L, int idx, const char *where,
                              const char *traceback);
LOOM_HIDDEN void loom__errors_open(lua_State *L, loom_runtime *rt);

/* ------------------------------------------------------------ argument checks */
/* Types whose checks sit on hot paths: their metatables are compared by
 * identity (no registry lookup). */
/* Registers the metatable on top under tname for fast checks of kind. */
LOOM_HIDDEN void loom__fast_mt(lua_State *L, loom_runtime *rt, int kind);
/* luaL_checkudata for the hot types, cheaper: each of their structs starts
 * with a magic word, and a userdata of the right size carrying it can only
 * have been made by loom (Lua code cannot forge userdata bytes). Anything
 * else goes through luaL_checkudata for the usual message. */
#define LOOM_MAGIC(kind) (0x6c6f6f00u + (uint32_t)(kind))
static inline void *loom__checkud_sized(lua_State *L, int idx, int kind, size_t size,
                                        const char *tname) {
  void *p = lua_touserdata(L, idx);
  if (p && lua_rawlen(L, idx) == size && *(const uint32_t *)p == LOOM_MAGIC(kind))
    return p;
  return luaL_checkudata(L, idx, tname);
}
/* Gives the metatable under the methods table (on top, popped) an __index
 * that finds methods with one raw table lookup and hands any other key to
 * props(obj, key) (a C function, upvalue 1 = rt): no string compares and no
 * registry lookups on the way to a method. */
LOOM_HIDDEN void loom__set_methods(lua_State *L, loom_runtime *rt, lua_CFunction props);
/* Optional timeout in seconds at idx: nil -> -1 (none); raises on negative,
 * NaN or non-number. Infinite means none. */
LOOM_HIDDEN double loom__opt_timeout(lua_State *L, int idx);
LOOM_HIDDEN double loom__check_seconds(lua_State *L, int idx);

/* ------------------------------------------------------------ modules */
LOOM_HIDDEN void loom__open_tasklet(lua_State *L, loom_runtime *rt);
LOOM_HIDDEN void loom__open_timer(lua_State *L, loom_runtime *rt);
LOOM_HIDDEN void loom__open_channel(lua_State *L, loom_runtime *rt);
LOOM_HIDDEN void loom__open_sync(lua_State *L, loom_runtime *rt);
LOOM_HIDDEN void loom__open_coro(lua_State *L, loom_runtime *rt);
/* The I/O modules (io.c collects them: tcp, udp, dns, fs, process, signal, stdio). */
LOOM_HIDDEN void loom__open_io(lua_State *L, loom_runtime *rt);
/* Sets SIGPIPE to SIG_IGN if it is still SIG_DFL (process.c): a peer that
 * goes away must give EPIPE, not kill the process. */
LOOM_HIDDEN void loom__ignore_sigpipe(void);
LOOM_HIDDEN void loom__open_tcp(lua_State *L, loom_runtime *rt);
LOOM_HIDDEN void loom__open_udp(lua_State *L, loom_runtime *rt);
LOOM_HIDDEN void loom__open_dns(lua_State *L, loom_runtime *rt);
LOOM_HIDDEN void loom__open_fs(lua_State *L, loom_runtime *rt);
LOOM_HIDDEN void loom__open_process(lua_State *L, loom_runtime *rt);
LOOM_HIDDEN void loom__open_signal(lua_State *L, loom_runtime *rt);
LOOM_HIDDEN void loom__open_stdio(lua_State *L, loom_runtime *rt);
LOOM_HIDDEN void loom__preload(lua_State *L);
/* One bounded pass for loom_step: ready tasklets until `deadline` (hrtime),
 * timers, a non-blocking poll. Returns 1 when work is left. */
LOOM_HIDDEN int loom__step(loom_runtime *rt, lua_State *L, uint64_t deadline);

/* The thread tag: the extra space of every thread loom owns points here. */
LOOM_HIDDEN extern char loom__thread_tag;
#define loom__is_loom_thread(co) (*(void **)lua_getextraspace(co) == &loom__thread_tag)

#define LOOM_NS_PER_S 1000000000.0

#endif
