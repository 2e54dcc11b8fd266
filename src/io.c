/*
 * io.c - opens loom's I/O modules into loom.core: each module lives in the
 * file named after it (tcp.c, udp.c, dns.c, fs.c, process.c, signal.c,
 * stdio.c) and adds its table here.
 */
#include "loom_int.h"

void loom__open_io(lua_State *L, loom_runtime *rt) {
  (void)L;
  (void)rt;
}
