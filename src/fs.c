/*
 * fs.c - loom.fs: files and directories on libuv's thread pool. Every call
 * suspends only its tasklet while a uv_fs_* request runs in the pool; a
 * file object runs its own operations one at a time, in call order, so that
 * reads, writes and seeks share one well-defined position.
 *
 * Lifetimes (docs/design.md, Y3 and H1-H5): an operation is a malloc'd
 * `fsop` holding the uv_fs_t. Its block's cancel hook either frees it (still
 * queued behind another operation of its file) or detaches it (op->b = NULL)
 * and asks uv_cancel to drop it from the pool's queue; a request already
 * running finishes and its callback only tidies up (closes a descriptor it
 * opened, keeps bytes it read for the next read) and frees memory.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "loom_int.h"

#define FILE_MT "loom.file"
/* lines() and read_file() read this much at a time when the size is unknown. */
#define FS_CHUNK ((size_t)64 << 10)
/* One read(n) returns at most this many bytes (a guard for read(2^50)). */
#define FS_MAX_READ ((int64_t)64 << 20)
/* One request moves at most this much (uv_buf_t lengths are unsigned int);
 * the callers loop over short reads and writes anyway. */
#define FS_MAX_IO ((size_t)1 << 30)
#define io_len(n) ((unsigned)((n) < FS_MAX_IO ? (n) : FS_MAX_IO))

enum {
  /* path calls */
  OP_STAT,
  OP_LSTAT,
  OP_EXISTS,
  OP_READDIR,
  OP_MKDIR,
  OP_RMDIR,
  OP_UNLINK,
  OP_RENAME,
  OP_COPYFILE,
  OP_REALPATH,
  OP_MKDTEMP,
  OP_OPEN,
  OP_READ_FILE,
  OP_WRITE_FILE,
  /* file methods */
  OP_READ,
  OP_LINE,
  OP_WRITE,
  OP_SEEK,
  OP_SYNC,
  OP_FSTAT
};

/* Steps of the read_file / write_file chains. */
enum { STEP_OPEN, STEP_FSTAT, STEP_IO };

/* Where an operation of a file stands. */
enum { ST_NEW, ST_QUEUED, ST_RUNNING };

/* A file_run result that is neither values nor "started": raise the
 * message left on the stack (lines() raises its errors, like io.lines). */
#define RUN_STARTED (-1)
#define RUN_RAISE (-2)

typedef struct fsfile fsfile;

typedef struct fsop {
  uv_fs_t req;
  loom_runtime *rt;
  loom_block *b; /* the waiting call; NULL once it left (kill, timeout, close) */
  fsfile *f;     /* file methods: the file; OP_OPEN: the file being opened */
  int kind, state, step;
  uv_file fd; /* read_file / write_file: the descriptor they opened, or -1 */
  int flags, mode;
  int64_t n;  /* read: at most n bytes; seek: the offset */
  int whence; /* seek: 0 set, 1 cur, 2 end */
  char *buf;  /* data read or to write */
  size_t len, cap, done;
  char *path, *path2; /* for error messages: "ENOENT: no such file ...: /x" */
} fsop;

struct fsfile {
  loom_link link; /* in rt->objects while open */
  loom_runtime *rt;
  fsfile **box; /* the Lua box's slot; NULL once closed or collected */
  uv_file fd;
  int append; /* opened with "a": every write goes to the end */
  int stream; /* not seekable (a FIFO, a terminal): plain read/write */
  int closing;
  int64_t pos; /* where the next pool read or write starts */
  char *rbuf;  /* bytes read ahead (lines(), killed reads): rbuf[roff..roff+rlen) */
  size_t roff, rlen, rcap;
  fsop *running;    /* the operation in the pool, if any */
  loom_waitq queue; /* blocks of operations waiting for their turn */
  char *path;
};

/* ------------------------------------------------------------ helpers */

static fsop *op_new(lua_State *L, loom_runtime *rt, int kind) {
  fsop *op = calloc(1, sizeof *op);
  if (!op) {
    luaL_error(L, "not enough memory");
    return NULL;
  }
  op->rt = rt;
  op->kind = kind;
  op->fd = -1;
  op->req.data = op;
  return op;
}

static void op_free(fsop *op) {
  if (op->kind == OP_OPEN && op->f) {
    /* open() did not hand its file over to Lua. */
    free(op->f->path);
    free(op->f);
  }
  free(op->buf);
  free(op->path);
  free(op->path2);
  free(op);
}

/* A path argument: a string without NUL bytes (the C library would cut it
 * short and act on another file). */
static const char *check_path(lua_State *L, int idx) {
  size_t len;
  const char *p = luaL_checklstring(L, idx, &len);
  luaL_argcheck(L, strlen(p) == len, idx, "path contains a NUL byte");
  return p;
}

static char *dup_or_raise(lua_State *L, fsop *op, const char *s) {
  char *d = strdup(s);
  if (!d) {
    op_free(op);
    luaL_error(L, "not enough memory");
  }
  return d;
}

/* Closes a descriptor now, on the loop thread. Closing a local file does
 * not wait for the disk, and doing it here makes <close> and __gc release
 * descriptors deterministically. Returns 0 or a negative UV_E*. */
static int close_now(loom_runtime *rt, uv_file fd) {
  uv_fs_t req;
  int err = uv_fs_close(rt->loop, &req, fd, NULL);
  uv_fs_req_cleanup(&req);
  return err;
}

/* Pushes nil, "CODE: message: path", "CODE" on S. Stack: +3. */
static int push_fail(lua_State *S, int err, const char *path, const char *path2) {
  lua_pushnil(S);
  if (path && path2)
    lua_pushfstring(S, "%s: %s: %s -> %s", uv_err_name(err), uv_strerror(err), path, path2);
  else if (path)
    lua_pushfstring(S, "%s: %s: %s", uv_err_name(err), uv_strerror(err), path);
  else
    lua_pushfstring(S, "%s: %s", uv_err_name(err), uv_strerror(err));
  lua_pushstring(S, uv_err_name(err));
  return 3;
}

static const char *type_name(uint64_t mode) {
  switch (mode & S_IFMT) {
    case S_IFREG:
      return "file";
    case S_IFDIR:
      return "directory";
    case S_IFLNK:
      return "link";
    case S_IFIFO:
      return "fifo";
    case S_IFSOCK:
      return "socket";
    case S_IFCHR:
      return "char";
    case S_IFBLK:
      return "block";
    default:
      return "unknown";
  }
}

static const char *dirent_type_name(uv_dirent_type_t t) {
  switch (t) {
    case UV_DIRENT_FILE:
      return "file";
    case UV_DIRENT_DIR:
      return "directory";
    case UV_DIRENT_LINK:
      return "link";
    case UV_DIRENT_FIFO:
      return "fifo";
    case UV_DIRENT_SOCKET:
      return "socket";
    case UV_DIRENT_CHAR:
      return "char";
    case UV_DIRENT_BLOCK:
      return "block";
    default:
      return "unknown";
  }
}

static void set_time(lua_State *S, const char *k, uv_timespec_t ts) {
  lua_pushnumber(S, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / LOOM_NS_PER_S);
  lua_setfield(S, -2, k);
}

static void set_int(lua_State *S, const char *k, uint64_t v) {
  lua_pushinteger(S, (lua_Integer)v);
  lua_setfield(S, -2, k);
}

/* Pushes the stat table. Stack: +1. */
static int push_stat(lua_State *S, const uv_stat_t *st) {
  lua_createtable(S, 0, 17);
  lua_pushstring(S, type_name(st->st_mode));
  lua_setfield(S, -2, "type");
  set_int(S, "size", st->st_size);
  set_int(S, "mode", st->st_mode);
  set_int(S, "perm", st->st_mode & 07777);
  set_int(S, "uid", st->st_uid);
  set_int(S, "gid", st->st_gid);
  set_int(S, "dev", st->st_dev);
  set_int(S, "rdev", st->st_rdev);
  set_int(S, "ino", st->st_ino);
  set_int(S, "nlink", st->st_nlink);
  set_int(S, "blksize", st->st_blksize);
  set_int(S, "blocks", st->st_blocks);
  set_time(S, "atime", st->st_atim);
  set_time(S, "mtime", st->st_mtim);
  set_time(S, "ctime", st->st_ctim);
  set_time(S, "birthtime", st->st_birthtim);
  return 1;
}

/* Wakes the caller of op with the values push() leaves on its wake stack;
 * a caller that left (op->b == NULL) gets nothing. */
typedef int (*push_fn)(lua_State *S, fsop *op, ssize_t res, loom_block *b);

static void op_wake(fsop *op, push_fn push, ssize_t res) {
  loom_block *b = op->b;
  lua_State *S;
  int n = 0;
  if (!b)
    return;
  op->b = NULL;
  S = loom__wake_stack(op->rt, b->t, 8);
  if (S)
    n = push(S, op, res, b);
  loom__wake(op->rt, b, n, LOOM_WOKE_DONE);
}

/* ------------------------------------------------------------ files: buffer */

/* Makes room for `more` bytes after the buffered ones. 0 or UV_ENOMEM. */
static int rbuf_reserve(fsfile *f, size_t more) {
  if (f->roff > 0 && f->rlen > 0)
    memmove(f->rbuf, f->rbuf + f->roff, f->rlen);
  f->roff = 0;
  if (f->rcap - f->rlen < more) {
    size_t cap = f->rcap ? f->rcap : FS_CHUNK;
    char *p;
    while (cap - f->rlen < more)
      cap *= 2;
    p = realloc(f->rbuf, cap);
    if (!p)
      return UV_ENOMEM;
    f->rbuf = p;
    f->rcap = cap;
  }
  return 0;
}

/* Bytes a read fetched for a caller that left stay for the next read: a
 * killed read consumes nothing. */
static void rbuf_keep(fsfile *f, const char *p, size_t n) {
  if (rbuf_reserve(f, n) == 0) {
    memcpy(f->rbuf + f->rlen, p, n);
    f->rlen += n;
  } else
    f->pos -= (int64_t)n; /* cannot keep them: read them again */
}

/* Forgets the read-ahead: the position goes back to the logical one. */
static void rbuf_drop(fsfile *f) {
  f->pos -= (int64_t)f->rlen;
  f->rlen = f->roff = 0;
}

static int push_buffered(lua_State *S, fsfile *f, int64_t n) {
  size_t k = (size_t)n < f->rlen ? (size_t)n : f->rlen;
  lua_pushlstring(S, f->rbuf + f->roff, k);
  f->roff += k;
  f->rlen -= k;
  if (f->rlen == 0)
    f->roff = 0;
  return 1;
}

/* Pushes the next complete line (without "\n" or "\r\n") and returns 1, or
 * returns 0 when the buffer holds no complete line. At EOF (`eof`) the rest
 * is the last line; nothing left pushes nil (the end of the iteration). */
static int take_line(lua_State *S, fsfile *f, int eof) {
  const char *p = f->rbuf + f->roff;
  const char *nl = f->rlen ? memchr(p, '\n', f->rlen) : NULL;
  size_t k, used;
  if (!nl) {
    if (!eof)
      return 0;
    if (f->rlen == 0) {
      lua_pushnil(S);
      return 1;
    }
    k = used = f->rlen;
  } else {
    k = (size_t)(nl - p);
    used = k + 1;
  }
  if (k > 0 && p[k - 1] == '\r' && nl)
    k--;
  lua_pushlstring(S, p, k);
  f->roff += used;
  f->rlen -= used;
  if (f->rlen == 0)
    f->roff = 0;
  return 1;
}

/* ------------------------------------------------------------ files: life */

static int push_file_result(lua_State *S, fsop *op, ssize_t res, loom_block *b);
static void file_cb(uv_fs_t *req);

/* Frees a closed file once nothing runs on it. Returns close(2)'s result. */
static int file_release(fsfile *f) {
  int err = 0;
  if (f->fd >= 0)
    err = close_now(f->rt, f->fd);
  f->fd = -1;
  if (f->box)
    *f->box = NULL;
  free(f->rbuf);
  free(f->path);
  free(f);
  return err;
}

/* Closes f: every waiting call gets ECLOSED; the descriptor closes now, or
 * when the operation still in the pool comes back. Returns close(2)'s
 * result when it closed now, else 0. Never enters Lua. */
static int file_close(fsfile *f) {
  loom_runtime *rt = f->rt;
  loom_wait *w;
  if (f->closing)
    return 0;
  f->closing = 1;
  loom__unlink(&f->link);
  if (f->box) {
    *f->box = NULL;
    f->box = NULL;
  }
  while ((w = loom__waitq_pop(&f->queue)) != NULL)
    loom__wake_fail(rt, w->block, "ECLOSED", "file closed", LOOM_WOKE_CLOSE);
  if (f->running && f->running->b)
    loom__wake_fail(rt, f->running->b, "ECLOSED", "file closed", LOOM_WOKE_CLOSE);
  if (f->running)
    return 0;
  return file_release(f);
}

static void file_link_close(loom_runtime *rt, loom_link *l) {
  (void)rt;
  file_close((fsfile *)l);
}

/* Issues the pool request of a read, a lines() read or (the rest of) a
 * write at the file's position. 0 or a negative UV_E*. */
static int issue_io(fsop *op) {
  fsfile *f = op->f;
  uv_loop_t *loop = op->rt->loop;
  uv_buf_t buf;
  int64_t at = f->stream ? -1 : f->pos;
  switch (op->kind) {
    case OP_READ:
      buf = uv_buf_init(op->buf, io_len(op->cap));
      return uv_fs_read(loop, &op->req, f->fd, &buf, 1, at, file_cb);
    case OP_LINE: {
      int err = rbuf_reserve(f, FS_CHUNK);
      if (err < 0)
        return err;
      buf = uv_buf_init(f->rbuf + f->rlen, io_len(f->rcap - f->rlen));
      return uv_fs_read(loop, &op->req, f->fd, &buf, 1, at, file_cb);
    }
    default: /* OP_WRITE */
      buf = uv_buf_init(op->buf + op->done, io_len(op->len - op->done));
      return uv_fs_write(loop, &op->req, f->fd, &buf, 1, f->append ? -1 : at, file_cb);
  }
}

/* Starts the operation op of a file that has nothing running. Returns the
 * number of values pushed on S when it completed at once (buffered data,
 * seek, or a failure to start), RUN_RAISE with a message on S, or
 * RUN_STARTED when a request went to the pool. */
static int file_run(fsop *op, lua_State *S) {
  fsfile *f = op->f;
  uv_loop_t *loop = op->rt->loop;
  int err = 0;
  switch (op->kind) {
    case OP_READ:
      if (op->n == 0) {
        lua_pushliteral(S, "");
        return 1;
      }
      if (f->rlen > 0)
        return push_buffered(S, f, op->n);
      op->cap = (size_t)op->n;
      op->buf = malloc(op->cap);
      if (!op->buf)
        return push_fail(S, UV_ENOMEM, f->path, NULL);
      err = issue_io(op);
      break;
    case OP_LINE:
      if (take_line(S, f, 0))
        return 1;
      err = issue_io(op);
      if (err < 0) {
        lua_pushfstring(S, "%s: %s: %s", uv_err_name(err), uv_strerror(err), f->path);
        return RUN_RAISE;
      }
      break;
    case OP_WRITE:
      if (!f->stream)
        rbuf_drop(f); /* write where the reader is, not after its read-ahead */
      if (op->done == op->len) {
        lua_pushboolean(S, 1);
        return 1;
      }
      err = issue_io(op);
      break;
    case OP_SEEK:
      if (f->stream)
        return push_fail(S, UV_ESPIPE, f->path, NULL);
      if (op->whence != 2) {
        int64_t logical = f->pos - (int64_t)f->rlen;
        int64_t to = op->whence == 0 ? op->n : logical + op->n;
        if (to < 0)
          return push_fail(S, UV_EINVAL, f->path, NULL);
        if (to != logical) {
          f->rlen = f->roff = 0;
          f->pos = to;
        }
        lua_pushinteger(S, (lua_Integer)to);
        return 1;
      }
      err = uv_fs_fstat(loop, &op->req, f->fd, file_cb);
      break;
    case OP_SYNC:
      err = uv_fs_fsync(loop, &op->req, f->fd, file_cb);
      break;
    case OP_FSTAT:
      err = uv_fs_fstat(loop, &op->req, f->fd, file_cb);
      break;
    default:
      break;
  }
  if (err < 0)
    return push_fail(S, err, f->path, NULL);
  op->state = ST_RUNNING;
  f->running = op;
  return RUN_STARTED;
}

/* Gives the turn to the next queued operation (design rule Y2: the waker
 * does the work, the waiting call just returns what it gets). Finishes a
 * deferred close once nothing runs. */
static void file_next(fsfile *f) {
  loom_runtime *rt = f->rt;
  loom_wait *w;
  while (!f->running && (w = loom__waitq_pop(&f->queue)) != NULL) {
    loom_block *b = w->block;
    fsop *op = b->data;
    lua_State *S = loom__wake_stack(rt, b->t, 8);
    int n;
    if (!S) {
      op->b = NULL;
      loom__wake(rt, b, 0, LOOM_WOKE_DONE);
      op_free(op);
      continue;
    }
    n = file_run(op, S);
    if (n == RUN_STARTED)
      continue;
    op->b = NULL;
    if (n == RUN_RAISE) {
      b->t->flags |= LOOM_T_RAISE;
      n = 1;
    }
    loom__wake(rt, b, n, LOOM_WOKE_DONE);
    op_free(op);
  }
  if (f->closing && !f->running)
    file_release(f);
}

/* The cancel hook of a file operation (kill, timeout, close). */
static void fop_cancel(loom_runtime *rt, loom_block *b, int why) {
  fsop *op = b->data;
  (void)rt;
  (void)why;
  if (op->state != ST_RUNNING) {
    /* Still waiting for its turn: the wake already unlinked it. */
    op_free(op);
    return;
  }
  op->b = NULL;
  uv_cancel((uv_req_t *)&op->req);
}

static void file_cb(uv_fs_t *req) {
  fsop *op = req->data;
  fsfile *f = op->f;
  ssize_t res = req->result;
  uv_stat_t st = req->statbuf;
  int more = 0; /* issue another request for the same caller */
  uv_fs_req_cleanup(req);
  f->running = NULL;
  if (res == UV_ESPIPE && !f->stream && op->b && !f->closing &&
      (op->kind == OP_READ || op->kind == OP_LINE || op->kind == OP_WRITE)) {
    /* Not seekable: from now on read and write where the file is. */
    f->stream = 1;
    more = 1;
  }
  switch (more ? -1 : op->kind) {
    case OP_READ:
      if (res > 0) {
        f->pos += res;
        if (!op->b)
          rbuf_keep(f, op->buf, (size_t)res);
      }
      break;
    case OP_LINE:
      if (res > 0) {
        f->pos += res;
        f->rlen += (size_t)res;
        /* No full line yet: read on without waking the caller. */
        more = op->b && !f->closing && !memchr(f->rbuf + f->roff, '\n', f->rlen);
      }
      break;
    case OP_WRITE:
      if (res > 0) {
        if (!f->append)
          f->pos += res;
        op->done += (size_t)res;
        /* A short write: write the rest before answering. */
        more = op->b && !f->closing && op->done < op->len;
      }
      break;
    case OP_SEEK:
      if (res == 0) {
        int64_t to = (int64_t)st.st_size + op->n;
        if (to < 0)
          res = UV_EINVAL;
        else {
          f->rlen = f->roff = 0;
          f->pos = to;
          op->n = to;
        }
      }
      break;
    default:
      break;
  }
  if (more) {
    int err = issue_io(op);
    if (err == 0) {
      f->running = op;
      return;
    }
    res = err;
  }
  op_wake(op, push_file_result, res);
  op_free(op);
  file_next(f);
}

static int push_file_result(lua_State *S, fsop *op, ssize_t res, loom_block *b) {
  fsfile *f = op->f;
  if (op->kind == OP_LINE) {
    if (res < 0) {
      lua_pushfstring(S, "%s: %s: %s", uv_err_name((int)res), uv_strerror((int)res), f->path);
      b->t->flags |= LOOM_T_RAISE;
      return 1;
    }
    return take_line(S, f, res == 0);
  }
  if (res < 0)
    return push_fail(S, (int)res, f->path, NULL);
  switch (op->kind) {
    case OP_READ:
      if (res == 0) {
        lua_pushnil(S);
        lua_pushfstring(S, "EOF: end of file: %s", f->path);
        lua_pushliteral(S, "EOF");
        return 3;
      }
      lua_pushlstring(S, op->buf, (size_t)res);
      return 1;
    case OP_SEEK:
      lua_pushinteger(S, (lua_Integer)op->n);
      return 1;
    case OP_FSTAT:
      return push_stat(S, &op->req.statbuf);
    default:
      lua_pushboolean(S, 1);
      return 1;
  }
}

/* ------------------------------------------------------------ files: methods */

/* The open file at idx, or NULL when it is closed. */
static fsfile *to_file(lua_State *L, int idx) {
  fsfile **box = luaL_checkudata(L, idx, FILE_MT);
  return *box;
}

static int closed_fail(lua_State *L) { return loom__fail(L, "ECLOSED", "file closed"); }

/* Can op complete without the pool (and so without blocking)? */
static int op_is_quick(fsfile *f, fsop *op) {
  switch (op->kind) {
    case OP_READ:
      return op->n == 0 || f->rlen > 0;
    case OP_LINE:
      return f->rlen > 0 && memchr(f->rbuf + f->roff, '\n', f->rlen) != NULL;
    case OP_WRITE:
      return op->len == 0;
    case OP_SEEK:
      return op->whence != 2;
    default:
      return 0;
  }
}

/* Runs op for the calling tasklet: at once when the file is idle and op
 * needs no pool, else after the operations queued before it. The last
 * statement of a method. */
static int file_submit(lua_State *L, loom_runtime *rt, fsop *op, const char *what) {
  fsfile *f = op->f;
  int busy = f->running != NULL || f->queue.head != NULL, n;
  const char *why;
  loom_block *b;
  if (!busy && op_is_quick(f, op)) {
    n = file_run(op, L);
    op_free(op);
    return n == RUN_RAISE ? lua_error(L) : n;
  }
  if ((why = loom__why_not_block(L, rt)) != NULL) {
    op_free(op);
    return luaL_error(L, "%s", why);
  }
  b = loom__block_new(rt, L, what);
  b->data = op;
  b->cancel = fop_cancel;
  op->b = b;
  if (busy) {
    op->state = ST_QUEUED;
    loom__waitq_push(&f->queue, &b->w);
    return loom__suspend(L, rt, b);
  }
  n = file_run(op, L);
  if (n != RUN_STARTED) {
    loom__block_abort(rt, b);
    op_free(op);
    return n == RUN_RAISE ? lua_error(L) : n;
  }
  return loom__suspend(L, rt, b);
}

static fsop *file_op(lua_State *L, loom_runtime *rt, fsfile *f, int kind) {
  fsop *op = op_new(L, rt, kind);
  op->f = f;
  return op;
}

/* file:read([n]) -> data | nil, "EOF: ...", "EOF" | fail */
static int f_read(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  fsfile *f = to_file(L, 1);
  lua_Integer n = luaL_optinteger(L, 2, (lua_Integer)FS_CHUNK);
  fsop *op;
  luaL_argcheck(L, n >= 0, 2, "size must not be negative");
  if (!f)
    return closed_fail(L);
  op = file_op(L, rt, f, OP_READ);
  op->n = n > FS_MAX_READ ? FS_MAX_READ : n;
  return file_submit(L, rt, op, "file read");
}

/* file:write(data...) -> true | fail */
static int f_write(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  fsfile *f = to_file(L, 1);
  int i, top = lua_gettop(L);
  size_t total = 0;
  fsop *op;
  for (i = 2; i <= top; i++) {
    size_t len;
    luaL_checklstring(L, i, &len);
    total += len;
  }
  if (!f)
    return closed_fail(L);
  op = file_op(L, rt, f, OP_WRITE);
  if (total > 0) {
    op->buf = malloc(total);
    if (!op->buf) {
      op_free(op);
      return luaL_error(L, "not enough memory");
    }
  }
  /* The data is copied: a killed writer's strings may be collected while
   * the pool still writes. */
  for (i = 2; i <= top; i++) {
    size_t len;
    const char *s = lua_tolstring(L, i, &len);
    if (len > 0)
      memcpy(op->buf + op->len, s, len);
    op->len += len;
  }
  return file_submit(L, rt, op, "file write");
}

/* file:seek([whence [, offset]]) -> position | fail */
static int f_seek(lua_State *L) {
  static const char *const names[] = {"set", "cur", "end", NULL};
  loom_runtime *rt = loom__rt(L);
  fsfile *f = to_file(L, 1);
  int whence = luaL_checkoption(L, 2, "cur", names);
  lua_Integer off = luaL_optinteger(L, 3, 0);
  fsop *op;
  if (!f)
    return closed_fail(L);
  op = file_op(L, rt, f, OP_SEEK);
  op->whence = whence;
  op->n = off;
  return file_submit(L, rt, op, "file seek");
}

static int f_sync(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  fsfile *f = to_file(L, 1);
  if (!f)
    return closed_fail(L);
  return file_submit(L, rt, file_op(L, rt, f, OP_SYNC), "file sync");
}

static int f_stat(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  fsfile *f = to_file(L, 1);
  if (!f)
    return closed_fail(L);
  return file_submit(L, rt, file_op(L, rt, f, OP_FSTAT), "file stat");
}

/* The iterator of file:lines(): upvalue 1 = rt, 2 = the file. */
static int f_lines_next(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  fsfile *f = *(fsfile **)lua_touserdata(L, lua_upvalueindex(2));
  if (!f)
    return luaL_error(L, "ECLOSED: file closed");
  return file_submit(L, rt, file_op(L, rt, f, OP_LINE), "file lines");
}

/* file:lines() -> iterator of lines without "\n" / "\r\n"; raises on errors. */
static int f_lines(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  if (!to_file(L, 1))
    return luaL_error(L, "ECLOSED: file closed");
  lua_pushlightuserdata(L, rt);
  lua_pushvalue(L, 1);
  lua_pushcclosure(L, f_lines_next, 2);
  return 1;
}

/* file:close() -> true | fail (the error close(2) reported). A second
 * close is harmless and returns true. */
static int f_close(lua_State *L) {
  fsfile *f = to_file(L, 1);
  int err;
  if (!f) {
    lua_pushboolean(L, 1);
    return 1;
  }
  err = file_close(f);
  if (err < 0)
    return loom__fail(L, uv_err_name(err), "%s: closing a file", uv_strerror(err));
  lua_pushboolean(L, 1);
  return 1;
}

/* __gc and __close: close without a result. */
static int f_gc(lua_State *L) {
  fsfile *f = *(fsfile **)luaL_checkudata(L, 1, FILE_MT);
  if (f)
    file_close(f);
  return 0;
}

static int f_tostring(lua_State *L) {
  fsfile **box = luaL_checkudata(L, 1, FILE_MT);
  if (*box)
    lua_pushfstring(L, "loom.file (%s): %p", (*box)->path, (void *)*box);
  else
    lua_pushfstring(L, "loom.file (closed): %p", (void *)box);
  return 1;
}

/* ------------------------------------------------------------ path calls */

static int push_path_result(lua_State *S, fsop *op, ssize_t res, loom_block *b);

/* The cancel hook of a path call. */
static void pop_cancel(loom_runtime *rt, loom_block *b, int why) {
  fsop *op = b->data;
  (void)rt;
  (void)why;
  op->b = NULL;
  uv_cancel((uv_req_t *)&op->req);
}

static void chain_step(fsop *op, ssize_t res);

static void path_cb(uv_fs_t *req) {
  fsop *op = req->data;
  ssize_t res = req->result;
  if (op->kind == OP_READ_FILE || op->kind == OP_WRITE_FILE) {
    chain_step(op, res);
    return;
  }
  op_wake(op, push_path_result, res);
  if (op->kind == OP_OPEN && op->f && res >= 0)
    close_now(op->rt, (uv_file)res); /* the caller left: nobody gets the file */
  uv_fs_req_cleanup(req);
  op_free(op);
}

static int push_path_result(lua_State *S, fsop *op, ssize_t res, loom_block *b) {
  (void)b;
  if (res < 0) {
    if (op->kind == OP_EXISTS && (res == UV_ENOENT || res == UV_ENOTDIR)) {
      lua_pushboolean(S, 0);
      return 1;
    }
    return push_fail(S, (int)res, op->path, op->path2);
  }
  switch (op->kind) {
    case OP_STAT:
    case OP_LSTAT:
      return push_stat(S, &op->req.statbuf);
    case OP_READDIR: {
      uv_dirent_t ent;
      lua_Integer i = 0;
      lua_createtable(S, (int)res, 0);
      lua_createtable(S, 0, (int)res);
      while (uv_fs_scandir_next(&op->req, &ent) != UV_EOF) {
        lua_pushstring(S, ent.name);
        lua_pushvalue(S, -1);
        lua_rawseti(S, -4, ++i);
        lua_pushstring(S, dirent_type_name(ent.type));
        lua_rawset(S, -3);
      }
      return 2;
    }
    case OP_REALPATH:
      lua_pushstring(S, op->req.ptr);
      return 1;
    case OP_MKDTEMP:
      lua_pushstring(S, op->req.path);
      return 1;
    case OP_OPEN: {
      fsfile *f = op->f, **box;
      f->fd = (uv_file)res;
      box = lua_newuserdatauv(S, sizeof *box, 0);
      *box = f;
      f->box = box;
      f->link.close = file_link_close;
      loom__link(op->rt, &f->link);
      luaL_setmetatable(S, FILE_MT);
      op->f = NULL; /* the box owns it now */
      return 1;
    }
    default:
      lua_pushboolean(S, 1);
      return 1;
  }
}

/* Starts op's request; the last statement of a path call. */
static int path_submit(lua_State *L, loom_runtime *rt, fsop *op, const char *what) {
  uv_loop_t *loop = rt->loop;
  loom_block *b;
  int err;
  const char *why = loom__why_not_block(L, rt);
  if (why) {
    op_free(op);
    return luaL_error(L, "%s", why);
  }
  b = loom__block_new(rt, L, what);
  b->data = op;
  b->cancel = pop_cancel;
  op->b = b;
  switch (op->kind) {
    case OP_STAT:
    case OP_EXISTS:
      err = uv_fs_stat(loop, &op->req, op->path, path_cb);
      break;
    case OP_LSTAT:
      err = uv_fs_lstat(loop, &op->req, op->path, path_cb);
      break;
    case OP_READDIR:
      err = uv_fs_scandir(loop, &op->req, op->path, 0, path_cb);
      break;
    case OP_MKDIR:
      err = uv_fs_mkdir(loop, &op->req, op->path, op->mode, path_cb);
      break;
    case OP_RMDIR:
      err = uv_fs_rmdir(loop, &op->req, op->path, path_cb);
      break;
    case OP_UNLINK:
      err = uv_fs_unlink(loop, &op->req, op->path, path_cb);
      break;
    case OP_RENAME:
      err = uv_fs_rename(loop, &op->req, op->path, op->path2, path_cb);
      break;
    case OP_COPYFILE:
      err = uv_fs_copyfile(loop, &op->req, op->path, op->path2, op->flags, path_cb);
      break;
    case OP_REALPATH:
      err = uv_fs_realpath(loop, &op->req, op->path, path_cb);
      break;
    case OP_MKDTEMP:
      err = uv_fs_mkdtemp(loop, &op->req, op->path, path_cb);
      break;
    default: /* OP_OPEN, OP_READ_FILE, OP_WRITE_FILE */
      err = uv_fs_open(loop, &op->req, op->path, op->flags, op->mode, path_cb);
      break;
  }
  if (err < 0) {
    int n;
    uv_fs_req_cleanup(&op->req);
    loom__block_abort(rt, b);
    op->b = NULL;
    n = push_fail(L, err, op->path, op->path2);
    op_free(op);
    return n;
  }
  return loom__suspend(L, rt, b);
}

/* A path call with one path argument at index 1. */
static fsop *path_op(lua_State *L, loom_runtime *rt, int kind) {
  const char *path = check_path(L, 1);
  fsop *op = op_new(L, rt, kind);
  op->path = dup_or_raise(L, op, path);
  return op;
}

/* ------------------------------------------------------------ read_file / write_file */

static int push_chain_result(lua_State *S, fsop *op, ssize_t res, loom_block *b) {
  (void)b;
  if (res < 0)
    return push_fail(S, (int)res, op->path, NULL);
  if (op->kind == OP_READ_FILE)
    lua_pushlstring(S, op->buf ? op->buf : "", op->len);
  else
    lua_pushboolean(S, 1);
  return 1;
}

/* Ends a chain: closes the descriptor it opened, answers, frees. */
static void chain_end(fsop *op, ssize_t res) {
  if (op->fd >= 0) {
    int err = close_now(op->rt, op->fd);
    op->fd = -1;
    if (err < 0 && res >= 0)
      res = err; /* a failed close can lose written data: report it */
  }
  op_wake(op, push_chain_result, res);
  op_free(op);
}

/* Issues the next read of read_file into the buffer, growing it first. */
static int chain_read(fsop *op) {
  uv_buf_t buf;
  if (op->cap - op->len == 0) {
    size_t cap = op->cap ? op->cap * 2 : FS_CHUNK;
    char *p = realloc(op->buf, cap);
    if (!p)
      return UV_ENOMEM;
    op->buf = p;
    op->cap = cap;
  }
  buf = uv_buf_init(op->buf + op->len, io_len(op->cap - op->len));
  return uv_fs_read(op->rt->loop, &op->req, op->fd, &buf, 1, -1, path_cb);
}

static int chain_write(fsop *op) {
  uv_buf_t buf = uv_buf_init(op->buf + op->done, io_len(op->len - op->done));
  return uv_fs_write(op->rt->loop, &op->req, op->fd, &buf, 1, -1, path_cb);
}

/* One step of read_file (open, fstat, read...) or write_file (open,
 * write...) is back from the pool. */
static void chain_step(fsop *op, ssize_t res) {
  uv_stat_t st = op->req.statbuf;
  int err = 0;
  uv_fs_req_cleanup(&op->req);
  if (op->step == STEP_OPEN && res >= 0)
    op->fd = (uv_file)res;
  if (!op->b || res < 0) {
    chain_end(op, res < 0 ? res : UV_ECANCELED);
    return;
  }
  switch (op->step) {
    case STEP_OPEN:
      if (op->kind == OP_READ_FILE) {
        op->step = STEP_FSTAT;
        err = uv_fs_fstat(op->rt->loop, &op->req, op->fd, path_cb);
      } else {
        op->step = STEP_IO;
        if (op->len == 0) {
          chain_end(op, 0);
          return;
        }
        err = chain_write(op);
      }
      break;
    case STEP_FSTAT:
      op->step = STEP_IO;
      /* Room for the whole file and the read that sees its end; files
       * that report no size (/proc) grow the buffer as they go. */
      op->cap = (size_t)st.st_size + FS_CHUNK;
      op->buf = malloc(op->cap);
      err = op->buf ? chain_read(op) : UV_ENOMEM;
      break;
    default:
      if (op->kind == OP_READ_FILE) {
        if (res == 0) {
          chain_end(op, 0);
          return;
        }
        op->len += (size_t)res;
        err = chain_read(op);
      } else {
        op->done += (size_t)res;
        if (op->done == op->len) {
          chain_end(op, 0);
          return;
        }
        err = chain_write(op);
      }
      break;
  }
  if (err < 0)
    chain_end(op, err);
}

/* fs.read_file(path) -> data | fail */
static int l_read_file(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  fsop *op = path_op(L, rt, OP_READ_FILE);
  op->flags = UV_FS_O_RDONLY;
  return path_submit(L, rt, op, "fs.read_file");
}

/* fs.write_file(path, data [, mode]) -> true | fail */
static int l_write_file(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  size_t len;
  const char *data;
  lua_Integer mode;
  fsop *op;
  check_path(L, 1);
  data = luaL_checklstring(L, 2, &len);
  mode = luaL_optinteger(L, 3, 0666);
  luaL_argcheck(L, mode >= 0 && mode <= 07777, 3, "mode must be between 0 and 0o7777");
  op = path_op(L, rt, OP_WRITE_FILE);
  op->flags = UV_FS_O_WRONLY | UV_FS_O_CREAT | UV_FS_O_TRUNC;
  op->mode = (int)mode;
  if (len > 0) {
    op->buf = malloc(len);
    if (!op->buf) {
      op_free(op);
      return luaL_error(L, "not enough memory");
    }
    memcpy(op->buf, data, len);
  }
  op->len = len;
  return path_submit(L, rt, op, "fs.write_file");
}

/* ------------------------------------------------------------ the other path calls */

/* Parses an io.open mode: r, w, a, optionally followed by "+", "b" and
 * "x" (fail if the file exists) in any order. -1 if malformed. */
static int parse_mode(const char *m, int *append) {
  int flags, plus = 0, excl = 0;
  const char *p;
  *append = 0;
  switch (m[0]) {
    case 'r':
      flags = 0;
      break;
    case 'w':
      flags = UV_FS_O_CREAT | UV_FS_O_TRUNC;
      break;
    case 'a':
      flags = UV_FS_O_CREAT | UV_FS_O_APPEND;
      *append = 1;
      break;
    default:
      return -1;
  }
  for (p = m + 1; *p; p++) {
    if (*p == '+' && !plus)
      plus = 1;
    else if (*p == 'x' && !excl && m[0] != 'r')
      excl = 1;
    else if (*p != 'b')
      return -1;
  }
  if (plus)
    flags |= UV_FS_O_RDWR;
  else
    flags |= m[0] == 'r' ? UV_FS_O_RDONLY : UV_FS_O_WRONLY;
  if (excl)
    flags |= UV_FS_O_EXCL;
  return flags;
}

/* fs.open(path [, mode [, perm]]) -> file | fail */
static int l_open(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  size_t mlen;
  const char *mode = luaL_optlstring(L, 2, "r", &mlen);
  lua_Integer perm = luaL_optinteger(L, 3, 0666);
  int append, flags = parse_mode(mode, &append);
  fsop *op;
  fsfile *f;
  check_path(L, 1);
  luaL_argcheck(L, flags >= 0 && strlen(mode) == mlen, 2, "invalid mode (r, w or a, then +, b, x)");
  luaL_argcheck(L, perm >= 0 && perm <= 07777, 3, "permissions must be between 0 and 0o7777");
  op = path_op(L, rt, OP_OPEN);
  f = calloc(1, sizeof *f);
  if (f)
    f->path = strdup(op->path);
  if (!f || !f->path) {
    free(f);
    op_free(op);
    return luaL_error(L, "not enough memory");
  }
  f->rt = rt;
  f->fd = -1;
  f->append = append;
  op->f = f;
  op->flags = flags;
  op->mode = (int)perm;
  return path_submit(L, rt, op, "fs.open");
}

static int l_stat(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  return path_submit(L, rt, path_op(L, rt, OP_STAT), "fs.stat");
}

static int l_lstat(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  return path_submit(L, rt, path_op(L, rt, OP_LSTAT), "fs.lstat");
}

static int l_exists(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  return path_submit(L, rt, path_op(L, rt, OP_EXISTS), "fs.exists");
}

static int l_readdir(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  return path_submit(L, rt, path_op(L, rt, OP_READDIR), "fs.readdir");
}

static int l_mkdir(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  lua_Integer mode = luaL_optinteger(L, 2, 0777);
  fsop *op;
  luaL_argcheck(L, mode >= 0 && mode <= 07777, 2, "mode must be between 0 and 0o7777");
  op = path_op(L, rt, OP_MKDIR);
  op->mode = (int)mode;
  return path_submit(L, rt, op, "fs.mkdir");
}

static int l_rmdir(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  return path_submit(L, rt, path_op(L, rt, OP_RMDIR), "fs.rmdir");
}

static int l_unlink(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  return path_submit(L, rt, path_op(L, rt, OP_UNLINK), "fs.unlink");
}

/* A call with two paths (rename, copyfile): index 1 and 2. */
static fsop *path2_op(lua_State *L, loom_runtime *rt, int kind) {
  const char *to;
  fsop *op;
  check_path(L, 1);
  to = check_path(L, 2);
  op = path_op(L, rt, kind);
  op->path2 = dup_or_raise(L, op, to);
  return op;
}

static int l_rename(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  return path_submit(L, rt, path2_op(L, rt, OP_RENAME), "fs.rename");
}

/* fs.copyfile(from, to [, opts]) opts.exclusive: fail if `to` exists. */
static int l_copyfile(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  int flags = 0;
  fsop *op;
  if (!lua_isnoneornil(L, 3)) {
    luaL_checktype(L, 3, LUA_TTABLE);
    lua_getfield(L, 3, "exclusive");
    if (lua_toboolean(L, -1))
      flags |= UV_FS_COPYFILE_EXCL;
    lua_pop(L, 1);
  }
  op = path2_op(L, rt, OP_COPYFILE);
  op->flags = flags;
  return path_submit(L, rt, op, "fs.copyfile");
}

static int l_realpath(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  return path_submit(L, rt, path_op(L, rt, OP_REALPATH), "fs.realpath");
}

static int l_mkdtemp(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  const char *tpl = check_path(L, 1);
  size_t len = strlen(tpl);
  luaL_argcheck(L, len >= 6 && strcmp(tpl + len - 6, "XXXXXX") == 0, 1,
                "template must end in XXXXXX");
  return path_submit(L, rt, path_op(L, rt, OP_MKDTEMP), "fs.mkdtemp");
}

/* ------------------------------------------------------------ open */

void loom__open_fs(lua_State *L, loom_runtime *rt) {
  static const luaL_Reg funcs[] = {
      {"read_file", l_read_file}, {"write_file", l_write_file}, {"open", l_open},
      {"stat", l_stat},           {"lstat", l_lstat},           {"exists", l_exists},
      {"readdir", l_readdir},     {"mkdir", l_mkdir},           {"rmdir", l_rmdir},
      {"unlink", l_unlink},       {"rename", l_rename},         {"copyfile", l_copyfile},
      {"realpath", l_realpath},   {"mkdtemp", l_mkdtemp},       {NULL, NULL}};
  static const luaL_Reg methods[] = {{"read", f_read},   {"write", f_write}, {"seek", f_seek},
                                     {"sync", f_sync},   {"stat", f_stat},   {"lines", f_lines},
                                     {"close", f_close}, {NULL, NULL}};
  luaL_newmetatable(L, FILE_MT);
  lua_newtable(L);
  loom__setfuncs(L, rt, methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, f_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, f_gc);
  lua_setfield(L, -2, "__close");
  lua_pushcfunction(L, f_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
  lua_newtable(L);
  loom__setfuncs(L, rt, funcs);
  lua_setfield(L, -2, "fs");
}
