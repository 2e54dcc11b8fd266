/*
 * fs.c - loom.fs (placeholder until the module lands; see docs/design.md).
 */
#include "loom_int.h"

void loom__open_fs(lua_State *L, loom_runtime *rt) {
  (void)L;
  (void)rt;
}
