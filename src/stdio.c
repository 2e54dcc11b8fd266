/*
 * stdio.c - loom.stdin, loom.stdout and loom.stderr: the process's standard
 * streams as loom streams whose reads and writes suspend only the calling
 * tasklet. Each is created on first access, after the kind of its
 * descriptor: a terminal becomes a uv_tty_t and a pipe or socket a uv_pipe_t
 * (both served by stream.c); a regular file (or anything libuv cannot poll)
 * is read and written on the thread pool by the small buffered object below.
 *
 * Descriptors 0, 1 and 2 themselves are never closed nor made non-blocking
 * when it can be avoided: the streams work on a private descriptor (a pipe
 * reopened through /proc/self/fd, a terminal reopened by libuv, else a
 * dup), so print(), io.write and inherited children keep blocking I/O.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "loom_int.h"
#include "stream.h"

/* In process.c (it belongs in loom_int.h, or better in the runtime). */
LOOM_HIDDEN void loom__ignore_sigpipe(void);

#define TTY_MT "loom.tty"
#define PIPE_MT "loom.pipe"
#define FILE_MT "loom.stdio_file"

#define FILE_CHUNK ((size_t)64 << 10)

static const char *const stdio_names[] = {"stdin", "stdout", "stderr", NULL};

/* ------------------------------------------------------------ private descriptors */

/* Moves fd above 2 (so that closing it never closes a standard stream). */
static int above_stdio(int fd) {
  int nfd;
  if (fd < 0 || fd > 2)
    return fd;
  nfd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  close(fd);
  return nfd;
}

/* A copy of fd above 2, close-on-exec, or -errno. It shares the open file
 * description (offset, O_NONBLOCK) with fd. */
static int dup_fd(int fd) {
  int nfd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  return nfd < 0 ? -errno : nfd;
}

/* Reopens the pipe (FIFO) behind fd through /proc: a new open file
 * description of the same pipe, so that making it non-blocking changes
 * nothing for the other users of fd. -errno for anything else (a socket
 * cannot be reopened: ENXIO). */
static int reopen_pipe(int fd) {
  char path[32];
  int nfd;
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  /* O_NONBLOCK: opening a FIFO must not wait for the other side. */
  nfd = above_stdio(open(path, (fd == 0 ? O_RDONLY : O_WRONLY) | O_CLOEXEC | O_NONBLOCK));
  return nfd < 0 ? -errno : nfd;
}

/* fd 0 is a socket read through libuv: its shared description had to be
 * made non-blocking. The runtime's shutdown makes it blocking again, so the
 * shell (or whoever shares it) does not inherit the change. */
typedef struct restore_fd0 {
  loom_link link;
} restore_fd0;

static void restore_fd0_close(loom_runtime *rt, loom_link *l) {
  int flags = fcntl(0, F_GETFL);
  (void)rt;
  if (flags >= 0 && (flags & O_NONBLOCK))
    fcntl(0, F_SETFL, flags & ~O_NONBLOCK);
  free(l);
}

static void restore_fd0_at_shutdown(loom_runtime *rt) {
  restore_fd0 *r;
  int flags = fcntl(0, F_GETFL);
  if (flags < 0 || (flags & O_NONBLOCK))
    return; /* it was non-blocking before us: leave it so */
  r = malloc(sizeof *r);
  if (!r)
    return;
  r->link.close = restore_fd0_close;
  loom__link(rt, &r->link);
}

/* ------------------------------------------------------------ file streams */

/* A standard stream that libuv cannot poll (a regular file, /dev/null...):
 * one fs request at a time per direction on the thread pool. Reads fill a
 * buffer that read_line & co. parse like stream.c does; writes are queued in
 * order, each with a private copy of its bytes, and their writers wait until
 * the bytes are written. The memory lives until the last request is back. */
typedef struct fstream fstream;
typedef struct freq freq;

struct freq {
  uv_fs_t fs;
  fstream *f;
  loom_block *b; /* the waiting tasklet, NULL once it left */
  freq *next;    /* write queue */
  size_t len, done;
  char data[];
};

struct fstream {
  loom_link link;
  loom_runtime *rt;
  void **box;
  int fd;        /* -1 once closed */
  int err;       /* the descriptor could not be opened: every call fails */
  int closed;
  int inflight;  /* fs requests not yet back */
  double timeout;
  /* reading */
  char *rbuf;
  size_t rcap, rstart, rend;
  int rerr;      /* UV_EOF or an error */
  loom_block *rblock;
  freq *rreq;    /* the read in flight */
  int rkind;
  size_t rneed;
  const char *rdelim;
  size_t rdlen;
  int rkeep;
  /* writing: wq_head is in flight, the others wait their turn */
  freq *wq_head, *wq_tail;
  int werr;
};

enum { RK_SOME = 1, RK_EXACTLY, RK_LINE, RK_UNTIL, RK_ALL };

static void fstream_free_maybe(fstream *f) {
  if (f->closed && f->inflight == 0) {
    if (f->fd >= 0)
      close(f->fd);
    free(f->rbuf);
    free(f);
  }
}

static fstream *check_fstream(lua_State *L, int idx) {
  void **box = luaL_checkudata(L, idx, FILE_MT);
  return *box;
}

static int fail_fclosed(lua_State *L) { return loom__fail(L, "ECLOSED", "%s is closed", FILE_MT); }

static ptrdiff_t find(const char *p, size_t n, const char *d, size_t dl) {
  size_t from = 0;
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

static void consume(fstream *f, size_t n) {
  f->rstart += n;
  if (f->rstart == f->rend) {
    f->rstart = f->rend = 0;
    if (f->rcap > 4 * FILE_CHUNK) { /* after a read_all: give the memory back */
      free(f->rbuf);
      f->rbuf = NULL;
      f->rcap = 0;
    }
  }
}

static int push_fail(lua_State *S, const char *code, const char *msg) {
  lua_pushnil(S);
  lua_pushfstring(S, "%s: %s", code, msg);
  lua_pushstring(S, code);
  return 3;
}

static int push_toolong(lua_State *S, fstream *f) {
  lua_pushnil(S);
  lua_pushfstring(S, "EMSGSIZE: %s longer than %I bytes", f->rkind == RK_LINE ? "line" : "record",
                  (lua_Integer)f->rneed);
  lua_pushliteral(S, "EMSGSIZE");
  return 3;
}

/* The same contract as stream.c's try_read: pushes the results of the read
 * described by f->rkind... and returns their number, or 0 when more input
 * is needed. Stack: [-0, +(0|1|3)]. */
static int ftry_read(fstream *f, lua_State *S) {
  const char *p = f->rbuf + f->rstart;
  size_t avail = f->rend - f->rstart;
  ptrdiff_t at;
  switch (f->rkind) {
  case RK_SOME:
    if (avail > 0) {
      size_t n = avail < f->rneed ? avail : f->rneed;
      lua_pushlstring(S, p, n);
      consume(f, n);
      return 1;
    }
    break;
  case RK_EXACTLY:
    if (avail >= f->rneed) {
      lua_pushlstring(S, p, f->rneed);
      consume(f, f->rneed);
      return 1;
    }
    break;
  case RK_ALL:
    if (f->rerr == UV_EOF) {
      lua_pushlstring(S, p, avail);
      consume(f, avail);
      return 1;
    }
    break;
  case RK_LINE:
  case RK_UNTIL: {
    const char *d = f->rkind == RK_LINE ? "\n" : f->rdelim;
    size_t dl = f->rkind == RK_LINE ? 1 : f->rdlen;
    at = find(p, avail, d, dl);
    if (at >= 0) {
      size_t len = (size_t)at;
      if (f->rkind == RK_LINE && len > 0 && p[len - 1] == '\r')
        len--;
      if (len > f->rneed)
        return push_toolong(S, f);
      lua_pushlstring(S, p, f->rkeep ? (size_t)at + dl : len);
      consume(f, (size_t)at + dl);
      return 1;
    }
    if (f->rkind == RK_LINE ? avail > f->rneed + 1 : avail >= f->rneed + dl)
      return push_toolong(S, f);
    if (f->rkind == RK_LINE && f->rerr == UV_EOF && avail > 0) {
      /* The last line lacks its newline: return it (like file:read("l")). */
      if (avail > f->rneed)
        return push_toolong(S, f);
      lua_pushlstring(S, p, avail);
      consume(f, avail);
      return 1;
    }
    break;
  }
  }
  if (f->rerr == UV_EOF)
    return push_fail(S, "EOF", "end of stream");
  if (f->rerr)
    return push_fail(S, uv_err_name(f->rerr), uv_strerror(f->rerr));
  return 0;
}

static int fstart_read(fstream *f);

static void fread_cb(uv_fs_t *fs) {
  freq *r = fs->data;
  fstream *f = r->f;
  ssize_t n = fs->result;
  loom_block *b = r->b;
  uv_fs_req_cleanup(fs);
  f->inflight--;
  f->rreq = NULL;
  if (!f->closed) {
    if (n > 0) {
      if (f->rcap - f->rend < (size_t)n) {
        size_t used = f->rend - f->rstart, cap = f->rcap ? f->rcap : FILE_CHUNK;
        if (used > 0 && f->rstart > 0)
          memmove(f->rbuf, f->rbuf + f->rstart, used);
        f->rstart = 0;
        f->rend = used;
        while (cap - used < (size_t)n)
          cap *= 2;
        if (cap != f->rcap) {
          char *nb = realloc(f->rbuf, cap);
          if (!nb)
            n = UV_ENOMEM;
          else {
            f->rbuf = nb;
            f->rcap = cap;
          }
        }
      }
      if (n > 0) {
        memcpy(f->rbuf + f->rend, r->data, (size_t)n);
        f->rend += (size_t)n;
      }
    }
    if (n == 0)
      f->rerr = UV_EOF;
    else if (n < 0 && n != UV_ECANCELED)
      f->rerr = (int)n;
  }
  free(r);
  if (b && !f->closed) {
    lua_State *S = loom__wake_stack(f->rt, b->t, 3);
    int k = S ? ftry_read(f, S) : 0;
    if (k > 0 || !S) {
      f->rblock = NULL;
      loom__wake(f->rt, b, k, LOOM_WOKE_DONE);
    } else {
      int err = fstart_read(f);
      if (err < 0) {
        f->rblock = NULL;
        loom__wake_fail(f->rt, b, uv_err_name(err), uv_strerror(err), LOOM_WOKE_DONE);
      }
    }
    return;
  }
  fstream_free_maybe(f);
}

/* Starts one read of up to FILE_CHUNK bytes for the waiting reader. */
static int fstart_read(fstream *f) {
  freq *r = malloc(sizeof *r + FILE_CHUNK);
  uv_buf_t buf;
  int err;
  if (!r)
    return UV_ENOMEM;
  r->f = f;
  r->b = f->rblock;
  r->fs.data = r;
  buf = uv_buf_init(r->data, (unsigned)FILE_CHUNK);
  /* Offset -1: read(2) at the current position, shared with fd 0. */
  err = uv_fs_read(f->rt->loop, &r->fs, f->fd, &buf, 1, -1, fread_cb);
  if (err < 0) {
    free(r);
    return err;
  }
  f->rreq = r;
  f->inflight++;
  return 0;
}

static void fread_cancel(loom_runtime *rt, loom_block *b, int why) {
  fstream *f = b->data;
  (void)rt;
  (void)why;
  f->rblock = NULL;
  if (f->rreq) {
    /* The bytes of a read that still completes stay buffered. */
    f->rreq->b = NULL;
    uv_cancel((uv_req_t *)&f->rreq->fs);
  }
}

static int fdo_read(lua_State *L, fstream *f, int kind, size_t need, int keep, const char *delim,
                    size_t dlen) {
  loom_runtime *rt = loom__rt(L);
  loom_block *b;
  int n, err;
  if (!f)
    return fail_fclosed(L);
  if (f->err)
    return loom__fail_uv(L, f->err, NULL);
  if (f->rblock)
    return luaL_error(L, "%s: another tasklet is already reading", FILE_MT);
  f->rkind = kind;
  f->rneed = need;
  f->rkeep = keep;
  f->rdelim = delim; /* stays on the reader's stack while it waits */
  f->rdlen = dlen;
  n = ftry_read(f, L);
  if (n > 0)
    return n;
  loom__check_block(L, rt);
  b = loom__block_new(rt, L, "stdio read");
  b->data = f;
  b->cancel = fread_cancel;
  f->rblock = b;
  if (!f->rreq) {
    err = fstart_read(f);
    if (err < 0) {
      f->rblock = NULL;
      loom__block_abort(rt, b);
      return loom__fail_uv(L, err, NULL);
    }
  } else
    f->rreq->b = b; /* a read abandoned by an earlier reader is still out */
  loom__block_timeout(rt, b, f->timeout);
  return loom__suspend(L, rt, b);
}

static size_t check_size(lua_State *L, int idx, const char *what) {
  lua_Integer n = luaL_checkinteger(L, idx);
  if (n < 0)
    luaL_argerror(L, idx, lua_pushfstring(L, "%s must be a non-negative integer", what));
  return (size_t)n;
}

static int f_read(lua_State *L) {
  fstream *f = check_fstream(L, 1);
  size_t n = lua_isnoneornil(L, 2) ? (size_t)-1 >> 1 : check_size(L, 2, "size");
  if (n == 0 && f) {
    lua_pushliteral(L, "");
    return 1;
  }
  return fdo_read(L, f, RK_SOME, n, 0, NULL, 0);
}

static int f_read_exactly(lua_State *L) {
  fstream *f = check_fstream(L, 1);
  return fdo_read(L, f, RK_EXACTLY, check_size(L, 2, "size"), 0, NULL, 0);
}

static int f_read_line(lua_State *L) {
  fstream *f = check_fstream(L, 1);
  size_t max = LOOM_STREAM_MAX_LINE;
  int keep = 0;
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    if (lua_getfield(L, 2, "max") != LUA_TNIL) {
      if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 0)
        luaL_argerror(L, 2, "opts.max must be a non-negative integer");
      max = (size_t)lua_tointeger(L, -1);
    }
    keep = lua_getfield(L, 2, "keep_newline") != LUA_TNIL && lua_toboolean(L, -1);
    lua_settop(L, 2);
  }
  return fdo_read(L, f, RK_LINE, max, keep, NULL, 0);
}

static int f_read_until(lua_State *L) {
  fstream *f = check_fstream(L, 1);
  size_t dl;
  const char *d = luaL_checklstring(L, 2, &dl);
  size_t max = lua_isnoneornil(L, 3) ? LOOM_STREAM_MAX_LINE : check_size(L, 3, "max");
  luaL_argcheck(L, dl > 0, 2, "delimiter must not be empty");
  return fdo_read(L, f, RK_UNTIL, max, 0, d, dl);
}

static int f_read_all(lua_State *L) {
  return fdo_read(L, check_fstream(L, 1), RK_ALL, 0, 0, NULL, 0);
}

/* ---- writes */

static int fstart_write(fstream *f);

static void fwrite_cb(uv_fs_t *fs) {
  freq *w = fs->data;
  fstream *f = w->f;
  ssize_t n = fs->result;
  uv_fs_req_cleanup(fs);
  f->inflight--;
  if (n > 0)
    w->done += (size_t)n;
  if (!f->closed && n >= 0 && w->done < w->len && fstart_write(f) == 0)
    return; /* a short write: the rest follows */
  if (n < 0 && !f->closed && !f->werr)
    f->werr = (int)n;
  f->wq_head = w->next;
  if (!f->wq_head)
    f->wq_tail = NULL;
  if (w->b) {
    if (n < 0)
      loom__wake_fail(f->rt, w->b, uv_err_name((int)n), uv_strerror((int)n), LOOM_WOKE_DONE);
    else {
      lua_State *S = loom__wake_stack(f->rt, w->b->t, 1);
      if (S)
        lua_pushboolean(S, 1);
      loom__wake(f->rt, w->b, S ? 1 : 0, LOOM_WOKE_DONE);
    }
  }
  free(w);
  /* The next queued write, in order; after an error they all fail. */
  while (f->wq_head && !f->closed) {
    int err = f->werr ? f->werr : fstart_write(f);
    if (err == 0)
      return;
    w = f->wq_head;
    f->wq_head = w->next;
    if (!f->wq_head)
      f->wq_tail = NULL;
    if (w->b)
      loom__wake_fail(f->rt, w->b, uv_err_name(err), uv_strerror(err), LOOM_WOKE_DONE);
    free(w);
  }
  fstream_free_maybe(f);
}

/* Writes (the rest of) the head of the queue. */
static int fstart_write(fstream *f) {
  freq *w = f->wq_head;
  uv_buf_t buf = uv_buf_init(w->data + w->done, (unsigned)(w->len - w->done));
  int err = uv_fs_write(f->rt->loop, &w->fs, f->fd, &buf, 1, -1, fwrite_cb);
  if (err == 0)
    f->inflight++;
  return err;
}

/* A writer that leaves (kill, timeout) before its turn takes its bytes
 * back; one whose bytes are being written lets them finish. */
static void fwrite_cancel(loom_runtime *rt, loom_block *b, int why) {
  freq *w = b->data, **pp;
  fstream *f = w->f;
  (void)rt;
  (void)why;
  w->b = NULL;
  if (w == f->wq_head)
    return;
  for (pp = &f->wq_head->next; *pp; pp = &(*pp)->next) {
    if (*pp == w) {
      *pp = w->next;
      if (f->wq_tail == w) {
        freq *t = f->wq_head;
        while (t->next)
          t = t->next;
        f->wq_tail = t;
      }
      free(w);
      return;
    }
  }
}

/* f:write(data...) -> true or fail: waits until the bytes are written.
 * Writers queue in order. */
static int f_write(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  fstream *f = check_fstream(L, 1);
  int top = lua_gettop(L), base = 2, i;
  size_t total = 0, off = 0, len;
  freq *w;
  loom_block *b;
  if (top == 2 && lua_type(L, 2) == LUA_TTABLE) {
    lua_Integer k, n = luaL_len(L, 2);
    if (n > 1000000)
      luaL_argerror(L, 2, "too many items");
    luaL_checkstack(L, (int)n + LUA_MINSTACK, "too many items");
    for (k = 1; k <= n; k++) {
      lua_rawgeti(L, 2, k);
      if (!lua_isstring(L, -1))
        luaL_argerror(L, 2,
                      lua_pushfstring(L, "array of strings expected, item %I is a %s", k,
                                      luaL_typename(L, -1)));
    }
    base = 3;
    top = lua_gettop(L);
  }
  for (i = base; i <= top; i++) {
    if (base == 2)
      luaL_checklstring(L, i, &len);
    else
      lua_tolstring(L, i, &len);
    total += len;
  }
  if (!f)
    return fail_fclosed(L);
  if (f->err)
    return loom__fail_uv(L, f->err, NULL);
  if (f->werr)
    return loom__fail_uv(L, f->werr, NULL);
  if (total == 0) {
    lua_pushboolean(L, 1);
    return 1;
  }
  loom__check_block(L, rt);
  w = malloc(sizeof *w + total);
  if (!w)
    return luaL_error(L, "not enough memory");
  for (i = base; i <= top; i++) {
    const char *p = lua_tolstring(L, i, &len);
    memcpy(w->data + off, p, len);
    off += len;
  }
  w->f = f;
  w->len = total;
  w->done = 0;
  w->next = NULL;
  w->fs.data = w;
  b = loom__block_new(rt, L, "stdio write");
  b->data = w;
  b->cancel = fwrite_cancel;
  w->b = b;
  if (f->wq_tail)
    f->wq_tail->next = w;
  else {
    int err;
    f->wq_head = w;
    err = fstart_write(f);
    if (err < 0) {
      f->wq_head = NULL;
      free(w);
      loom__block_abort(rt, b);
      return loom__fail_uv(L, err, NULL);
    }
  }
  f->wq_tail = w;
  loom__block_timeout(rt, b, f->timeout);
  return loom__suspend(L, rt, b);
}

/* ---- closing */

/* Wakes the waiting reader and the queued writers with ECLOSED and lets the
 * requests in flight finish (their callbacks free the memory). Never
 * closes descriptors 0-2: f->fd is a private copy. */
static void fstream_close(loom_runtime *rt, fstream *f) {
  freq *w;
  if (f->closed)
    return;
  f->closed = 1;
  loom__unlink(&f->link);
  if (f->box) {
    *f->box = NULL;
    f->box = NULL;
  }
  if (f->rblock)
    loom__wake_fail(rt, f->rblock, "ECLOSED", "closed while reading", LOOM_WOKE_CLOSE);
  if ((w = f->wq_head) != NULL) {
    /* The head is being written: its writer leaves, the bytes finish. The
     * ones queued behind it never start (their cancel hook frees them). */
    if (w->b)
      loom__wake_fail(rt, w->b, "ECLOSED", "closed while writing", LOOM_WOKE_CLOSE);
    while (w->next) {
      freq *next = w->next;
      if (next->b)
        loom__wake_fail(rt, next->b, "ECLOSED", "closed while writing", LOOM_WOKE_CLOSE);
      else {
        w->next = next->next;
        free(next);
      }
    }
    f->wq_tail = w;
  }
  if (f->rreq)
    uv_cancel((uv_req_t *)&f->rreq->fs);
  fstream_free_maybe(f);
}

static void fstream_link_close(loom_runtime *rt, loom_link *l) {
  fstream_close(rt, (fstream *)((char *)l - offsetof(fstream, link)));
}

static int f_close(lua_State *L) {
  fstream *f = check_fstream(L, 1);
  if (f)
    fstream_close(loom__rt(L), f);
  lua_pushboolean(L, 1);
  return 1;
}

static int f_closed(lua_State *L) {
  lua_pushboolean(L, check_fstream(L, 1) == NULL);
  return 1;
}

static int f_settimeout(lua_State *L) {
  fstream *f = check_fstream(L, 1);
  double t = loom__opt_timeout(L, 2);
  if (f)
    f->timeout = t;
  return 0;
}

static int f_gc(lua_State *L) {
  void **box = luaL_checkudata(L, 1, FILE_MT);
  if (*box)
    fstream_close(loom__rt(L), *box);
  return 0;
}

static int f_tostring(lua_State *L) {
  void **box = luaL_checkudata(L, 1, FILE_MT);
  lua_pushfstring(L, "%s%s: %p", FILE_MT, *box ? "" : " (closed)", *box ? *box : (void *)box);
  return 1;
}

/* Pushes a file stream over descriptor fd (owned), or, when err < 0, one
 * whose every call fails with err. */
static void push_fstream(lua_State *L, loom_runtime *rt, int fd, int err) {
  void **box = lua_newuserdatauv(L, sizeof *box, 0);
  fstream *f;
  *box = NULL;
  luaL_setmetatable(L, FILE_MT);
  f = calloc(1, sizeof *f);
  if (!f) {
    if (fd >= 0)
      close(fd);
    luaL_error(L, "not enough memory");
    return;
  }
  f->rt = rt;
  f->fd = fd;
  f->err = err;
  f->timeout = -1;
  f->box = box;
  f->link.close = fstream_link_close;
  loom__link(rt, &f->link);
  *box = f;
}

/* ------------------------------------------------------------ creation */

/* Pushes the stream object for standard descriptor fd (0, 1 or 2):
 *   terminal       -> uv_tty_t (libuv reopens it: private O_NONBLOCK)
 *   pipe (FIFO)    -> uv_pipe_t on a reopened, private description
 *   socket, fd 0   -> uv_pipe_t on a dup (shared O_NONBLOCK, undone at shutdown)
 *   socket, fd 1-2 -> file stream on a dup: blocking writes on the thread
 *                     pool, so print() never meets EAGAIN on fd 1 or 2
 *   anything else  -> file stream (regular files, /dev/null...) */
static void push_stdio(lua_State *L, loom_runtime *rt, int fd) {
  uv_handle_type kind = uv_guess_handle(fd);
  loom_stream *s;
  int nfd, err, shared = 0;
  if (kind == UV_UNKNOWN_HANDLE) {
    /* Closed (EBADF) or something libuv does not know: fail on use. */
    push_fstream(L, rt, -1, fcntl(fd, F_GETFD) < 0 ? UV_EBADF : UV_EINVAL);
    return;
  }
  nfd = UV_EINVAL;
  if (kind == UV_TTY)
    nfd = dup_fd(fd);
  else if (kind == UV_NAMED_PIPE || kind == UV_TCP) {
    nfd = reopen_pipe(fd);
    if (nfd < 0 && fd == 0) {
      nfd = dup_fd(fd);
      shared = 1;
    } else if (nfd < 0)
      kind = UV_FILE; /* a socket written through the thread pool */
  }
  if (fd > 0 && kind != UV_FILE)
    loom__ignore_sigpipe(); /* a reader that goes away gives EPIPE instead */
  if (kind != UV_TTY && kind != UV_NAMED_PIPE && kind != UV_TCP) {
    nfd = dup_fd(fd);
    push_fstream(L, rt, nfd, nfd < 0 ? nfd : 0);
    return;
  }
  if (nfd < 0) {
    push_fstream(L, rt, -1, nfd);
    return;
  }
  s = loom__stream_push(L, rt, kind == UV_TTY ? TTY_MT : PIPE_MT);
  if (!s) {
    close(nfd);
    luaL_error(L, "not enough memory");
    return;
  }
  if (kind == UV_TTY) {
    /* libuv reopens the terminal behind nfd (when it can) so that its
     * non-blocking mode stays private. The mode (cooked) is never changed:
     * loom never leaves a terminal in raw mode. */
    err = uv_tty_init(rt->loop, &s->h.tty, nfd, fd == 0);
  } else {
    if (shared)
      restore_fd0_at_shutdown(rt); /* before uv_pipe_open changes it */
    err = uv_pipe_init(rt->loop, &s->h.pipe, 0);
    if (err == 0) {
      err = uv_pipe_open(&s->h.pipe, nfd);
      if (err < 0) {
        /* The handle is initialised: it must be closed, not dropped. */
        loom__stream_opened(s, 0);
        loom__stream_close(rt, s);
        lua_pop(L, 1);
        close(nfd);
        push_fstream(L, rt, -1, err);
        return;
      }
    }
  }
  if (loom__stream_opened(s, err) < 0) {
    lua_pop(L, 1);
    close(nfd);
    push_fstream(L, rt, -1, err);
  }
}

/* __index of the core module: creates loom.stdin/stdout/stderr on first
 * access and stores them in the module table (later reads are plain). */
static int core_index(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  const char *k;
  int fd;
  if (lua_type(L, 2) != LUA_TSTRING)
    return 0;
  k = lua_tostring(L, 2);
  for (fd = 0; stdio_names[fd] && strcmp(k, stdio_names[fd]) != 0; fd++)
    ;
  if (!stdio_names[fd] || rt->closing)
    return 0;
  push_stdio(L, rt, fd);
  lua_pushvalue(L, 2);
  lua_pushvalue(L, -2);
  lua_rawset(L, 1);
  return 1;
}

void loom__open_stdio(lua_State *L, loom_runtime *rt) {
  static const luaL_Reg fmethods[] = {{"read", f_read},
                                      {"read_exactly", f_read_exactly},
                                      {"read_line", f_read_line},
                                      {"read_until", f_read_until},
                                      {"read_all", f_read_all},
                                      {"write", f_write},
                                      {"close", f_close},
                                      {"closed", f_closed},
                                      {"settimeout", f_settimeout},
                                      {NULL, NULL}};
  static const luaL_Reg fmeta[] = {
      {"__gc", f_gc}, {"__close", f_gc}, {"__tostring", f_tostring}, {NULL, NULL}};
  loom__stream_metatable(L, rt, TTY_MT, NULL);
  loom__stream_metatable(L, rt, PIPE_MT, NULL);
  luaL_newmetatable(L, FILE_MT);
  loom__setfuncs(L, rt, fmeta);
  lua_newtable(L);
  loom__setfuncs(L, rt, fmethods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  /* The module table gets a metatable whose __index makes the three
   * streams on demand (the facade forwards these names to it). */
  lua_createtable(L, 0, 1);
  lua_pushlightuserdata(L, rt);
  lua_pushcclosure(L, core_index, 1);
  lua_setfield(L, -2, "__index");
  lua_setmetatable(L, -2);
}
