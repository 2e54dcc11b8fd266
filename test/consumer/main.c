/*
 * consumer - the smallest C host, built by test/packaging.sh against an
 * installed loom (once through pkg-config, once through find_package) to
 * prove the installed header, libraries and link flags are complete.
 */
#include <stdint.h>
#include <stdio.h>

#include <loom.h>

int main(void) {
  loom_runtime *rt = loom_new(NULL);
  if (!rt) {
    fprintf(stderr, "consumer: loom_new failed\n");
    return 1;
  }
  lua_State *L = loom_state(rt);
  /* The host calls the Lua and libuv APIs itself, as real hosts do; this
   * proves the installed link flags carry both. */
  uint64_t start = uv_hrtime();
  long long id = loom_spawn_string(rt,
                                   "local loom = require 'loom'\n"
                                   "loom.sleep(0.01)\n"
                                   "consumer_result = 'slept'\n",
                                   "=consumer", 0);
  if (id <= 0) {
    fprintf(stderr, "consumer: spawn failed: %s\n", lua_tostring(L, -1));
    loom_close(rt);
    return 1;
  }
  int rc = loom_run(rt);
  double elapsed = (double)(uv_hrtime() - start) / 1e9;
  lua_getglobal(L, "consumer_result");
  const char *result = lua_tostring(L, -1);
  int ok = rc == LOOM_OK && result && result[0] == 's' && elapsed >= 0.009;
  printf("consumer: loom %s, run=%d, result=%s, %.3f s\n", LOOM_VERSION, rc,
         result ? result : "(nil)", elapsed);
  lua_pop(L, 1);
  loom_close(rt);
  return ok ? 0 : 1;
}
