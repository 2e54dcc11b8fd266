/*
 * stream.h - the shared machinery of every loom object built on a
 * uv_stream_t (TCP connections now; pipes and TTYs for process stdio and
 * loom.stdin/stdout/stderr): buffered blocking reads, writes with
 * backpressure, shutdown, close, and the Lua methods that expose them.
 *
 * How an owner (tcp.c, process.c, stdio.c) uses it:
 *
 *   once, when its module opens:
 *     loom__stream_metatable(L, rt, "loom.pipe", pipe_extra_methods);
 *
 *   for each object:
 *     loom_stream *s = loom__stream_push(L, rt, "loom.pipe");  -- box on top
 *     err = uv_pipe_init(rt->loop, &s->h.pipe, 0);             -- or tcp/tty
 *     if (loom__stream_opened(s, err) < 0)                     -- s is gone
 *       return loom__fail_uv(L, err, NULL);
 *     ... the box on top is the Lua object; s->h.stream is the uv handle.
 *
 *   in its own methods:
 *     loom_stream *s = loom__stream_check(L, 1, "loom.pipe");  -- NULL: closed
 *
 * Lifecycle (design rules H1-H5): the Lua value is a box holding a pointer
 * to malloc'd memory (struct loom_stream, with the uv handle inside). close(),
 * `<close>`, __gc and runtime shutdown all end in loom__stream_close, which
 * wakes the waiting reader and writer with ECLOSED, uv_close()s the handle
 * and clears the box; the memory is freed only in the close callback.
 *
 * Methods every stream metatable gets: read, read_exactly, read_line,
 * read_until, read_all, write, shutdown, close, settimeout, gettimeout,
 * set_high_water, write_queue_size, closed (docs/tcp.md describes each).
 * One reader and one writer may wait at a time; a second concurrent one
 * raises.
 */
#ifndef LOOM_STREAM_H
#define LOOM_STREAM_H

#include "loom_int.h"

/* A writer waits while more than this many bytes are queued in libuv. */
#define LOOM_STREAM_HWM ((size_t)1 << 20)
/* Input read ahead while no reader waits stops at this many bytes. */
#define LOOM_STREAM_READ_AHEAD ((size_t)64 << 10)
/* Default maximum line length of read_line / read_until. */
#define LOOM_STREAM_MAX_LINE ((size_t)64 << 10)

typedef struct loom_stream loom_stream;

struct loom_stream {
  loom_link link; /* in rt->objects while open */
  loom_runtime *rt;
  void **box;       /* the Lua box's pointer slot, NULL once collected */
  const char *what; /* metatable name, for messages and dumps */
  double timeout;   /* default for reads/writes (and connect): -1 none */

  /* read side: bytes [rstart, rend) of rbuf are buffered input */
  char *rbuf;
  size_t rcap, rstart, rend;
  size_t rscan;       /* read_line/read_until: searched up to here */
  size_t rahead;      /* read ahead limit while nobody reads */
  int rerr;           /* UV_EOF or an error: no more input */
  int reading;        /* uv_read_start is in effect */
  loom_block *rblock; /* the waiting reader, if any */
  int rkind;          /* what it waits for (stream.c) */
  size_t rneed;       /* its size argument (n, max) */
  const char *rdelim; /* read_until's delimiter (on the reader's stack) */
  size_t rdlen;
  int rflags;

  /* write side */
  size_t wqueued;       /* bytes handed to libuv and not yet written */
  size_t hwm;           /* high-water mark */
  int werr;             /* a failed write or shutdown: later writes fail */
  int wshut;            /* shutdown() was called */
  loom_block *wblock;   /* the waiting writer (or shutdown), if any */
  struct loom_wop *wop; /* its unfinished write */

  /* owner's use (tcp.c: the connect request in flight) */
  void *owner;
  int closed; /* loom__stream_close ran: uv_close is under way */

  union {
    uv_handle_t handle;
    uv_stream_t stream;
    uv_tcp_t tcp;
    uv_pipe_t pipe;
    uv_tty_t tty;
  } h;
};

/* Creates the metatable `mt` (if new) with the stream methods plus
 * `extra` (may be NULL; registered with the runtime as upvalue 1), __gc,
 * __close, __tostring and __name. Stack: [-0, +0]. */
LOOM_HIDDEN void loom__stream_metatable(lua_State *L, loom_runtime *rt, const char *mt,
                                        const luaL_Reg *extra);

/* Pushes a new box with metatable `mt` and returns its stream, whose
 * handle s->h is NOT initialised yet: initialise it on rt->loop, then call
 * loom__stream_opened. Returns NULL (the box, pushed all the same, reads as
 * closed) when memory is short; lua_newuserdatauv itself may raise. It
 * never raises otherwise, so a libuv callback may use it on a wake stack.
 * `mt` must be a static string naming a metatable made by
 * loom__stream_metatable. Stack: [-0, +1]. */
LOOM_HIDDEN loom_stream *loom__stream_push(lua_State *L, loom_runtime *rt, const char *mt);

/* Completes loom__stream_push with the result of uv_*_init: on success
 * links the stream into the runtime and returns 0; on err < 0 frees the
 * stream (the box then reads as closed) and returns err. Stack: [-0, +0]. */
LOOM_HIDDEN int loom__stream_opened(loom_stream *s, int err);

/* The open stream of the box at idx with metatable `mt` (any stream
 * metatable when mt is NULL), or NULL when it is closed. Raises
 * "bad argument" for anything else. Stack: [-0, +0]. */
LOOM_HIDDEN loom_stream *loom__stream_check(lua_State *L, int idx, const char *mt);

/* Closes s (idempotent): wakes its reader and writer with ECLOSED, clears
 * the box, uv_close()s the handle; the close callback frees the memory.
 * Never enters Lua code. */
LOOM_HIDDEN void loom__stream_close(loom_runtime *rt, loom_stream *s);

/* Gives the box of s a fresh, uninitialised stream with the same settings
 * and closes s (which must not have been used for reads or writes): how a
 * connect that failed on one address tries the next with a new socket.
 * Initialise the new handle, then call loom__stream_opened. Returns NULL on
 * memory exhaustion (the box then reads as closed). */
LOOM_HIDDEN loom_stream *loom__stream_renew(loom_stream *s);

/* Starts reading at once (e.g. for a pipe whose data should be collected
 * while nobody reads yet); reading stops again once the read-ahead limit is
 * buffered. Returns 0 or a negative UV_E* code. */
LOOM_HIDDEN int loom__stream_read_ahead(loom_stream *s);

#endif
