/*
 * io.c - opens loom's I/O modules into loom.core. Each module lives in the
 * file named after it and adds its table (core.tcp, core.fs, ...) to the
 * module table on top of the stack.
 */
#include "loom_int.h"

void loom__open_io(lua_State *L, loom_runtime *rt) {
  loom__open_tcp(L, rt);
  loom__open_udp(L, rt);
  loom__open_dns(L, rt);
  loom__open_fs(L, rt);
  loom__open_process(L, rt);
  loom__open_signal(L, rt);
  loom__open_stdio(L, rt);
}
