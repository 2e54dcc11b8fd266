/*
 * process.c - loom.process: spawn a child (uv_spawn), wait for its end, send
 * it signals. Its pipes are ordinary loom streams (stream.h); loom.process.run
 * is policy and lives in lua/loom/process.lua.
 *
 * Invariant: no zombies. libuv reaps every child it spawned in its SIGCHLD
 * watcher as long as the handle stays in the loop, so the handle lives until
 * the exit callback has run - also when the Lua object is closed or collected
 * first. Only a runtime that shuts down with the child still running reaps it
 * itself, after SIGKILL.
 */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>

#include "loom_int.h"
#include "stream.h"

#define PROC_MT "loom.proc"
#define PIPE_MT "loom.pipe"

extern char **environ;

LOOM_HIDDEN void loom__ignore_sigpipe(void);

/* ------------------------------------------------------------ signal names */

static const struct {
  const char *name;
  int num;
} signal_names[] = {
    {"SIGHUP", SIGHUP},       {"SIGINT", SIGINT},       {"SIGQUIT", SIGQUIT},
    {"SIGILL", SIGILL},       {"SIGTRAP", SIGTRAP},     {"SIGABRT", SIGABRT},
    {"SIGBUS", SIGBUS},       {"SIGFPE", SIGFPE},       {"SIGKILL", SIGKILL},
    {"SIGUSR1", SIGUSR1},     {"SIGSEGV", SIGSEGV},     {"SIGUSR2", SIGUSR2},
    {"SIGPIPE", SIGPIPE},     {"SIGALRM", SIGALRM},     {"SIGTERM", SIGTERM},
    {"SIGCHLD", SIGCHLD},     {"SIGCONT", SIGCONT},     {"SIGSTOP", SIGSTOP},
    {"SIGTSTP", SIGTSTP},     {"SIGTTIN", SIGTTIN},     {"SIGTTOU", SIGTTOU},
    {"SIGURG", SIGURG},       {"SIGXCPU", SIGXCPU},     {"SIGXFSZ", SIGXFSZ},
    {"SIGVTALRM", SIGVTALRM}, {"SIGPROF", SIGPROF},     {"SIGWINCH", SIGWINCH},
    {"SIGIO", SIGIO},         {"SIGSYS", SIGSYS},
#ifdef SIGPWR
    {"SIGPWR", SIGPWR},
#endif
    {NULL, 0}};

/* Pushes the name of signal n ("SIGKILL"; "SIG34" for one without a name). */
static void push_signal_name(lua_State *L, int n) {
  int i;
  for (i = 0; signal_names[i].name; i++) {
    if (signal_names[i].num == n) {
      lua_pushstring(L, signal_names[i].name);
      return;
    }
  }
  lua_pushfstring(L, "SIG%d", n);
}

/* The signal argument at idx: nil -> SIGTERM, a name ("SIGTERM" or
 * "TERM") or a number 0..64 (0 only tests that the process exists). */
static int check_signal(lua_State *L, int idx) {
  int i;
  if (lua_isnoneornil(L, idx))
    return SIGTERM;
  if (lua_type(L, idx) == LUA_TNUMBER) {
    lua_Integer n;
    luaL_argcheck(L, lua_isinteger(L, idx), idx, "signal number must be an integer");
    n = lua_tointeger(L, idx);
    luaL_argcheck(L, n >= 0 && n <= 64, idx, "signal number out of range");
    return (int)n;
  }
  if (lua_type(L, idx) == LUA_TSTRING) {
    const char *s = lua_tostring(L, idx);
    for (i = 0; signal_names[i].name; i++) {
      if (strcmp(s, signal_names[i].name) == 0 || strcmp(s, signal_names[i].name + 3) == 0)
        return signal_names[i].num;
    }
    return luaL_argerror(L, idx, lua_pushfstring(L, "unknown signal '%s'", s));
  }
  return luaL_typeerror(L, idx, "signal name or number");
}

/* ------------------------------------------------------------ objects */

/* The Lua object is a box (user values 1..3: the stdin, stdout and stderr
 * streams or nil). The libuv handle sits in malloc'd memory of its own
 * (design rule H1), which lives until the handle's close callback: the child
 * may outlive the box. */
typedef struct proc proc;
typedef struct proc_box {
  proc *p;            /* NULL once the handle is closed */
  loom_waitq waiters; /* wait() callers */
  int pid;
  int exited, closed;
  int code;   /* exit status, or 128 + signal number */
  int signal; /* the signal that ended it, 0 if none */
} proc_box;

struct proc {
  uv_process_t h;
  loom_link link;
  loom_runtime *rt;
  proc_box *box; /* NULL once the box was collected */
};

static proc_box *check_proc(lua_State *L, int idx) {
  return luaL_checkudata(L, idx, PROC_MT);
}

/* Pushes wait()'s two results: code, signal name or nil. */
static void push_status(lua_State *L, const proc_box *box) {
  lua_pushinteger(L, box->code);
  if (box->signal)
    push_signal_name(L, box->signal);
  else
    lua_pushnil(L);
}

static void proc_free(uv_handle_t *h) { free(h->data); }

/* Detaches p from its box and the runtime and closes the handle; the memory
 * goes in the close callback. */
static void proc_release(proc *p) {
  loom__unlink(&p->link);
  if (p->box)
    p->box->p = NULL;
  p->box = NULL;
  uv_close((uv_handle_t *)&p->h, proc_free);
}

static void wake_waiters(loom_runtime *rt, proc_box *box) {
  loom_wait *w;
  while ((w = loom__waitq_pop(&box->waiters)) != NULL) {
    lua_State *S = loom__wake_stack(rt, w->block->t, 2);
    if (S)
      push_status(S, box);
    loom__wake(rt, w->block, S ? 2 : 0, LOOM_WOKE_DONE);
  }
}

/* libuv has reaped the child: record its status, wake every waiter, and let
 * the handle go (a pid must never be signalled after it was reaped: the
 * system may hand it to another process). */
static void proc_exit_cb(uv_process_t *h, int64_t status, int term_signal) {
  proc *p = h->data;
  proc_box *box = p->box;
  if (box) {
    box->exited = 1;
    box->signal = term_signal;
    box->code = term_signal ? 128 + term_signal : (int)status;
    if (!p->rt->closing)
      wake_waiters(p->rt, box);
  }
  proc_release(p);
}

/* Runtime shutdown with the child still running: nothing would reap it once
 * the loop is gone, so it is killed and reaped here. uv_close has already
 * taken it out of libuv's list when waitpid runs, so the two cannot race. */
static void proc_link_close(loom_runtime *rt, loom_link *l) {
  proc *p = (proc *)((char *)l - offsetof(proc, link));
  int pid = p->h.pid, st;
  (void)rt;
  if (p->box)
    p->box->closed = 1;
  uv_process_kill(&p->h, SIGKILL);
  proc_release(p);
  while (waitpid(pid, &st, 0) == -1 && errno == EINTR)
    ;
}

/* The box was collected: a running child keeps its handle (and the runtime
 * busy) until it exits; the exit callback then frees it. */
static int proc_gc(lua_State *L) {
  proc_box *box = luaL_testudata(L, 1, PROC_MT); /* __gc is reachable from Lua */
  if (box && box->p) {
    box->p->box = NULL;
    box->p = NULL;
  }
  return 0;
}

/* ------------------------------------------------------------ spawn: arguments */

static const char *const stdio_modes[] = {"inherit", "pipe", "ignore", NULL};
enum { IO_INHERIT = 0, IO_PIPE, IO_IGNORE };

typedef struct spawn_opts {
  const char *cwd;
  int env_idx;   /* opts.env table or 0 */
  int env_clear; /* start from an empty environment */
  int io[3];
} spawn_opts;

static const char *check_nul_free(lua_State *L, int idx, int arg, const char *what) {
  size_t len;
  const char *s = lua_tolstring(L, idx, &len);
  if (strlen(s) != len)
    luaL_argerror(L, arg, lua_pushfstring(L, "%s must not contain a NUL byte", what));
  return s;
}

static void check_opts(lua_State *L, int idx, spawn_opts *o) {
  static const char *const names[] = {"stdin", "stdout", "stderr"};
  int i;
  memset(o, 0, sizeof *o);
  if (lua_isnoneornil(L, idx))
    return;
  luaL_checktype(L, idx, LUA_TTABLE);
  /* Unknown keys are refused: a misspelt option must not pass unnoticed. */
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
    lua_pop(L, 1);
    if (!k || (strcmp(k, "cwd") && strcmp(k, "env") && strcmp(k, "env_clear") &&
               strcmp(k, "stdin") && strcmp(k, "stdout") && strcmp(k, "stderr")))
      luaL_argerror(L, idx,
                    lua_pushfstring(L, "unknown option '%s'", k ? k : luaL_typename(L, -1)));
  }
  if (lua_getfield(L, idx, "cwd") != LUA_TNIL) {
    if (lua_type(L, -1) != LUA_TSTRING)
      luaL_argerror(L, idx, "option 'cwd' must be a string");
    o->cwd = check_nul_free(L, -1, idx, "option 'cwd'");
  }
  lua_pop(L, 1); /* the string stays alive in opts */
  if (lua_getfield(L, idx, "env") != LUA_TNIL) {
    if (lua_type(L, -1) != LUA_TTABLE)
      luaL_argerror(L, idx, "option 'env' must be a table");
    o->env_idx = lua_gettop(L); /* left on the stack */
  } else
    lua_pop(L, 1);
  if (lua_getfield(L, idx, "env_clear") != LUA_TNIL) {
    if (lua_type(L, -1) != LUA_TBOOLEAN)
      luaL_argerror(L, idx, "option 'env_clear' must be a boolean");
    o->env_clear = lua_toboolean(L, -1);
  }
  lua_pop(L, 1);
  for (i = 0; i < 3; i++) {
    int j;
    const char *v;
    if (lua_getfield(L, idx, names[i]) == LUA_TNIL) {
      lua_pop(L, 1);
      continue;
    }
    v = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "";
    for (j = 0; stdio_modes[j] && strcmp(v, stdio_modes[j]); j++)
      ;
    if (!stdio_modes[j])
      luaL_argerror(L, idx,
                    lua_pushfstring(L, "option '%s' must be \"pipe\", \"inherit\" or \"ignore\"",
                                    names[i]));
    o->io[i] = j;
    lua_pop(L, 1);
  }
}

/* Copies the strings of the sequence at idx (1..n) into one userdata, as a
 * NULL-terminated char *[] (pushed), so that nothing leaks if a later check
 * raises. Stack: [-0, +1]. */
static char **pack_strings(lua_State *L, int idx, lua_Integer n) {
  size_t bytes = (size_t)(n + 1) * sizeof(char *), len;
  lua_Integer i;
  char **v, *s;
  idx = lua_absindex(L, idx);
  for (i = 1; i <= n; i++) {
    lua_rawgeti(L, idx, i);
    lua_tolstring(L, -1, &len);
    bytes += len + 1;
    lua_pop(L, 1);
  }
  v = lua_newuserdatauv(L, bytes, 0);
  s = (char *)(v + n + 1);
  for (i = 1; i <= n; i++) {
    const char *src;
    lua_rawgeti(L, idx, i);
    src = lua_tolstring(L, -1, &len);
    memcpy(s, src, len + 1);
    v[i - 1] = s;
    s += len + 1;
    lua_pop(L, 1);
  }
  v[n] = NULL;
  return v;
}

/* argv for execvp: the command, then the strings of the array at idx (nil
 * = none; numbers are turned into strings). Stack: [-0, +1]. */
static char **build_argv(lua_State *L, int cmd_idx, int idx) {
  lua_Integer i, n = 0;
  char **v;
  if (!lua_isnoneornil(L, idx)) {
    luaL_checktype(L, idx, LUA_TTABLE);
    n = (lua_Integer)lua_rawlen(L, idx);
  }
  lua_createtable(L, (int)n + 1, 0);
  lua_pushvalue(L, cmd_idx);
  lua_rawseti(L, -2, 1);
  for (i = 1; i <= n; i++) {
    int t = lua_rawgeti(L, idx, i);
    if (t != LUA_TSTRING && t != LUA_TNUMBER)
      luaL_argerror(L, idx,
                    lua_pushfstring(L, "args[%I] must be a string, got %s", i,
                                    luaL_typename(L, -1)));
    lua_tostring(L, -1);
    check_nul_free(L, -1, idx, "an argument");
    lua_rawseti(L, -2, i + 1);
  }
  v = pack_strings(L, -1, n + 1);
  lua_remove(L, -2);
  return v;
}

/* The child's environment, or NULL (and nothing pushed) to pass the parent's
 * unchanged. opts.env extends the parent's environment (false removes a
 * variable); env_clear = true starts from an empty one. Stack: [-0, +0|1]. */
static char **build_env(lua_State *L, const spawn_opts *o, int opts_idx) {
  lua_Integer n = 0;
  char **e;
  int vars;
  if (!o->env_idx && !o->env_clear)
    return NULL;
  lua_newtable(L); /* name -> value */
  vars = lua_gettop(L);
  if (!o->env_clear) {
    for (e = environ; e && *e; e++) {
      const char *eq = strchr(*e, '=');
      if (!eq || eq == *e)
        continue;
      lua_pushlstring(L, *e, (size_t)(eq - *e));
      lua_pushstring(L, eq + 1);
      lua_rawset(L, vars);
    }
  }
  if (o->env_idx) {
    lua_pushnil(L);
    while (lua_next(L, o->env_idx)) {
      const char *k;
      size_t klen;
      int vt = lua_type(L, -1);
      if (lua_type(L, -2) != LUA_TSTRING)
        luaL_argerror(L, opts_idx, "option 'env' must map names (strings) to values");
      k = lua_tolstring(L, -2, &klen);
      if (klen == 0 || strlen(k) != klen || strchr(k, '='))
        luaL_argerror(L, opts_idx, lua_pushfstring(L, "bad environment variable name '%s'", k));
      if (vt == LUA_TBOOLEAN && !lua_toboolean(L, -1)) {
        lua_pop(L, 1);
        lua_pushnil(L);
      } else if (vt == LUA_TSTRING || vt == LUA_TNUMBER) {
        lua_tostring(L, -1);
        check_nul_free(L, -1, opts_idx, "an environment value");
      } else
        luaL_argerror(L, opts_idx,
                      lua_pushfstring(L, "environment variable '%s' must be a string or false", k));
      lua_pushvalue(L, -2);
      lua_insert(L, -2);
      lua_rawset(L, vars);
    }
  }
  /* The "NAME=value" strings as a sequence. */
  lua_newtable(L);
  lua_pushnil(L);
  while (lua_next(L, vars)) {
    lua_pushvalue(L, -2);
    lua_pushliteral(L, "=");
    lua_rotate(L, -3, -1); /* key, key, "=", value */
    lua_concat(L, 3);
    lua_rawseti(L, vars + 1, ++n);
  }
  e = pack_strings(L, -1, n);
  lua_replace(L, vars);
  lua_pop(L, 1);
  return e;
}

/* Writing to a pipe whose reader has gone must give EPIPE, not kill the
 * process: the CLI ignores SIGPIPE, a stock lua5.4 does not. So SIGPIPE is
 * ignored on first need, unless the host chose a handler (children start
 * with default dispositions anyway). Also used by stdio.c. */
void loom__ignore_sigpipe(void) {
  struct sigaction sa;
  if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL) {
    sa.sa_handler = SIG_IGN;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;
    sigaction(SIGPIPE, &sa, NULL);
  }
}

/* ------------------------------------------------------------ spawn */

/* Closes the pipe streams held by the box at idx (user values 1..3). */
static void close_pipes(lua_State *L, loom_runtime *rt, int idx) {
  int i;
  for (i = 1; i <= 3; i++) {
    if (lua_getiuservalue(L, idx, i) != LUA_TNIL) {
      loom_stream *s = loom__stream_check(L, -1, NULL);
      if (s)
        loom__stream_close(rt, s);
    }
    lua_pop(L, 1);
  }
}

/* spawn(cmd, args [, opts]) -> proc, or fail (the command could not be
 * started: ENOENT, EACCES, a bad cwd...). */
static int l_spawn(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  const char *cmd;
  char **argv, **env;
  spawn_opts o;
  uv_process_options_t po;
  uv_stdio_container_t io[3];
  proc_box *box;
  proc *p;
  int i, err, box_idx;
  if (rt->sandbox)
    return luaL_error(L, "loom.process.spawn is not available in the sandbox");
  luaL_checktype(L, 1, LUA_TSTRING);
  cmd = check_nul_free(L, 1, 1, "the command");
  lua_settop(L, 3);
  check_opts(L, 3, &o);
  argv = build_argv(L, 1, 2);
  env = build_env(L, &o, 3);
  if (rt->closing)
    return loom__fail(L, "ECLOSED", "the runtime is closing");

  box = lua_newuserdatauv(L, sizeof *box, 3);
  memset(box, 0, sizeof *box);
  box->closed = 1; /* until the child runs */
  luaL_setmetatable(L, PROC_MT);
  box_idx = lua_gettop(L);
  memset(&po, 0, sizeof po);
  for (i = 0; i < 3; i++) {
    if (o.io[i] == IO_PIPE) {
      /* The stream becomes user value i + 1 of the box; uv_spawn opens its
       * handle on the parent's end of a socketpair. */
      loom_stream *s = loom__stream_push(L, rt, PIPE_MT);
      if (!s) {
        close_pipes(L, rt, box_idx);
        return luaL_error(L, "not enough memory");
      }
      err = loom__stream_opened(s, uv_pipe_init(rt->loop, &s->h.pipe, 0));
      if (err < 0) {
        close_pipes(L, rt, box_idx);
        return loom__fail_uv(L, err, cmd);
      }
      lua_setiuservalue(L, box_idx, i + 1);
      io[i].flags = UV_CREATE_PIPE | (i == 0 ? UV_READABLE_PIPE : UV_WRITABLE_PIPE);
      io[i].data.stream = &s->h.stream;
      if (i == 0)
        loom__ignore_sigpipe();
    } else if (o.io[i] == IO_IGNORE)
      io[i].flags = UV_IGNORE;
    else {
      io[i].flags = UV_INHERIT_FD;
      io[i].data.fd = i;
    }
  }
  p = malloc(sizeof *p);
  if (!p) {
    close_pipes(L, rt, box_idx);
    return luaL_error(L, "not enough memory");
  }
  memset(p, 0, sizeof *p);
  p->rt = rt;
  p->h.data = p;
  p->link.close = proc_link_close;
  po.exit_cb = proc_exit_cb;
  po.file = cmd;
  po.args = argv;
  po.env = env;
  po.cwd = o.cwd;
  po.stdio = io;
  po.stdio_count = 3;
  err = uv_spawn(rt->loop, &p->h, &po);
  if (err < 0) {
    /* libuv may have opened the pipes before it learnt that exec failed;
     * the handle must be closed even though it never started. */
    uv_close((uv_handle_t *)&p->h, proc_free);
    close_pipes(L, rt, box_idx);
    if (o.cwd)
      lua_pushfstring(L, "%s (in %s)", cmd, o.cwd);
    else
      lua_pushstring(L, cmd);
    return loom__fail_uv(L, err, lua_tostring(L, -1));
  }
  p->box = box;
  box->p = p;
  box->pid = p->h.pid;
  box->closed = 0;
  loom__link(rt, &p->link);
  lua_settop(L, box_idx);
  return 1;
}

/* ------------------------------------------------------------ methods */

/* proc:wait([s]) -> code, signal | fail. code is the exit status, or 128 +
 * the signal number when a signal ended the child (signal then names it). */
static int proc_wait(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  proc_box *box = check_proc(L, 1);
  double timeout = loom__opt_timeout(L, 2);
  loom_block *b;
  if (box->exited) {
    push_status(L, box);
    return 2;
  }
  if (box->closed)
    return loom__fail(L, "ECLOSED", "the process object is closed");
  if (timeout == 0)
    return loom__fail(L, "ETIMEDOUT", "timed out");
  loom__check_block(L, rt);
  lua_settop(L, 1); /* the box stays anchored on the waiter's stack (H4) */
  b = loom__block_new(rt, L, "process wait");
  loom__waitq_push(&box->waiters, &b->w);
  loom__block_timeout(rt, b, timeout);
  return loom__suspend(L, rt, b);
}

/* proc:kill([sig]) -> true | fail (ESRCH once the child has exited). */
static int proc_kill(lua_State *L) {
  proc_box *box = check_proc(L, 1);
  int sig = check_signal(L, 2), err;
  if (box->exited || !box->p)
    return loom__fail(L, "ESRCH", "process %d has exited", box->pid);
  if (box->closed)
    return loom__fail(L, "ECLOSED", "the process object is closed");
  err = uv_process_kill(&box->p->h, sig);
  if (err < 0)
    return loom__fail_uv(L, err, NULL);
  lua_pushboolean(L, 1);
  return 1;
}

/* proc:close(): closes the pipes and wakes waiters with ECLOSED. The child
 * is not signalled: it runs on, and is reaped when it exits. */
static int proc_close(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  proc_box *box = check_proc(L, 1);
  loom_wait *w;
  lua_pushboolean(L, 1);
  if (box->closed)
    return 1;
  box->closed = 1;
  close_pipes(L, rt, 1);
  while ((w = loom__waitq_pop(&box->waiters)) != NULL)
    loom__wake_fail(rt, w->block, "ECLOSED", "the process object was closed", LOOM_WOKE_CLOSE);
  return 1;
}

static int proc_props(lua_State *L) {
  proc_box *box = check_proc(L, 1);
  const char *k = lua_tostring(L, 2);
  if (!k)
    return 0;
  if (strcmp(k, "pid") == 0) {
    lua_pushinteger(L, box->pid);
    return 1;
  }
  if (strcmp(k, "stdin") == 0)
    return lua_getiuservalue(L, 1, 1), 1;
  if (strcmp(k, "stdout") == 0)
    return lua_getiuservalue(L, 1, 2), 1;
  if (strcmp(k, "stderr") == 0)
    return lua_getiuservalue(L, 1, 3), 1;
  return 0;
}

static int proc_tostring(lua_State *L) {
  proc_box *box = check_proc(L, 1);
  if (box->exited)
    lua_pushfstring(L, "loom.proc (pid %d, exited %d): %p", box->pid, box->code, (void *)box);
  else
    lua_pushfstring(L, "loom.proc (pid %d, %s): %p", box->pid,
                    box->closed ? "closed" : "running", (void *)box);
  return 1;
}

void loom__open_process(lua_State *L, loom_runtime *rt) {
  static const luaL_Reg funcs[] = {{"spawn", l_spawn}, {NULL, NULL}};
  static const luaL_Reg methods[] = {
      {"wait", proc_wait}, {"kill", proc_kill}, {"close", proc_close}, {NULL, NULL}};
  static const luaL_Reg meta[] = {
      {"__close", proc_close}, {"__tostring", proc_tostring}, {NULL, NULL}};
  loom__stream_metatable(L, rt, PIPE_MT, NULL);
  luaL_newmetatable(L, PROC_MT);
  loom__setfuncs(L, rt, meta);
  lua_pushcfunction(L, proc_gc);
  lua_setfield(L, -2, "__gc");
  lua_newtable(L);
  loom__setfuncs(L, rt, methods);
  loom__set_methods(L, rt, proc_props);
  lua_pop(L, 1);
  lua_newtable(L);
  loom__setfuncs(L, rt, funcs);
  lua_setfield(L, -2, "process");
}
