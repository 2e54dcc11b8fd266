/*
 * harness.h - the little test harness of loom's C tests: TEST(name) cases
 * registered at load time, CHECK that fails the case and returns, and the
 * helpers every test shares (a runtime with an error collector, running a
 * chunk, proving a loop closes with nothing left open).
 *
 * A test program runs the case named in argv[1], or every case. CTest
 * registers each TEST(name) line as its own test (test/CMakeLists.txt).
 */
#ifndef LOOM_TEST_HARNESS_H
#define LOOM_TEST_HARNESS_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>
#include <loom.h>

/* Time margins of the timing checks grow under a sanitizer. */
#if defined(__SANITIZE_THREAD__)
#define SLOWDOWN 10
#elif defined(__SANITIZE_ADDRESS__)
#define SLOWDOWN 3
#else
#define SLOWDOWN 1
#endif

typedef void (*harness_fn)(void);

static struct {
  const char *name;
  harness_fn fn;
} harness_cases[256];
static int harness_ncases, harness_failed;

static inline void harness_register(const char *name, harness_fn fn) {
  if (harness_ncases < 256) {
    harness_cases[harness_ncases].name = name;
    harness_cases[harness_ncases].fn = fn;
    harness_ncases++;
  }
}

#define TEST(name)                                                                                 \
  static void test_##name(void);                                                                   \
  __attribute__((constructor)) static void register_##name(void) {                                 \
    harness_register(#name, test_##name);                                                          \
  }                                                                                                \
  static void test_##name(void)

static inline void harness_fail(const char *file, int line, const char *fmt, ...) {
  va_list ap;
  fprintf(stderr, "%s:%d: ", file, line);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  harness_failed = 1;
}

/* Fails the case and leaves the test function. */
#define CHECK(c)                                                                                   \
  do {                                                                                             \
    if (!(c)) {                                                                                    \
      harness_fail(__FILE__, __LINE__, "CHECK failed: %s", #c);                                    \
      return;                                                                                      \
    }                                                                                              \
  } while (0)

/* Same, with a message (printf format). */
#define CHECKF(c, ...)                                                                             \
  do {                                                                                             \
    if (!(c)) {                                                                                    \
      harness_fail(__FILE__, __LINE__, "CHECK failed: %s", #c);                                    \
      harness_fail(__FILE__, __LINE__, __VA_ARGS__);                                               \
      return;                                                                                      \
    }                                                                                              \
  } while (0)

static inline int harness_main(int argc, char **argv) {
  int i, ran = 0, bad = 0;
  setvbuf(stdout, NULL, _IONBF, 0);
  for (i = 0; i < harness_ncases; i++) {
    if (argc > 1 && strcmp(argv[1], harness_cases[i].name) != 0)
      continue;
    harness_failed = 0;
    harness_cases[i].fn();
    ran++;
    printf("%s %d - %s\n", harness_failed ? "not ok" : "ok", ran, harness_cases[i].name);
    bad += harness_failed;
  }
  if (ran == 0) {
    fprintf(stderr, "no test named %s\n", argc > 1 ? argv[1] : "(any)");
    return 2;
  }
  return bad ? 1 : 0;
}

#define HARNESS_MAIN                                                                               \
  int main(int argc, char **argv) { return harness_main(argc, argv); }

/* ------------------------------------------------------------ helpers */

/* Collects what the runtime reports instead of printing it. */
typedef struct errors {
  int n;
  char last[8192];
} errors;

static inline void collect_error(void *ud, loom_runtime *rt, const char *message) {
  errors *e = ud;
  (void)rt;
  e->n++;
  snprintf(e->last, sizeof e->last, "%s", message);
}

/* A runtime with the options, reporting into e (may be NULL). */
static inline loom_runtime *new_runtime(const loom_options *o, errors *e) {
  loom_runtime *rt = loom_new(o);
  if (rt && e) {
    memset(e, 0, sizeof *e);
    loom_set_error_handler(rt, collect_error, e);
  }
  return rt;
}

/* Spawns code as a tasklet; returns its id, or prints the load error. */
static inline long long spawn_code(loom_runtime *rt, const char *code) {
  long long id = loom_spawn_string(rt, code, "=test", 0);
  if (id == LOOM_ERROR) {
    fprintf(stderr, "load error: %s\n", lua_tostring(loom_state(rt), -1));
    lua_pop(loom_state(rt), 1);
  }
  return id;
}

/* Runs a plain chunk on the main state (no tasklet). LUA_OK or the status;
 * the error is printed. */
static inline int run_chunk(loom_runtime *rt, const char *code) {
  lua_State *L = loom_state(rt);
  int rc = luaL_loadbuffer(L, code, strlen(code), "=chunk");
  if (rc == LUA_OK)
    rc = lua_pcall(L, 0, 0, 0);
  if (rc != LUA_OK) {
    fprintf(stderr, "chunk error: %s\n", lua_tostring(L, -1));
    lua_pop(L, 1);
  }
  return rc;
}

static inline lua_Integer global_int(loom_runtime *rt, const char *name) {
  lua_State *L = loom_state(rt);
  lua_Integer v;
  lua_getglobal(L, name);
  v = lua_tointeger(L, -1);
  lua_pop(L, 1);
  return v;
}

/* A copy of a global string, "" when not a string. */
static inline const char *global_str(loom_runtime *rt, const char *name) {
  static char buf[4096];
  lua_State *L = loom_state(rt);
  lua_getglobal(L, name);
  snprintf(buf, sizeof buf, "%s", lua_isstring(L, -1) ? lua_tostring(L, -1) : "");
  lua_pop(L, 1);
  return buf;
}

static inline double now_s(void) { return (double)uv_hrtime() / 1e9; }

/* CPU seconds used by the calling thread: timing checks of a step use it,
 * so that a loaded machine (time given to other processes) does not fail
 * them; wall-clock figures are the benchmark's business. */
static inline double cpu_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Runs the loop until nothing is left and closes it: 0 when libuv agrees
 * that nothing was left open. */
static inline int close_loop(uv_loop_t *loop) {
  uv_run(loop, UV_RUN_NOWAIT);
  return uv_loop_close(loop);
}

#endif
