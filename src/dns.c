/*
 * dns.c - loom.dns (placeholder until the module lands; see docs/design.md).
 */
#include "loom_int.h"

void loom__open_dns(lua_State *L, loom_runtime *rt) {
  (void)L;
  (void)rt;
}
