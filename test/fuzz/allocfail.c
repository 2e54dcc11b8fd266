/*
 * allocfail.c - the allocation-failure sweep (issue 7): for k = 1, 2, 3, ...
 * a scenario runs with its k-th allocation failing, until a k that the
 * scenario never reaches (it then ran to its end). Each k must end in
 * success or a "not enough memory" error (raised, reported or a fail
 * triple ENOMEM), never in a crash, a hang or a leak.
 *
 * Every allocation counts, whoever makes it:
 *   - Lua's: the state is the host's own (loom_options.L), made with
 *     lua_newstate over fail_lua_alloc;
 *   - loom's C side: the static library is linked with
 *     -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc (test/allocfail.sh);
 *   - libuv's, with ALLOCFAIL_UV=1: uv_replace_allocator (off by default:
 *     libuv aborts when growing its watcher array fails).
 * Each k runs in a forked child, so that a crash names its k and
 * LeakSanitizer (at the child's exit) names the leaks of that k alone.
 *
 *   allocfail SCENARIO [FIRST [LAST [STRIDE]]]   -> one line per odd k, then
 *   "SCENARIO: N allocations; K runs: S succeeded, F failed cleanly,
 *    X crashed, L leaked, O odd"
 * Scenarios: spawn channel deferred tcp fs new (new: loom_new itself).
 * Exit status 0 when no k crashed, leaked or hung.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <uv.h>

#include "loom.h"

/* ------------------------------------------------------------ counting */

static long alloc_count; /* allocations since arming */
static long fail_at;     /* the one to fail (1-based); 0: none */
static int armed;

static int trap;

static int should_fail(void) {
  if (!armed)
    return 0;
  if (++alloc_count != fail_at)
    return 0;
  if (trap) /* ALLOCFAIL_TRAP: stop in the debugger at the failing allocation */
    raise(SIGTRAP);
  return 1;
}

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t m);
void *__real_realloc(void *p, size_t n);

void *__wrap_malloc(size_t n) { return should_fail() ? NULL : __real_malloc(n); }
void *__wrap_calloc(size_t n, size_t m) { return should_fail() ? NULL : __real_calloc(n, m); }
void *__wrap_realloc(void *p, size_t n) {
  return (n > 0 && should_fail()) ? NULL : __real_realloc(p, n);
}

static void *uv_malloc_fn(size_t n) { return __wrap_malloc(n); }
static void *uv_calloc_fn(size_t n, size_t m) { return __wrap_calloc(n, m); }
static void *uv_realloc_fn(void *p, size_t n) { return __wrap_realloc(p, n); }

/* Lua's allocator: growing may fail, shrinking and freeing never do (Lua
 * relies on that). */
/* Lua answers a failed allocation with an emergency collection and one
 * retry of the same request: the retry fails too, or the failure would
 * almost never reach loom. */
static struct {
  void *p;
  size_t osize, nsize;
  int set;
} failed_lua;

static void *fail_lua_alloc(void *ud, void *p, size_t osize, size_t nsize) {
  (void)ud;
  if (nsize == 0) {
    free(p);
    return NULL;
  }
  if (p == NULL || nsize > osize) {
    if (failed_lua.set && failed_lua.p == p && failed_lua.osize == osize &&
        failed_lua.nsize == nsize) {
      failed_lua.set = 0; /* the emergency retry */
      return NULL;
    }
    failed_lua.set = 0;
    if (should_fail()) {
      failed_lua.p = p;
      failed_lua.osize = osize;
      failed_lua.nsize = nsize;
      failed_lua.set = 1;
      return NULL;
    }
  }
  return __real_realloc(p, nsize);
}

/* ------------------------------------------------------------ scenarios */

static const char *const SPAWN =
    "local loom = require 'loom'\n"
    "local ts = {}\n"
    "for i = 1, 40 do ts[i] = loom.spawn(function(x) loom.yield() return x * 2 end, i) end\n"
    "for i = 1, 40 do local ok, v = ts[i]:join(); assert(ok, v); assert(v == i * 2) end\n"
    "local g = loom.group()\n"
    "for i = 1, 10 do g:spawn(function() loom.sleep(0.001) end) end\n"
    "assert(g:wait())\n"
    "local t = loom.spawn(function() loom.sleep(10) end)\n"
    "loom.yield(); t:kill(); t:join()\n"
    "RESULT = 'done'\n";

static const char *const CHANNEL =
    "local loom = require 'loom'\n"
    "local a, b = loom.channel(), loom.channel(4)\n"
    "local t = loom.spawn(function()\n"
    "  for i = 1, 20 do a:send(i) end\n"
    "  for i = 1, 20 do b:send({i}) end\n"
    "  b:close()\n"
    "end)\n"
    "for i = 1, 20 do assert(a:receive(2) == i) end\n"
    "local n = 0\n"
    "for v in b:iter() do n = n + v[1] end\n"
    "assert(n == 210)\n"
    "local c = loom.channel()\n"
    "loom.spawn(function() c:send('x') end)\n"
    "local i, v = loom.select({{'receive', a}, {'receive', c}}, 1)\n"
    "assert(i == 2 and v == 'x')\n"
    "local ev, sem = loom.event(), loom.semaphore(1)\n"
    "loom.spawn(function() sem:acquire(); ev:set(); sem:release() end)\n"
    "assert(ev:wait(1)); assert(sem:acquire(1))\n"
    "assert(t:join(2))\n"
    "RESULT = 'done'\n";

static const char *const DEFERRED =
    "local loom = require 'loom'\n"
    "local d = loom.deferred()\n"
    "d:add_callback(function(v) return v + 1 end)\n"
    "d:add_errback(function(f) return 0 end)\n"
    "loom.call_later(0.001, function() d:callback(41) end)\n"
    "assert(loom.timeout(2, loom.block_on, d) == 42)\n"
    "local g = loom.gather({loom.succeed(1), loom.succeed(2)})\n"
    "assert(#loom.block_on(g) == 2)\n"
    "local w = loom.deferred_tasklet(function(x) loom.sleep(0.001) return x end)\n"
    "assert(loom.block_on(w(7)) == 7)\n"
    "local b = loom.blocking_tasklet(function(x) loom.yield() return x, x end)\n"
    "assert(select('#', b(1)) == 2)\n"
    "local f = loom.fail('boom'); f:add_errback(function() end)\n"
    "local t = loom.deferred(); t:add_timeout(0.001); t:add_errback(function() end)\n"
    "loom.sleep(0.005)\n"
    "RESULT = 'done'\n";

static const char *const TCP =
    "local loom = require 'loom'\n"
    "local srv <close> = assert(loom.tcp.listen('127.0.0.1', 0, { timeout = 2 }))\n"
    "local _, port = srv:sockname()\n"
    "local t = loom.spawn(function()\n"
    "  local c <close> = assert(srv:accept(2))\n"
    "  local data = assert(c:read_exactly(65536))\n"
    "  assert(c:write(data))\n"
    "  assert(c:read_line() == 'bye')\n"
    "end)\n"
    "local c <close> = assert(loom.tcp.connect('127.0.0.1', port, { timeout = 2 }))\n"
    "c:settimeout(2)\n"
    "assert(c:write(string.rep('z', 65536)))\n"
    "assert(#assert(c:read_exactly(65536)) == 65536)\n"
    "assert(c:write('bye\\n'))\n"
    "assert(c:read_all() == '')\n"
    "assert(t:join(2))\n"
    "RESULT = 'done'\n";

static const char *const FS =
    "local loom = require 'loom'\n"
    "local dir = assert(loom.fs.mkdtemp(os.getenv('TMPDIR') or '/tmp' .. '/allocfail-XXXXXX'))\n"
    "local p = dir .. '/f'\n"
    "assert(loom.fs.write_file(p, string.rep('l\\n', 1000)))\n"
    "assert(#assert(loom.fs.read_file(p)) == 2000)\n"
    "local f = assert(loom.fs.open(p, 'r+'))\n"
    "assert(f:read(10)); assert(f:write('x')); assert(f:seek('set', 0))\n"
    "local n = 0; for _ in f:lines() do n = n + 1 end\n"
    "assert(f:stat()); f:close()\n"
    "assert(loom.fs.stat(p)); assert(#assert(loom.fs.readdir(dir)) == 1)\n"
    "assert(loom.fs.unlink(p)); assert(loom.fs.rmdir(dir))\n"
    "RESULT = 'done'\n";

static const struct {
  const char *name, *code;
} scenarios[] = {{"spawn", SPAWN}, {"channel", CHANNEL}, {"deferred", DEFERRED},
                 {"tcp", TCP},     {"fs", FS},           {"new", NULL}};

/* ------------------------------------------------------------ one k */

enum { R_DONE = 0, R_NOMEM = 1, R_ODD = 2 };

static char odd_text[512];
static int odd;

static int is_memory_error(const char *msg) {
  return msg && (strstr(msg, "not enough memory") || strstr(msg, "ENOMEM") ||
                 strstr(msg, "out of memory") || strstr(msg, "memory") ||
                 /* consequences: a tasklet that died of it leaves its
                  * partners waiting (a deadlock, a timeout) or failing one
                  * of the scenario's asserts */
                 strstr(msg, "EDEADLK") || strstr(msg, "ETIMEDOUT") ||
                 strstr(msg, "assertion failed") || strstr(msg, "ECLOSED") ||
                 strstr(msg, "EOF") || strstr(msg, "ENOBUFS") || strstr(msg, "ECONNRESET") ||
                 strstr(msg, "EPIPE") ||
                 strstr(msg, "Unhandled error in Deferred"));
}

static void note_odd(const char *what, const char *msg) {
  if (!odd)
    snprintf(odd_text, sizeof odd_text, "%s: %s", what, msg ? msg : "(no message)");
  odd = 1;
}

static void on_report(void *ud, loom_runtime *rt, const char *message) {
  (void)ud;
  (void)rt;
  if (!is_memory_error(message))
    note_odd("reported", message);
}

/* Runs the scenario with allocation k failing (0: none). Returns R_*. */
static int run_one(const char *code, long k) {
  lua_State *L;
  loom_options o;
  loom_runtime *rt;
  int rc, result = R_NOMEM, done = 0;
  /* libuv's own allocations fail too only with ALLOCFAIL_UV=1: libuv
   * aborts when it cannot grow its watcher array (uv__io_start), which is
   * libuv's choice, not a loom bug, and would hide the rest. */
  if (getenv("ALLOCFAIL_UV"))
    uv_replace_allocator(uv_malloc_fn, uv_realloc_fn, uv_calloc_fn, free);
  L = lua_newstate(fail_lua_alloc, NULL);
  if (!L)
    return R_ODD;
  luaL_openlibs(L);
  loom_options_init(&o);
  o.L = L;
  alloc_count = 0;
  fail_at = k;
  if (!code)
    armed = 1; /* scenario "new": loom_new itself */
  rt = loom_new(&o);
  if (!rt) {
    armed = 0;
    lua_close(L);
    return fail_at > 0 && alloc_count >= fail_at ? R_NOMEM : R_ODD;
  }
  if (!code) {
    armed = 0;
    rc = loom_spawn_string(rt, "RESULT = 'done'", "=new", 0);
    if (rc > 0)
      loom_run(rt);
  } else {
    loom_set_error_handler(rt, on_report, NULL);
    armed = 1;
    rc = (int)loom_spawn_string(rt, code, "=scenario", 0);
    if (rc < 0) {
      const char *msg = lua_tostring(L, -1);
      if (!is_memory_error(msg))
        note_odd("spawn", msg);
      lua_settop(L, 0);
    } else {
      rc = loom_run(rt);
      if (rc == LOOM_ERROR) {
        const char *msg = lua_tostring(L, -1);
        if (!is_memory_error(msg))
          note_odd("loom_run", msg);
        lua_settop(L, 0);
      } else if (rc != LOOM_OK && rc != LOOM_DEADLOCK) /* a deadlock: a partner died */
        note_odd("loom_run", "stopped/einval");
    }
  }
  armed = 0;
  lua_getglobal(L, "RESULT");
  done = lua_isstring(L, -1) && strcmp(lua_tostring(L, -1), "done") == 0;
  lua_pop(L, 1);
  rc = loom_close(rt);
  if (rc != LOOM_OK) {
    char msg[64];
    snprintf(msg, sizeof msg, "returned %d instead of LOOM_OK", rc);
    note_odd("loom_close", msg);
  }
  lua_close(L);
  if (done)
    result = R_DONE;
  else if (fail_at == 0 || alloc_count < fail_at)
    /* nothing failed, yet the scenario did not finish */
    note_odd("scenario", "ended early without an allocation failure");
  if (odd)
    result = R_ODD;
  return result;
}

/* ------------------------------------------------------------ the sweep */

/* Runs k in a forked child: returns its wait status; *count gets the
 * allocations it made, text its odd outcome. */
static int fork_run(const char *code, long k, long *count, int *leaked, char *text,
                    size_t cap) {
  char errpath[128];
  int st, fds[2];
  pid_t pid;
  ssize_t n, got = 0;
  if (pipe(fds) != 0)
    exit(2);
  fflush(stdout);
  snprintf(errpath, sizeof errpath, "/tmp/allocfail-%d-%ld.err", (int)getpid(), k);
  pid = fork();
  if (pid == 0) {
    int r;
    char out[700];
    close(fds[0]);
    /* the child's sanitizer reports go to a file the parent reads */
    if (!freopen(errpath, "w", stderr))
      exit(2);
    alarm(20); /* a hang dies by SIGALRM */
    odd = 0;
    r = run_one(code, k);
    snprintf(out, sizeof out, "%ld|%s", alloc_count, r == R_ODD ? odd_text : "");
    n = write(fds[1], out, strlen(out));
    (void)n;
    close(fds[1]);
    exit(r);
  }
  close(fds[1]);
  while (got < (ssize_t)cap - 1 && (n = read(fds[0], text + got, cap - 1 - (size_t)got)) > 0)
    got += n;
  text[got] = 0;
  close(fds[0]);
  waitpid(pid, &st, 0);
  *count = atol(text);
  {
    FILE *ef = fopen(errpath, "r");
    char line[512];
    *leaked = 0;
    if (ef) {
      while (fgets(line, sizeof line, ef)) {
        if (strstr(line, "ERROR: LeakSanitizer"))
          *leaked = 1;
        fputs(line, stderr);
      }
      fclose(ef);
    }
    unlink(errpath);
  }
  {
    char *bar = strchr(text, '|');
    memmove(text, bar ? bar + 1 : text + got, strlen(bar ? bar + 1 : text + got) + 1);
  }
  return st;
}

int main(int argc, char **argv) {
  const char *name = argc > 1 ? argv[1] : "spawn";
  const char *code = NULL;
  long first = argc > 2 ? atol(argv[2]) : 1, last = argc > 3 ? atol(argv[3]) : -1;
  long stride = argc > 4 ? atol(argv[4]) : 0, total, k, runs = 0, count;
  long nsucc = 0, nfail = 0, ncrash = 0, nleak = 0, nodd = 0, nhang = 0;
  size_t i;
  int found = 0, st, leaked;
  char buf[700];
  for (i = 0; i < sizeof scenarios / sizeof *scenarios; i++)
    if (strcmp(scenarios[i].name, name) == 0) {
      code = scenarios[i].code;
      found = 1;
    }
  if (!found) {
    fprintf(stderr, "allocfail: unknown scenario %s\n", name);
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  if (getenv("ALLOCFAIL_NOFORK")) {
    trap = getenv("ALLOCFAIL_TRAP") != NULL;
    /* one k in this process, for a debugger: allocfail SCENARIO K */
    int r = run_one(code, first);
    printf("%s k=%ld: result %d (%ld allocations) %s\n", name, first, r, alloc_count,
           odd ? odd_text : "");
    return r;
  }
  /* How many allocations the scenario makes when none fails. */
  st = fork_run(code, 0, &total, &leaked, buf, sizeof buf);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != R_DONE) {
    printf("%s: the scenario fails without any allocation failure (status %d): %s\n", name, st,
           buf);
    return 1;
  }
  if (last < 0 || last > total + 1)
    last = total + 1;
  if (stride <= 0)
    stride = total > 3000 ? total / 3000 + 1 : 1;
  for (k = first; k <= last; k += stride) {
    st = fork_run(code, k, &count, &leaked, buf, sizeof buf);
    runs++;
    if (leaked) {
      nleak++;
      printf("%s k=%ld: LEAK (the LeakSanitizer report is on stderr)\n", name, k);
    } else if (WIFSIGNALED(st)) {
      if (WTERMSIG(st) == SIGALRM) {
        nhang++;
        printf("%s k=%ld: HANG (20 s)\n", name, k);
      } else {
        ncrash++;
        printf("%s k=%ld: CRASH (signal %d)\n", name, k, WTERMSIG(st));
      }
    } else if (WEXITSTATUS(st) == R_DONE) {
      nsucc++;
    } else if (WEXITSTATUS(st) == R_NOMEM) {
      nfail++;
    } else if (WEXITSTATUS(st) == R_ODD) {
      nodd++;
      printf("%s k=%ld: odd: %s\n", name, k, buf);
    } else {
      ncrash++;
      printf("%s k=%ld: CRASH (exit %d; the sanitizer report is on stderr)\n", name, k,
             WEXITSTATUS(st));
    }
    fflush(stdout);
  }
  printf("%s: %ld allocations; %ld runs (k = %ld..%ld step %ld): %ld succeeded, %ld failed "
         "cleanly, %ld crashed, %ld leaked, %ld hung, %ld odd\n",
         name, total, runs, first, last, stride, nsucc, nfail, ncrash, nleak, nhang, nodd);
  return (ncrash || nleak || nhang) ? 1 : 0;
}
