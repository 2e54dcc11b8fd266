/*
 * main.c - the `loom` command: a drop-in for lua5.4 whose script runs as
 * the main tasklet, so it may block, while the scheduler interleaves the
 * tasklets it spawns. It exits when no work is left.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lualib.h>

#include "loom_int.h"

static const char *progname = "loom";

static void print_usage(FILE *f) {
  fprintf(f,
          "usage: %s [options] [script [args]]\n"
          "Runs a Lua 5.4 script as the main tasklet of a loom runtime.\n"
          "Options (as lua5.4):\n"
          "  -e stat   execute string 'stat'\n"
          "  -i        enter interactive mode after executing 'script'\n"
          "  -l mod    require library 'mod' into global 'mod'\n"
          "  -l g=mod  require library 'mod' into global 'g'\n"
          "  -v        show version information\n"
          "  -E        ignore environment variables (LUA_INIT, LUA_PATH, LUA_CPATH)\n"
          "  -W        turn warnings on\n"
          "  --        stop handling options\n"
          "  -         execute stdin and stop handling options\n"
          "loom options:\n"
          "  --slice S      preempt a tasklet that runs S seconds without waiting\n"
          "                 (default 0 = off; e.g. --slice 0.01)\n"
          "  --cpu-limit S  kill a tasklet that runs S seconds without waiting (default off)\n"
          "  --version      print the loom and Lua versions\n"
          "  --help         print this help\n"
          "Exit status: 0, or 1 after an error in the script, an error in a tasklet\n"
          "that nobody joined, or a deadlock. SIGINT interrupts the main tasklet (a\n"
          "second SIGINT exits at once); SIGQUIT prints loom.dump() to stderr; SIGTERM\n"
          "stops the runtime, closing everything, and exits 1.\n",
          progname);
}

/* ------------------------------------------------------------ arguments */

enum { HAS_ERROR = 1, HAS_I = 2, HAS_V = 4, HAS_E = 8, HAS_UPPER_E = 16, HAS_W = 32 };

typedef struct cli {
  int argc;
  char **argv;
  int script; /* index of the script in argv, or argc */
  int flags;
  double slice, cpu_limit;
  int main_failed;
  loom_runtime *rt;
} cli;

static int parse_seconds(const char *s, double *out) {
  char *end;
  double v;
  if (!s)
    return 0;
  v = strtod(s, &end);
  if (end == s || *end || !(v >= 0))
    return 0;
  *out = v;
  return 1;
}

/* Mirrors lua.c's collectargs; returns 0 on a bad option. */
static int collect_args(cli *c) {
  char **argv = c->argv;
  int i;
  for (i = 1; argv[i]; i++) {
    const char *a = argv[i];
    if (a[0] != '-') {
      c->script = i;
      return 1;
    }
    if (strcmp(a, "--") == 0) {
      c->script = argv[i + 1] ? i + 1 : c->argc;
      return 1;
    }
    if (strcmp(a, "-") == 0) {
      c->script = i;
      return 1;
    }
    if (strcmp(a, "--help") == 0) {
      print_usage(stdout);
      exit(EXIT_SUCCESS);
    }
    if (strcmp(a, "--version") == 0) {
      printf("loom %s (%s, libuv %s)\n", LOOM_VERSION, LUA_RELEASE, uv_version_string());
      exit(EXIT_SUCCESS);
    }
    if (strcmp(a, "--slice") == 0 || strcmp(a, "--cpu-limit") == 0) {
      double *dst = a[2] == 's' ? &c->slice : &c->cpu_limit;
      if (!parse_seconds(argv[++i], dst)) {
        fprintf(stderr, "%s: '%s' needs a number of seconds >= 0\n", progname, a);
        return 0;
      }
      continue;
    }
    switch (a[1]) {
      case 'E':
        if (a[2])
          goto bad;
        c->flags |= HAS_UPPER_E;
        break;
      case 'W':
        if (a[2])
          goto bad;
        c->flags |= HAS_W;
        break;
      case 'i':
        if (a[2])
          goto bad;
        c->flags |= HAS_I | HAS_V;
        break;
      case 'v':
        if (a[2])
          goto bad;
        c->flags |= HAS_V;
        break;
      case 'e':
        c->flags |= HAS_E;
        /* fallthrough */
      case 'l':
        if (a[2] == '\0') {
          i++;
          if (!argv[i]) {
            fprintf(stderr, "%s: '%s' needs argument\n", progname, a);
            return 0;
          }
        }
        break;
      default:
      bad:
        fprintf(stderr, "%s: unrecognized option '%s'\n", progname, a);
        return 0;
    }
  }
  c->script = c->argc;
  return 1;
}

/* arg = { [-n..-1] = interpreter and options, [0] = script, [1..] = args } */
static void create_arg_table(lua_State *L, cli *c) {
  int i, narg = c->argc - (c->script + 1);
  int base = c->script == c->argc ? c->argc - 1 : c->script;
  if (c->script == c->argc)
    narg = 0;
  lua_createtable(L, narg, base + 1);
  for (i = 0; i < c->argc; i++) {
    lua_pushstring(L, c->argv[i]);
    lua_rawseti(L, -2, i - base);
  }
  lua_setglobal(L, "arg");
}

/* ------------------------------------------------------------ the main tasklet */

static int msghandler(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
      return 1;
    msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}

/* Runs a chunk (on top) with its arguments protected by msghandler; raises
 * the message with traceback on error. All of this is inside the main
 * tasklet, and lua_pcallk keeps it yieldable. */
static int docall_k(lua_State *L, int status, lua_KContext ctx) {
  (void)ctx;
  if (status != LUA_OK && status != LUA_YIELD)
    return lua_error(L);
  return 0;
}

static int docall(lua_State *L, int narg) {
  int base = lua_gettop(L) - narg;
  int status;
  lua_pushcfunction(L, msghandler);
  lua_insert(L, base);
  status = lua_pcallk(L, narg, 0, base, 0, docall_k);
  return docall_k(L, status, 0);
}

static void load_or_raise(lua_State *L, int status) {
  if (status != LUA_OK)
    lua_error(L);
}

static int pushargs(lua_State *L) {
  int i, n;
  if (lua_getglobal(L, "arg") != LUA_TTABLE)
    luaL_error(L, "'arg' is not a table");
  n = (int)luaL_len(L, -1);
  luaL_checkstack(L, n + 3, "too many arguments to script");
  for (i = 1; i <= n; i++)
    lua_rawgeti(L, -i, i);
  lua_remove(L, -i);
  return n;
}

static void dolibrary(lua_State *L, const char *spec) {
  const char *eq = strchr(spec, '=');
  const char *mod = eq ? eq + 1 : spec;
  if (eq)
    lua_pushlstring(L, spec, (size_t)(eq - spec)); /* the global's name */
  else
    lua_pushstring(L, spec);
  lua_getglobal(L, "require");
  lua_pushstring(L, mod);
  lua_call(L, 1, 1);
  lua_setglobal(L, lua_tostring(L, -2));
  lua_pop(L, 1);
}

/* The interactive loop, in Lua so that each line runs inside the main
 * tasklet (it may block) and reading a line waits on loom.stdin without
 * freezing the other tasklets. */
static const char repl_source[] =
    "local loom = require 'loom'\n"
    "local pack, unpack = table.pack, table.unpack\n"
    "while true do\n"
    "  loom.stdout:write('> ')\n"
    "  local line = loom.stdin:read_line()\n"
    "  if not line then loom.stdout:write('\\n') break end\n"
    "  local f, err = load('return ' .. line, '=stdin')\n"
    "  if not f then f, err = load(line, '=stdin') end\n"
    "  if not f then\n"
    "    io.stderr:write(err, '\\n')\n"
    "  else\n"
    "    local r = pack(xpcall(f, debug.traceback))\n"
    "    if not r[1] then io.stderr:write(tostring(r[2]), '\\n')\n"
    "    elseif r.n > 1 then print(unpack(r, 2, r.n)) end\n"
    "  end\n"
    "end\n";

static void repl(lua_State *L) {
  load_or_raise(L, luaL_loadbuffer(L, repl_source, sizeof repl_source - 1, "=repl"));
  docall(L, 0);
}

/* The body of the main tasklet: LUA_INIT, -e/-l in order, the script, -i. */
static int pmain(lua_State *L) {
  cli *c = lua_touserdata(L, lua_upvalueindex(1));
  char **argv = c->argv;
  int i;
  if (c->flags & HAS_W)
    lua_warning(L, "@on", 0);
  if (!(c->flags & HAS_UPPER_E)) {
    const char *init = getenv("LUA_INIT_5_4");
    const char *name = "=LUA_INIT_5_4";
    if (!init) {
      init = getenv("LUA_INIT");
      name = "=LUA_INIT";
    }
    if (init) {
      if (init[0] == '@')
        load_or_raise(L, luaL_loadfile(L, init + 1));
      else
        load_or_raise(L, luaL_loadbuffer(L, init, strlen(init), name));
      docall(L, 0);
    }
  }
  for (i = 1; i < c->script; i++) {
    const char *a = argv[i];
    if (a[0] != '-')
      break;
    if (a[1] == 'e' || a[1] == 'l') {
      const char *extra = a[2] ? a + 2 : argv[++i];
      if (a[1] == 'e') {
        load_or_raise(L, luaL_loadbuffer(L, extra, strlen(extra), "=(command line)"));
        docall(L, 0);
      } else
        dolibrary(L, extra);
    } else if (strcmp(a, "--slice") == 0 || strcmp(a, "--cpu-limit") == 0)
      i++;
    else if (strcmp(a, "--") == 0)
      break;
  }
  if (c->script < c->argc) {
    const char *fname = argv[c->script];
    int n;
    if (strcmp(fname, "-") == 0 && strcmp(argv[c->script - 1], "--") != 0)
      fname = NULL;
    load_or_raise(L, luaL_loadfile(L, fname));
    n = pushargs(L);
    docall(L, n);
  }
  if (c->flags & HAS_I)
    repl(L);
  else if (c->script == c->argc && !(c->flags & (HAS_E | HAS_V))) {
    if (isatty(0)) {
      printf("loom %s (%s)\n", LOOM_VERSION, LUA_RELEASE);
      repl(L);
    } else {
      load_or_raise(L, luaL_loadfile(L, NULL));
      docall(L, 0);
    }
  }
  return 0;
}

/* on_done of the main tasklet: the CLI reports its error like lua5.4. */
static int main_done(lua_State *L) {
  cli *c = lua_touserdata(L, lua_upvalueindex(1));
  if (!lua_toboolean(L, 1)) {
    const char *msg;
    if (lua_type(L, 2) == LUA_TTABLE && loom__rawgetfield(L, 2, "traceback") == LUA_TSTRING) {
      loom__rawgetfield(L, 2, "code");
      loom__rawgetfield(L, 2, "message");
      fprintf(stderr, "%s: %s: %s\n%s\n", progname, luaL_optstring(L, -2, "ERROR"),
              luaL_optstring(L, -1, "?"), lua_tostring(L, -3));
    } else {
      loom__push_error_text(L, 2);
      msg = lua_tostring(L, -1);
      fprintf(stderr, "%s: %s\n", progname, msg ? msg : "(error object is not a string)");
    }
    fflush(stderr);
    c->main_failed = 1;
    /* Like lua5.4, an error in the script ends the program: stop the
     * runtime, which kills and unwinds the other tasklets and their
     * children, instead of waiting for them. */
    c->rt->stop = 1;
  }
  return 0;
}

/* ------------------------------------------------------------ signals */

static cli *the_cli;
static volatile sig_atomic_t sigint_count, sigint_delivered, sigquit_pending, sigterm_seen;
static void print_dump(lua_State *L);
static uv_async_t sigint_async;


static void sigint_hook(lua_State *L, lua_Debug *ar) {
  loom_runtime *rt = the_cli->rt;
  loom__preempt_setup(rt, L);
  if (rt->current && rt->current->id == 1 && rt->current->L == L) {
    luaL_error(L, "interrupted!");
    return;
  }
  if (ar->event == LUA_HOOKCOUNT && rt->current && rt->current->L == L && lua_isyieldable(L))
    lua_yield(L, 0);
}

static void on_sigint(int sig) {
  loom_runtime *rt = the_cli->rt;
  (void)sig;
  if (++sigint_count >= 2)
    _exit(130);
  if (rt->current && rt->current->L)
    lua_sethook(rt->current->L, sigint_hook, LUA_MASKCOUNT, 1);
  uv_async_send(&sigint_async);
}

/* On the loop: deliver the interrupt to the main tasklet if it waits. */
static void sigint_deliver(uv_async_t *a) {
  loom_runtime *rt = the_cli->rt;
  lua_State *L = rt->RL;
  (void)a;
  if (sigquit_pending)
    print_dump(L);
  if (sigterm_seen)
    the_cli->main_failed = 1;
  if (sigint_count <= sigint_delivered)
    return;
  sigint_delivered = sigint_count;
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->live_ref);
  if (lua_rawgeti(L, -1, 1) == LUA_TUSERDATA) {
    loom_tasklet *t = lua_touserdata(L, -1);
    if (t->id == 1 && t->status != LOOM_DEAD && t->status != LOOM_RUNNING) {
      lua_pushliteral(L, "interrupted!");
      loom__raise_in(rt, L, t);
      lua_settop(L, 0);
      return;
    }
  }
  lua_settop(L, 0);
  /* No main tasklet left to interrupt: stop everything. */
  rt->stop = 1;
  the_cli->main_failed = 1;
}


/* Prints loom.dump() (on whatever thread runs Lua now). */
static void print_dump(lua_State *L) {
  int top = lua_gettop(L);
  sigquit_pending = 0;
  lua_getglobal(L, "loom");
  if (lua_type(L, -1) == LUA_TTABLE && lua_getfield(L, -1, "dump") == LUA_TFUNCTION &&
      lua_pcall(L, 0, 1, 0) == LUA_OK)
    fprintf(stderr, "%s\n", lua_tostring(L, -1));
  lua_settop(L, top);
}

/* A spinning tasklet sees SIGQUIT/SIGTERM here (set from the handler). */
static void signal_hook(lua_State *L, lua_Debug *ar) {
  loom_runtime *rt = the_cli->rt;
  loom__preempt_setup(rt, L);
  if (sigquit_pending)
    print_dump(L);
  if (sigterm_seen && ar->event == LUA_HOOKCOUNT && rt->current && rt->current->L == L &&
      lua_isyieldable(L))
    lua_yield(L, 0);
}

static void on_sigquit(int sig) {
  loom_runtime *rt = the_cli->rt;
  (void)sig;
  sigquit_pending = 1;
  if (rt->current && rt->current->L)
    lua_sethook(rt->current->L, signal_hook, LUA_MASKCOUNT, 1);
  uv_async_send(&sigint_async);
}

static void on_sigterm(int sig) {
  loom_runtime *rt = the_cli->rt;
  (void)sig;
  sigterm_seen = 1;
  rt->stop = 1;
  if (rt->current && rt->current->L)
    lua_sethook(rt->current->L, signal_hook, LUA_MASKCOUNT, 1);
  uv_async_send(&sigint_async);
}

static void close_cli_handle(loom_runtime *rt, loom_link *l) {
  (void)rt;
  (void)l;
  uv_close((uv_handle_t *)&sigint_async, NULL);
}

static loom_link cli_link = {NULL, NULL, close_cli_handle};

static void setup_signals(loom_runtime *rt) {
  struct sigaction sa;
  uv_async_init(rt->loop, &sigint_async, sigint_deliver);
  uv_unref((uv_handle_t *)&sigint_async);
  loom__link(rt, &cli_link);
  memset(&sa, 0, sizeof sa);
  sigemptyset(&sa.sa_mask);
  sa.sa_handler = on_sigint;
  sigaction(SIGINT, &sa, NULL);
  sa.sa_handler = on_sigquit;
  sigaction(SIGQUIT, &sa, NULL);
  sa.sa_handler = on_sigterm;
  sigaction(SIGTERM, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);
}

/* ------------------------------------------------------------ main */

int main(int argc, char **argv) {
  cli c;
  loom_options o;
  lua_State *L;
  int rc, status = EXIT_SUCCESS;
  /* libuv must not get fds 0-2 for its own descriptors: a closed standard
   * stream is reopened on /dev/null. */
  for (int fd = 0; fd <= 2; fd++)
    if (fcntl(fd, F_GETFD) < 0 && errno == EBADF)
      if (open("/dev/null", fd == 0 ? O_RDONLY : O_WRONLY) < 0)
        return EXIT_FAILURE;
  memset(&c, 0, sizeof c);
  c.argc = argc;
  c.argv = argv;
  if (argv[0] && argv[0][0])
    progname = argv[0];
  if (!collect_args(&c)) {
    print_usage(stderr);
    return EXIT_FAILURE;
  }
  if (c.flags & HAS_V)
    printf("loom %s (%s)\n", LOOM_VERSION, LUA_COPYRIGHT);
  if (c.flags & HAS_UPPER_E)
    setenv("LUA_NOENV", "1", 1);
  loom_options_init(&o);
  o.slice = c.slice;
  o.cpu_limit = c.cpu_limit;
  c.rt = loom_new(&o);
  if (!c.rt) {
    fprintf(stderr, "%s: cannot create the runtime\n", progname);
    return EXIT_FAILURE;
  }
  the_cli = &c;
  L = loom_state(c.rt);
  if (c.flags & HAS_UPPER_E) {
    /* lua.c's -E: the default paths, not LUA_PATH / LUA_CPATH. */
    lua_getglobal(L, "package");
    lua_pushliteral(L, LUA_PATH_DEFAULT);
    lua_setfield(L, -2, "path");
    lua_pushliteral(L, LUA_CPATH_DEFAULT);
    lua_setfield(L, -2, "cpath");
    lua_pop(L, 1);
  }
  create_arg_table(L, &c);
  setup_signals(c.rt);
  /* The main tasklet: pmain, with main_done taking its end. */
  lua_getglobal(L, "loom");
  lua_getfield(L, -1, "spawn_with");
  lua_pushlightuserdata(L, &c);
  lua_pushcclosure(L, main_done, 1);
  lua_pushlightuserdata(L, &c);
  lua_pushcclosure(L, pmain, 1);
  if (lua_pcall(L, 2, 1, 0) != LUA_OK) {
    fprintf(stderr, "%s: %s\n", progname, lua_tostring(L, -1));
    loom_close(c.rt);
    return EXIT_FAILURE;
  }
  lua_pushliteral(L, "main");
  lua_setfield(L, -2, "name");
  lua_settop(L, 0);
  rc = loom_run(c.rt);
  if (rc == LOOM_ERROR) {
    fprintf(stderr, "%s: %s\n", progname, lua_tostring(L, -1));
    status = EXIT_FAILURE;
  } else if (rc == LOOM_DEADLOCK || rc == LOOM_STOPPED)
    status = rc == LOOM_DEADLOCK || c.main_failed ? EXIT_FAILURE : EXIT_SUCCESS;
  if (c.main_failed || sigterm_seen || loom_error_count(c.rt) > 0)
    status = EXIT_FAILURE;
  loom__run_shutdown(c.rt);
  if (loom_error_count(c.rt) > 0)
    status = EXIT_FAILURE;
  loom_close(c.rt);
  return status;
}
