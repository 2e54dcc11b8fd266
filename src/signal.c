/*
 * signal.c - loom.signal: waiting for POSIX signals (wait), handlers run in
 * reactor context (on), and sending one to this process (raise), on
 * libuv's uv_signal_t.
 *
 * When the last libuv watcher of a signal stops, libuv resets it to SIG_DFL.
 * That would undo what the process had before (the CLI ignores SIGPIPE and
 * handles SIGINT itself), so loom remembers the disposition a signal had
 * when loom started watching it and puts it back when loom stops.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loom_int.h"

#define SIGNAL_MT "loom.signal_handler"

typedef struct signame {
  const char *name;
  int signum;
} signame;

static const signame signames[] = {
    {"SIGHUP", SIGHUP},
    {"SIGINT", SIGINT},
    {"SIGQUIT", SIGQUIT},
    {"SIGILL", SIGILL},
    {"SIGTRAP", SIGTRAP},
    {"SIGABRT", SIGABRT},
    {"SIGBUS", SIGBUS},
    {"SIGFPE", SIGFPE},
    {"SIGUSR1", SIGUSR1},
    {"SIGSEGV", SIGSEGV},
    {"SIGUSR2", SIGUSR2},
    {"SIGPIPE", SIGPIPE},
    {"SIGALRM", SIGALRM},
    {"SIGTERM", SIGTERM},
    {"SIGCHLD", SIGCHLD},
    {"SIGCONT", SIGCONT},
    {"SIGTSTP", SIGTSTP},
    {"SIGTTIN", SIGTTIN},
    {"SIGTTOU", SIGTTOU},
    {"SIGURG", SIGURG},
    {"SIGXCPU", SIGXCPU},
    {"SIGXFSZ", SIGXFSZ},
    {"SIGVTALRM", SIGVTALRM},
    {"SIGPROF", SIGPROF},
    {"SIGWINCH", SIGWINCH},
    {"SIGIO", SIGIO},
    {"SIGSYS", SIGSYS},
    /* Only raise() takes these two: they cannot be caught. */
    {"SIGKILL", SIGKILL},
    {"SIGSTOP", SIGSTOP},
    {NULL, 0},
};

/* A watcher: one wait() call, or one on() handler. */
typedef struct sigw {
  uv_signal_t h;
  loom_link link; /* in rt->objects until closed */
  loom_runtime *rt;
  struct sigw **box; /* on(): the Lua box's slot */
  loom_block *b;     /* wait(): the waiting call, NULL once it left */
  const char *name;  /* static (signames) */
  int signum;
  int self_ref; /* on(): anchors the box while active */
  int closed;
} sigw;

/* ------------------------------------------------------------ dispositions */

/* Process-wide, shared by every runtime: how many loom watchers each signal
 * has, and its disposition from before the first one. */
static uv_once_t disp_once = UV_ONCE_INIT;
static uv_mutex_t disp_lock;
static int disp_count[NSIG];
static struct sigaction disp_saved[NSIG];

static void disp_init(void) { uv_mutex_init(&disp_lock); }

static void disp_acquire(int signum) {
  uv_once(&disp_once, disp_init);
  uv_mutex_lock(&disp_lock);
  if (disp_count[signum]++ == 0)
    sigaction(signum, NULL, &disp_saved[signum]);
  uv_mutex_unlock(&disp_lock);
}

/* After the watcher's handle stopped (libuv may have set SIG_DFL). */
static void disp_release(int signum) {
  uv_mutex_lock(&disp_lock);
  if (--disp_count[signum] == 0)
    sigaction(signum, &disp_saved[signum], NULL);
  uv_mutex_unlock(&disp_lock);
}

/* ------------------------------------------------------------ helpers */

/* The signal named at idx ("SIGUSR1"); raises for unknown names and, unless
 * `any`, for the two that cannot be caught. */
static const signame *check_signal(lua_State *L, int idx, int any) {
  const char *name = luaL_checkstring(L, idx);
  const signame *s;
  for (s = signames; s->name; s++) {
    if (strcmp(s->name, name) == 0) {
      if (!any && (s->signum == SIGKILL || s->signum == SIGSTOP))
        luaL_argerror(L, idx, lua_pushfstring(L, "%s cannot be caught", name));
      return s;
    }
  }
  luaL_argerror(L, idx, lua_pushfstring(L, "unknown signal name '%s'", name));
  return NULL;
}

static void close_cb(uv_handle_t *h) { free(h->data); }

/* Closes w: stops watching, restores the disposition, frees in close_cb.
 * Never enters Lua; unanchors an on() handler (`L` may be any thread of
 * the state). */
static void sig_close(sigw *w, lua_State *L) {
  if (w->closed)
    return;
  w->closed = 1;
  loom__unlink(&w->link);
  if (w->box) {
    *w->box = NULL;
    w->box = NULL;
  }
  if (w->self_ref != LUA_NOREF) {
    luaL_unref(L, LUA_REGISTRYINDEX, w->self_ref);
    w->self_ref = LUA_NOREF;
  }
  uv_close((uv_handle_t *)&w->h, close_cb);
  disp_release(w->signum);
}

static void link_close(loom_runtime *rt, loom_link *l) {
  sigw *w = (sigw *)((char *)l - offsetof(sigw, link));
  if (w->b)
    loom__wake_fail(rt, w->b, "ECLOSED", "runtime closed", LOOM_WOKE_CLOSE);
  sig_close(w, rt->L);
}

/* A started watcher, or NULL with the fail triple pushed. */
static sigw *sig_start(lua_State *L, loom_runtime *rt, const signame *s, uv_signal_cb cb,
                       int oneshot) {
  sigw *w = calloc(1, sizeof *w);
  int err;
  if (!w)
    luaL_error(L, "not enough memory");
  w->rt = rt;
  w->name = s->name;
  w->signum = s->signum;
  w->self_ref = LUA_NOREF;
  err = uv_signal_init(rt->loop, &w->h);
  if (err < 0) {
    free(w);
    loom__fail_uv(L, err, s->name);
    return NULL;
  }
  w->h.data = w;
  disp_acquire(w->signum);
  err = oneshot ? uv_signal_start_oneshot(&w->h, cb, w->signum)
                : uv_signal_start(&w->h, cb, w->signum);
  if (err < 0) {
    sig_close(w, L);
    loom__fail_uv(L, err, s->name);
    return NULL;
  }
  w->link.close = link_close;
  loom__link(rt, &w->link);
  return w;
}

/* ------------------------------------------------------------ wait */

static void wait_cb(uv_signal_t *h, int signum) {
  sigw *w = h->data;
  (void)signum;
  if (w->b) {
    loom_block *b = w->b;
    lua_State *S = loom__wake_stack(w->rt, b->t, 1);
    w->b = NULL;
    if (S)
      lua_pushstring(S, w->name);
    loom__wake(w->rt, b, S ? 1 : 0, LOOM_WOKE_DONE);
  }
  sig_close(w, w->rt->L);
}

static void wait_cancel(loom_runtime *rt, loom_block *b, int why) {
  sigw *w = b->data;
  (void)why;
  w->b = NULL;
  sig_close(w, rt->L);
}

/* signal.wait(name [, s]) -> name | fail (ETIMEDOUT). The watcher exists
 * only while the call waits, and keeps the loop alive meanwhile. */
static int l_wait(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  const signame *s = check_signal(L, 1, 0);
  double timeout = loom__opt_timeout(L, 2);
  loom_block *b;
  sigw *w;
  loom__check_block(L, rt);
  if (!(w = sig_start(L, rt, s, wait_cb, 1)))
    return 3;
  b = loom__block_new(rt, L, s->name);
  b->data = w;
  b->cancel = wait_cancel;
  w->b = b;
  loom__block_timeout(rt, b, timeout);
  return loom__suspend(L, rt, b);
}

/* ------------------------------------------------------------ on */

static void on_cb(uv_signal_t *h, int signum) {
  sigw *w = h->data;
  loom_runtime *rt = w->rt;
  lua_State *R = rt->RL;
  char where[64];
  (void)signum;
  if (rt->closing || w->self_ref == LUA_NOREF || !lua_checkstack(R, 4))
    return;
  lua_rawgeti(R, LUA_REGISTRYINDEX, w->self_ref);
  lua_getiuservalue(R, -1, 1);
  lua_remove(R, -2);
  lua_pushstring(R, w->name);
  snprintf(where, sizeof where, "a signal handler (%s)", w->name);
  loom__call_reactor(rt, 1, where);
}

/* signal.on(name, fn) -> handler. fn(name) runs in reactor context at
 * each delivery. The handler is referenced (it keeps the process alive,
 * like a luv/node listener) until h:stop() or h:unref(). */
static int l_on(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  const signame *s = check_signal(L, 1, 0);
  sigw **box;
  sigw *w;
  luaL_checktype(L, 2, LUA_TFUNCTION);
  box = lua_newuserdatauv(L, sizeof *box, 1);
  *box = NULL;
  luaL_setmetatable(L, SIGNAL_MT);
  lua_pushvalue(L, 2);
  lua_setiuservalue(L, -2, 1);
  if (!(w = sig_start(L, rt, s, on_cb, 0)))
    return 3;
  *box = w;
  w->box = box;
  lua_pushvalue(L, -1);
  w->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return 1;
}

static sigw *to_handler(lua_State *L) { return *(sigw **)luaL_checkudata(L, 1, SIGNAL_MT); }

/* h:stop() -> true; a second stop is harmless. */
static int h_stop(lua_State *L) {
  sigw *w = to_handler(L);
  if (w)
    sig_close(w, L);
  lua_pushboolean(L, 1);
  return 1;
}

/* h:unref() -> h: the handler no longer keeps the process alive. */
static int h_unref(lua_State *L) {
  sigw *w = to_handler(L);
  if (w)
    uv_unref((uv_handle_t *)&w->h);
  lua_settop(L, 1);
  return 1;
}

/* h:ref() -> h: undoes unref(). */
static int h_ref(lua_State *L) {
  sigw *w = to_handler(L);
  if (w)
    uv_ref((uv_handle_t *)&w->h);
  lua_settop(L, 1);
  return 1;
}

static int h_active(lua_State *L) {
  lua_pushboolean(L, to_handler(L) != NULL);
  return 1;
}

static int h_tostring(lua_State *L) {
  sigw *w = to_handler(L);
  if (w)
    lua_pushfstring(L, "loom.signal_handler (%s): %p", w->name, (void *)w);
  else
    lua_pushfstring(L, "loom.signal_handler (stopped): %p", lua_touserdata(L, 1));
  return 1;
}

/* ------------------------------------------------------------ raise */

/* signal.raise(name) -> true | fail: sends the signal to this process. */
static int l_raise(lua_State *L) {
  const signame *s = check_signal(L, 1, 1);
  int err = uv_kill((int)uv_os_getpid(), s->signum);
  if (err < 0)
    return loom__fail_uv(L, err, s->name);
  lua_pushboolean(L, 1);
  return 1;
}

void loom__open_signal(lua_State *L, loom_runtime *rt) {
  static const luaL_Reg funcs[] = {
      {"wait", l_wait}, {"on", l_on}, {"raise", l_raise}, {NULL, NULL}};
  static const luaL_Reg methods[] = {
      {"stop", h_stop}, {"unref", h_unref}, {"ref", h_ref}, {"active", h_active}, {NULL, NULL}};
  luaL_newmetatable(L, SIGNAL_MT);
  lua_newtable(L);
  loom__setfuncs(L, rt, methods);
  lua_setfield(L, -2, "__index");
  /* Only a stopped handler can be collected (an active one is anchored);
   * __close stops it at the end of a `<close>` scope. */
  lua_pushcfunction(L, h_stop);
  lua_setfield(L, -2, "__close");
  lua_pushcfunction(L, h_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
  lua_newtable(L);
  loom__setfuncs(L, rt, funcs);
  lua_setfield(L, -2, "signal");
}
