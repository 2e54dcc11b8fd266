/*
 * stream.c - blocking-style reads and writes on any uv_stream_t: one input
 * buffer per stream, one waiting reader and one waiting writer at most,
 * backpressure both ways (stream.h describes how owners use it).
 *
 * Input: libuv reads into the stream's buffer. Reading, once started by a
 * reader, goes on while a reader waits or while less than the read-ahead
 * limit is buffered, so a conversation costs no epoll_ctl per message; the
 * handle is referenced only while a reader waits, so an idle stream never
 * keeps the loop (or a script) alive.
 * Output: write() first tries uv_try_write; what the kernel does not take
 * is copied into uv_write requests, at most up to the high-water mark, and
 * the writer waits until the rest of its data has been queued.
 */
#include <stdlib.h>
#include <string.h>

#include "stream.h"

#define STREAM_MAGIC 0x6c6f7374u /* "lost" */
#define READ_MIN_FREE ((size_t)16 << 10)
#define READ_INIT ((size_t)64 << 10)
#define READ_KEEP ((size_t)256 << 10) /* a larger empty buffer is freed */
#define WRITE_MIN_CHUNK ((size_t)64 << 10)
#define SMALL_BUFS 8

/* The Lua value: a box pointing at the malloc'd stream (rule H1). */
typedef struct sbox {
  uint32_t magic;
  loom_stream *s; /* NULL once closed */
  const char *mt; /* metatable name (static) */
} sbox;

enum { RK_SOME = 1, RK_EXACTLY, RK_LINE, RK_UNTIL, RK_ALL };
enum { RF_KEEP = 1 };

/* An unfinished write(): the pieces not yet queued point into Lua strings
 * that the waiting writer's stack keeps alive. */
typedef struct loom_wop {
  uv_buf_t *bufs;
  unsigned nbufs, i; /* bufs[i] is the next piece ... */
  size_t off;        /* ... from this offset */
  uv_buf_t small[SMALL_BUFS];
} loom_wop;

/* One queued uv_write: a private copy of the bytes. */
typedef struct wreq {
  uv_write_t req;
  loom_stream *s;
  size_t len;
  char data[];
} wreq;

/* ------------------------------------------------------------ boxes */

static sbox *test_box(lua_State *L, int idx) {
  sbox *b = lua_touserdata(L, idx);
  if (b && lua_rawlen(L, idx) == sizeof *b && b->magic == STREAM_MAGIC)
    return b;
  return NULL;
}

/* The stream methods carry (rt, metatable name) as upvalues; the name only
 * serves the error message. Returns the open stream or NULL if closed. */
static loom_stream *check_self(lua_State *L) {
  sbox *b = test_box(L, 1);
  if (!b)
    luaL_checkudata(L, 1, lua_tostring(L, lua_upvalueindex(2)));
  return b->s;
}

loom_stream *loom__stream_check(lua_State *L, int idx, const char *mt) {
  sbox *b = test_box(L, idx);
  if (!b || (mt && strcmp(b->mt, mt) != 0)) {
    if (mt)
      luaL_checkudata(L, idx, mt);
    luaL_typeerror(L, idx, "loom.stream");
  }
  return b->s;
}

static int fail_closed(lua_State *L, loom_stream *s) {
  sbox *b = test_box(L, 1);
  (void)s;
  return loom__fail(L, "ECLOSED", "%s is closed", b ? b->mt : "stream");
}

static void close_cb(uv_handle_t *h) {
  loom_stream *s = h->data;
  free(s->rbuf);
  free(s);
}

static void link_close(loom_runtime *rt, loom_link *l) {
  loom__stream_close(rt, (loom_stream *)((char *)l - offsetof(loom_stream, link)));
}

loom_stream *loom__stream_push(lua_State *L, loom_runtime *rt, const char *mt) {
  sbox *b = lua_newuserdatauv(L, sizeof *b, 0);
  loom_stream *s;
  b->magic = STREAM_MAGIC;
  b->s = NULL;
  b->mt = mt;
  luaL_setmetatable(L, mt);
  s = calloc(1, sizeof *s);
  if (!s)
    return NULL;
  s->rt = rt;
  s->box = (void **)&b->s;
  s->what = mt;
  s->timeout = -1;
  s->hwm = LOOM_STREAM_HWM;
  s->rahead = LOOM_STREAM_READ_AHEAD;
  b->s = s;
  return s;
}

loom_stream *loom__stream_renew(loom_stream *s) {
  loom_stream *n = calloc(1, sizeof *n);
  void **box = s->box;
  s->box = NULL;
  loom__stream_close(s->rt, s);
  if (box)
    *box = n;
  if (!n)
    return NULL;
  n->rt = s->rt;
  n->box = box;
  n->what = s->what;
  n->timeout = s->timeout;
  n->hwm = s->hwm;
  n->rahead = s->rahead;
  return n;
}

int loom__stream_opened(loom_stream *s, int err) {
  if (err < 0) {
    if (s->box)
      *s->box = NULL;
    free(s);
    return err;
  }
  s->h.handle.data = s;
  s->link.close = link_close;
  loom__link(s->rt, &s->link);
  /* Only a waiting tasklet keeps the loop alive (reader, accepter...);
   * requests (writes, connect) count by themselves. */
  uv_unref(&s->h.handle);
  return 0;
}

void loom__stream_close(loom_runtime *rt, loom_stream *s) {
  if (s->closed)
    return;
  s->closed = 1;
  loom__unlink(&s->link);
  if (s->box) {
    *s->box = NULL;
    s->box = NULL;
  }
  /* The cancel hooks clear rblock / wblock. */
  if (s->rblock)
    loom__wake_fail(rt, s->rblock, "ECLOSED", "closed while reading", LOOM_WOKE_CLOSE);
  if (s->wblock)
    loom__wake_fail(rt, s->wblock, "ECLOSED", "closed while writing", LOOM_WOKE_CLOSE);
  /* Pending write, shutdown and connect requests get UV_ECANCELED
   * before close_cb frees the memory. */
  uv_close(&s->h.handle, close_cb);
}

/* ------------------------------------------------------------ input buffer */

static void consume(loom_stream *s, size_t n) {
  s->rstart += n;
  s->rscan = 0;
  if (s->rstart == s->rend) {
    s->rstart = s->rend = 0;
    if (s->rcap > READ_KEEP) {
      free(s->rbuf);
      s->rbuf = NULL;
      s->rcap = 0;
    }
  }
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  loom_stream *s = h->data;
  (void)suggested;
  if (s->rcap - s->rend < READ_MIN_FREE) {
    size_t used = s->rend - s->rstart;
    if (s->rstart > 0 && used <= s->rcap / 2) {
      memmove(s->rbuf, s->rbuf + s->rstart, used);
      s->rstart = 0;
      s->rend = used;
    }
    if (s->rcap - s->rend < READ_MIN_FREE) {
      size_t cap = s->rcap ? s->rcap * 2 : READ_INIT;
      char *p = realloc(s->rbuf, cap);
      if (!p) {
        buf->base = NULL;
        buf->len = 0; /* read_cb gets UV_ENOBUFS */
        return;
      }
      s->rbuf = p;
      s->rcap = cap;
    }
  }
  buf->base = s->rbuf + s->rend;
  buf->len = s->rcap - s->rend;
}

/* Finds the delimiter d (dl >= 1 bytes) in p[from, n): its offset or -1. */
static ptrdiff_t find(const char *p, size_t n, size_t from, const char *d, size_t dl) {
  while (from + dl <= n) {
    const char *q = memchr(p + from, d[0], n - from - dl + 1);
    if (!q)
      return -1;
    if (dl == 1 || memcmp(q + 1, d + 1, dl - 1) == 0)
      return q - p;
    from = (size_t)(q - p) + 1;
  }
  return -1;
}

static void push_fail(lua_State *S, const char *code, const char *msg) {
  lua_pushnil(S);
  lua_pushfstring(S, "%s: %s", code, msg);
  lua_pushstring(S, code);
}

/* The end of input as a fail triple: EOF or the read error. */
static int push_rerr(lua_State *S, loom_stream *s) {
  if (s->rerr == UV_EOF)
    push_fail(S, "EOF", "end of stream");
  else
    push_fail(S, uv_err_name(s->rerr), uv_strerror(s->rerr));
  return 3;
}

static int push_toolong(lua_State *S, loom_stream *s) {
  lua_pushnil(S);
  lua_pushfstring(S, "EMSGSIZE: %s longer than %I bytes", s->rkind == RK_LINE ? "line" : "record",
                  (lua_Integer)s->rneed);
  lua_pushliteral(S, "EMSGSIZE");
  return 3;
}

/* Tries to complete the read described by s->rkind/rneed/rdelim from the
 * buffer and s->rerr. Pushes its results on S and returns how many, or
 * returns 0 (pushing nothing) when it needs more input.
 * Stack: [-0, +(0|1|3)]. */
static int try_read(loom_stream *s, lua_State *S) {
  char *p = s->rbuf + s->rstart;
  size_t avail = s->rend - s->rstart;
  switch (s->rkind) {
  case RK_SOME:
    if (avail > 0) {
      size_t n = avail < s->rneed ? avail : s->rneed;
      lua_pushlstring(S, p, n);
      consume(s, n);
      return 1;
    }
    break;
  case RK_EXACTLY:
    if (avail >= s->rneed) {
      lua_pushlstring(S, p, s->rneed);
      consume(s, s->rneed);
      return 1;
    }
    break;
  case RK_ALL:
    if (s->rerr == UV_EOF) {
      lua_pushlstring(S, p, avail);
      consume(s, avail);
      return 1;
    }
    break;
  case RK_LINE: {
    ptrdiff_t at = find(p, avail, s->rscan, "\n", 1);
    size_t len;
    if (at >= 0) {
      len = (size_t)at;
      if (len > 0 && p[len - 1] == '\r')
        len--;
      if (len > s->rneed)
        return push_toolong(S, s);
      lua_pushlstring(S, p, (s->rflags & RF_KEEP) ? (size_t)at + 1 : len);
      consume(s, (size_t)at + 1);
      return 1;
    }
    s->rscan = avail;
    /* Even a "\r\n" next could not make it short enough. */
    if (avail > s->rneed + 1)
      return push_toolong(S, s);
    if (s->rerr == UV_EOF && avail > 0) {
      /* The last line lacks its newline: return it (like file:read("l")). */
      if (avail > s->rneed)
        return push_toolong(S, s);
      lua_pushlstring(S, p, avail);
      consume(s, avail);
      return 1;
    }
    break;
  }
  case RK_UNTIL: {
    size_t from = s->rscan >= s->rdlen ? s->rscan - s->rdlen + 1 : 0;
    ptrdiff_t at = find(p, avail, from, s->rdelim, s->rdlen);
    if (at >= 0) {
      if ((size_t)at > s->rneed)
        return push_toolong(S, s);
      lua_pushlstring(S, p, (s->rflags & RF_KEEP) ? (size_t)at + s->rdlen : (size_t)at);
      consume(s, (size_t)at + s->rdlen);
      return 1;
    }
    s->rscan = avail;
    if (avail >= s->rneed + s->rdlen)
      return push_toolong(S, s);
    break;
  }
  }
  if (s->rerr)
    return push_rerr(S, s);
  return 0;
}

/* Reading stops once enough is buffered and nobody waits (backpressure on
 * input: the peer's sends then block on its side). */
static void maybe_pause(loom_stream *s) {
  if (s->reading && !s->rblock && s->rend - s->rstart >= s->rahead) {
    uv_read_stop(&s->h.stream);
    s->reading = 0;
  }
}

static void reader_leaves(loom_stream *s) {
  s->rblock = NULL;
  s->rdelim = NULL;
  if (!s->closed) {
    uv_unref(&s->h.handle);
    maybe_pause(s);
  }
}

static void read_cb(uv_stream_t *h, ssize_t nread, const uv_buf_t *buf) {
  loom_stream *s = h->data;
  (void)buf;
  if (nread > 0)
    s->rend += (size_t)nread;
  else if (nread == 0)
    return; /* EAGAIN */
  else {
    s->rerr = (int)nread;
    uv_read_stop(h);
    s->reading = 0;
  }
  if (s->rblock) {
    loom_block *b = s->rblock;
    lua_State *S = loom__wake_stack(s->rt, b->t, 3);
    int n = S ? try_read(s, S) : 0;
    if (n > 0 || !S) {
      reader_leaves(s);
      loom__wake(s->rt, b, n, LOOM_WOKE_DONE);
    }
    return;
  }
  maybe_pause(s);
}

static int start_reading(loom_stream *s) {
  int err;
  if (s->reading || s->rerr)
    return 0;
  err = uv_read_start(&s->h.stream, alloc_cb, read_cb);
  if (err == 0)
    s->reading = 1;
  return err;
}

int loom__stream_read_ahead(loom_stream *s) { return start_reading(s); }

static void read_cancel(loom_runtime *rt, loom_block *b, int why) {
  loom_stream *s = b->data;
  (void)rt;
  (void)why;
  reader_leaves(s);
}

/* The body of every read method once its arguments are checked. */
static int do_read(lua_State *L, loom_stream *s, int kind, size_t need, int flags,
                   const char *delim, size_t dlen) {
  loom_runtime *rt = loom__rt(L);
  loom_block *b;
  int n, err;
  if (s->rblock)
    return luaL_error(L, "%s: another tasklet is already reading", s->what);
  s->rdelim = delim; /* read_until: stays on this stack while the reader waits */
  s->rdlen = dlen;
  s->rkind = kind;
  s->rneed = need;
  s->rflags = flags;
  s->rscan = 0;
  n = try_read(s, L);
  if (n > 0)
    return n;
  loom__check_block(L, rt);
  err = start_reading(s);
  if (err < 0)
    return loom__fail_uv(L, err, NULL);
  b = loom__block_new(rt, L, "stream read");
  b->data = s;
  b->cancel = read_cancel;
  s->rblock = b;
  uv_ref(&s->h.handle);
  loom__block_timeout(rt, b, s->timeout);
  return loom__suspend(L, rt, b);
}

static size_t check_size(lua_State *L, int idx, const char *what) {
  lua_Integer n = luaL_checkinteger(L, idx);
  if (n < 0)
    luaL_argerror(L, idx, lua_pushfstring(L, "%s must be a non-negative integer", what));
  return (size_t)n;
}

static size_t opt_size(lua_State *L, int idx, const char *what, size_t def) {
  return lua_isnoneornil(L, idx) ? def : check_size(L, idx, what);
}

/* s:read([n]) -> data (1..n bytes of what has arrived) or fail; EOF at the end. */
static int m_read(lua_State *L) {
  loom_stream *s = check_self(L);
  size_t n = opt_size(L, 2, "size", (size_t)-1 >> 1);
  if (!s)
    return fail_closed(L, s);
  if (n == 0) {
    lua_pushliteral(L, "");
    return 1;
  }
  return do_read(L, s, RK_SOME, n, 0, NULL, 0);
}

/* s:read_exactly(n) -> exactly n bytes or fail (EOF: the bytes stay buffered). */
static int m_read_exactly(lua_State *L) {
  loom_stream *s = check_self(L);
  size_t n = check_size(L, 2, "size");
  if (!s)
    return fail_closed(L, s);
  return do_read(L, s, RK_EXACTLY, n, 0, NULL, 0);
}

/* s:read_line([opts]) -> line without "\n" / "\r\n", or fail.
 * opts: max (default 64 KiB; longer -> EMSGSIZE), keep_newline. */
static int m_read_line(lua_State *L) {
  loom_stream *s = check_self(L);
  size_t max = LOOM_STREAM_MAX_LINE;
  int flags = 0;
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    if (lua_getfield(L, 2, "max") != LUA_TNIL) {
      if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 0)
        luaL_argerror(L, 2, "opts.max must be a non-negative integer");
      max = (size_t)lua_tointeger(L, -1);
    }
    if (lua_getfield(L, 2, "keep_newline") != LUA_TNIL && lua_toboolean(L, -1))
      flags |= RF_KEEP;
    lua_settop(L, 2);
  }
  if (!s)
    return fail_closed(L, s);
  return do_read(L, s, RK_LINE, max, flags, NULL, 0);
}

/* s:read_until(delim [, max]) -> data before delim (delim consumed) or fail. */
static int m_read_until(lua_State *L) {
  loom_stream *s = check_self(L);
  size_t dl;
  const char *d = luaL_checklstring(L, 2, &dl);
  size_t max = opt_size(L, 3, "max", LOOM_STREAM_MAX_LINE);
  luaL_argcheck(L, dl > 0, 2, "delimiter must not be empty");
  if (!s)
    return fail_closed(L, s);
  return do_read(L, s, RK_UNTIL, max, 0, d, dl);
}

/* s:read_all() -> everything until EOF ("" at EOF), or fail. */
static int m_read_all(lua_State *L) {
  loom_stream *s = check_self(L);
  if (!s)
    return fail_closed(L, s);
  return do_read(L, s, RK_ALL, 0, 0, NULL, 0);
}

/* ------------------------------------------------------------ output */

static void write_cb(uv_write_t *req, int status);

/* Queues (copies) more of the unfinished write op while the queue is below
 * the high-water mark. Returns 1 when all of it is queued, 0 when the rest
 * must wait, or a negative UV_E* code. */
static int pump(loom_stream *s, loom_wop *op) {
  while (op->i < op->nbufs) {
    size_t room, chunk = 0, left = 0;
    unsigned j;
    wreq *w;
    uv_buf_t b;
    int err;
    if (s->wqueued > 0 && s->wqueued >= s->hwm)
      return 0; /* a write_cb comes and calls again */
    room = s->hwm > s->wqueued ? s->hwm - s->wqueued : 0;
    if (room < WRITE_MIN_CHUNK)
      room = WRITE_MIN_CHUNK;
    for (j = op->i; j < op->nbufs && left < room; j++)
      left += op->bufs[j].len - (j == op->i ? op->off : 0);
    chunk = left < room ? left : room;
    w = malloc(sizeof *w + chunk);
    if (!w)
      return UV_ENOMEM;
    w->s = s;
    w->len = chunk;
    for (left = 0; left < chunk;) {
      uv_buf_t *p = &op->bufs[op->i];
      size_t take = p->len - op->off;
      if (take > chunk - left)
        take = chunk - left;
      memcpy(w->data + left, p->base + op->off, take);
      left += take;
      op->off += take;
      if (op->off == p->len) {
        op->i++;
        op->off = 0;
      }
    }
    b = uv_buf_init(w->data, (unsigned)chunk);
    err = uv_write(&w->req, &s->h.stream, &b, 1, write_cb);
    if (err < 0) {
      free(w);
      return err;
    }
    s->wqueued += chunk;
  }
  return 1;
}

static void writer_leaves(loom_stream *s) {
  free(s->wop);
  s->wop = NULL;
  s->wblock = NULL;
}

static void write_cb(uv_write_t *req, int status) {
  wreq *w = (wreq *)req;
  loom_stream *s = w->s;
  int rc;
  s->wqueued -= w->len;
  free(w);
  if (s->closed)
    return;
  if (status < 0 && !s->werr)
    s->werr = status;
  if (!s->wop)
    return; /* no writer waits (or shutdown waits: libuv orders it) */
  rc = s->werr ? s->werr : pump(s, s->wop);
  if (rc != 0) {
    loom_block *b = s->wblock;
    writer_leaves(s);
    if (rc < 0) {
      if (!s->werr)
        s->werr = rc;
      loom__wake_fail(s->rt, b, uv_err_name(rc), uv_strerror(rc), LOOM_WOKE_DONE);
    } else {
      lua_State *S = loom__wake_stack(s->rt, b->t, 1);
      if (S)
        lua_pushboolean(S, 1);
      loom__wake(s->rt, b, S ? 1 : 0, LOOM_WOKE_DONE);
    }
  }
}

static void write_cancel(loom_runtime *rt, loom_block *b, int why) {
  (void)rt;
  (void)why;
  /* Chunks already queued are private copies and complete on their own. */
  writer_leaves(b->data);
}

static const char *piece(lua_State *L, int idx, size_t *len, int arg, lua_Integer item) {
  const char *p = lua_tolstring(L, idx, len);
  if (!p) {
    if (item)
      luaL_argerror(L, arg,
                    lua_pushfstring(L, "array of strings expected, item %I is a %s", item,
                                    luaL_typename(L, idx)));
    luaL_typeerror(L, arg, "string");
  }
  return p;
}

/* s:write(data...) -> true or fail. data: strings, or one array of strings. */
static int m_write(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  loom_stream *s = check_self(L);
  uv_buf_t small[SMALL_BUFS], *bufs = small;
  unsigned nbufs, i;
  size_t total = 0, sent = 0;
  int top = lua_gettop(L), base = 2, r;
  loom_wop *op;
  loom_block *b;
  if (top == 2 && lua_type(L, 2) == LUA_TTABLE) {
    /* Copy the items to the stack: they stay alive there however the
     * table changes while the writer waits. */
    lua_Integer k, n = luaL_len(L, 2);
    if (n > 1000000)
      luaL_argerror(L, 2, "too many items");
    luaL_checkstack(L, (int)n + LUA_MINSTACK, "too many items");
    for (k = 1; k <= n; k++) {
      lua_rawgeti(L, 2, k);
      piece(L, -1, &total, 2, k);
    }
    base = 3;
    top = lua_gettop(L);
  }
  nbufs = (unsigned)(top - base + 1);
  if (nbufs > SMALL_BUFS) {
    bufs = lua_newuserdatauv(L, nbufs * sizeof *bufs, 0); /* freed by the GC */
  }
  total = 0;
  for (i = 0; i < nbufs; i++) {
    size_t len;
    const char *p = piece(L, base + (int)i, &len, base == 3 ? 2 : base + (int)i,
                          base == 3 ? (lua_Integer)i + 1 : 0);
    if (len > UINT32_MAX)
      luaL_argerror(L, base == 3 ? 2 : base + (int)i, "string longer than 4 GiB");
    bufs[i] = uv_buf_init((char *)p, (unsigned)len);
    total += len;
  }
  if (!s)
    return fail_closed(L, s);
  if (s->wblock)
    return luaL_error(L, "%s: another tasklet is already writing", s->what);
  if (s->werr)
    return loom__fail_uv(L, s->werr, NULL);
  if (s->wshut)
    return loom__fail(L, "EPIPE", "write after shutdown");
  if (total == 0) {
    lua_pushboolean(L, 1);
    return 1;
  }
  /* Could this write have to wait even if the kernel took nothing now?
   * Then check that the caller may wait before sending a byte, so a
   * refusal (reactor context...) never leaves half a message sent. When
   * it fits, pump() below queues the rest in one go. */
  {
    size_t room = s->hwm > s->wqueued ? s->hwm - s->wqueued : 0;
    if (room < WRITE_MIN_CHUNK)
      room = WRITE_MIN_CHUNK;
    if ((s->wqueued > 0 && s->wqueued >= s->hwm) || total > room)
      loom__check_block(L, rt);
  }
  if (s->wqueued == 0) {
    r = uv_try_write(&s->h.stream, bufs, nbufs);
    if (r > 0)
      sent = (size_t)r;
    else if (r < 0 && r != UV_EAGAIN && r != UV_ENOSYS) {
      s->werr = r;
      return loom__fail_uv(L, r, NULL);
    }
    if (sent == total) {
      lua_pushboolean(L, 1);
      return 1;
    }
  }
  /* Will the rest fit without waiting (pump queues one chunk of at least
   * the room left below the mark)? If not, check that we may wait before
   * queueing anything. */
  op = malloc(sizeof *op + (nbufs > SMALL_BUFS ? nbufs * sizeof *bufs : 0));
  if (!op)
    return luaL_error(L, "not enough memory");
  op->bufs = nbufs > SMALL_BUFS ? (uv_buf_t *)(op + 1) : op->small;
  memcpy(op->bufs, bufs, nbufs * sizeof *bufs);
  op->nbufs = nbufs;
  op->i = 0;
  op->off = 0;
  /* Skip what uv_try_write took. */
  while (sent > 0) {
    size_t l = op->bufs[op->i].len - op->off;
    if (sent >= l) {
      sent -= l;
      op->i++;
      op->off = 0;
    } else {
      op->off += sent;
      sent = 0;
    }
  }
  r = pump(s, op);
  if (r != 0) {
    free(op);
    if (r < 0) {
      s->werr = r;
      return loom__fail_uv(L, r, NULL);
    }
    lua_pushboolean(L, 1);
    return 1;
  }
  b = loom__block_new(rt, L, "stream write");
  b->data = s;
  b->cancel = write_cancel;
  s->wblock = b;
  s->wop = op;
  loom__block_timeout(rt, b, s->timeout);
  return loom__suspend(L, rt, b);
}

/* ------------------------------------------------------------ shutdown */

static void shutdown_cb(uv_shutdown_t *req, int status) {
  loom_block *b = req->data;
  loom_stream *s = req->handle->data;
  free(req);
  if (!b)
    return; /* the waiter left (kill, timeout, close) */
  s->wblock = NULL;
  if (status < 0) {
    if (!s->werr)
      s->werr = status;
    loom__wake_fail(s->rt, b, uv_err_name(status), uv_strerror(status), LOOM_WOKE_DONE);
  } else {
    lua_State *S = loom__wake_stack(s->rt, b->t, 1);
    if (S)
      lua_pushboolean(S, 1);
    loom__wake(s->rt, b, S ? 1 : 0, LOOM_WOKE_DONE);
  }
}

static void shutdown_cancel(loom_runtime *rt, loom_block *b, int why) {
  uv_shutdown_t *req = b->data;
  loom_stream *s = req->handle->data;
  (void)rt;
  (void)why;
  req->data = NULL;
  s->wblock = NULL;
}

/* s:shutdown() -> true or fail: waits until queued data is written and the
 * write side is shut down (the peer reads EOF). A second call: true. */
static int m_shutdown(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  loom_stream *s = check_self(L);
  uv_shutdown_t *req;
  loom_block *b;
  int err;
  if (!s)
    return fail_closed(L, s);
  if (s->wblock)
    return luaL_error(L, "%s: another tasklet is already writing", s->what);
  if (s->wshut) {
    lua_pushboolean(L, 1);
    return 1;
  }
  if (s->werr)
    return loom__fail_uv(L, s->werr, NULL);
  loom__check_block(L, rt);
  req = malloc(sizeof *req);
  if (!req)
    return luaL_error(L, "not enough memory");
  b = loom__block_new(rt, L, "stream shutdown");
  err = uv_shutdown(req, &s->h.stream, shutdown_cb);
  if (err < 0) {
    free(req);
    loom__block_abort(rt, b);
    return loom__fail_uv(L, err, NULL);
  }
  s->wshut = 1;
  req->data = b;
  b->data = req;
  b->cancel = shutdown_cancel;
  s->wblock = b;
  loom__block_timeout(rt, b, s->timeout);
  return loom__suspend(L, rt, b);
}

/* ------------------------------------------------------------ the rest */

/* s:close() -> true. Wakes the waiting reader/writer with ECLOSED. Bytes
 * still queued in libuv (write() returns once data is queued) are dropped:
 * call shutdown() first to flush them (docs/tcp.md). */
static int m_close(lua_State *L) {
  loom_stream *s = check_self(L);
  if (s)
    loom__stream_close(loom__rt(L), s);
  lua_pushboolean(L, 1);
  return 1;
}

static int m_gc(lua_State *L) {
  sbox *b = test_box(L, 1);
  if (b && b->s)
    loom__stream_close(loom__rt(L), b->s);
  return 0;
}

/* s:settimeout(s|nil): the default timeout of later reads and writes. */
static int m_settimeout(lua_State *L) {
  loom_stream *s = check_self(L);
  double t = loom__opt_timeout(L, 2);
  if (s)
    s->timeout = t;
  return 0;
}

static int m_gettimeout(lua_State *L) {
  loom_stream *s = check_self(L);
  if (s && s->timeout >= 0)
    lua_pushnumber(L, s->timeout);
  else
    lua_pushnil(L);
  return 1;
}

/* s:set_high_water(bytes): writers wait while more than this is queued. */
static int m_set_high_water(lua_State *L) {
  loom_stream *s = check_self(L);
  size_t n = check_size(L, 2, "bytes");
  if (s)
    s->hwm = n;
  return 0;
}

/* s:write_queue_size() -> bytes queued in libuv and not yet written. */
static int m_write_queue_size(lua_State *L) {
  loom_stream *s = check_self(L);
  lua_pushinteger(L, s ? (lua_Integer)s->wqueued : 0);
  return 1;
}

/* s:closed() -> boolean */
static int m_closed(lua_State *L) {
  lua_pushboolean(L, check_self(L) == NULL);
  return 1;
}

static int m_tostring(lua_State *L) {
  sbox *b = test_box(L, 1);
  if (!b)
    return luaL_typeerror(L, 1, "loom.stream");
  if (b->s)
    lua_pushfstring(L, "%s: %p", b->mt, (void *)b->s);
  else
    lua_pushfstring(L, "%s (closed): %p", b->mt, (void *)b);
  return 1;
}

void loom__stream_metatable(lua_State *L, loom_runtime *rt, const char *mt, const luaL_Reg *extra) {
  static const luaL_Reg methods[] = {{"read", m_read},
                                     {"read_exactly", m_read_exactly},
                                     {"read_line", m_read_line},
                                     {"read_until", m_read_until},
                                     {"read_all", m_read_all},
                                     {"write", m_write},
                                     {"shutdown", m_shutdown},
                                     {"close", m_close},
                                     {"settimeout", m_settimeout},
                                     {"gettimeout", m_gettimeout},
                                     {"set_high_water", m_set_high_water},
                                     {"write_queue_size", m_write_queue_size},
                                     {"closed", m_closed},
                                     {NULL, NULL}};
  static const luaL_Reg metas[] = {
      {"__gc", m_gc}, {"__close", m_gc}, {"__tostring", m_tostring}, {NULL, NULL}};
  const luaL_Reg *r;
  if (!luaL_newmetatable(L, mt)) {
    lua_pop(L, 1);
    return;
  }
  lua_newtable(L);
  for (r = methods; r->name; r++) {
    lua_pushlightuserdata(L, rt);
    lua_pushstring(L, mt);
    lua_pushcclosure(L, r->func, 2);
    lua_setfield(L, -2, r->name);
  }
  if (extra)
    loom__setfuncs(L, rt, extra);
  lua_setfield(L, -2, "__index");
  for (r = metas; r->name; r++) {
    lua_pushlightuserdata(L, rt);
    lua_pushstring(L, mt);
    lua_pushcclosure(L, r->func, 2);
    lua_setfield(L, -2, r->name);
  }
  lua_pop(L, 1);
}
