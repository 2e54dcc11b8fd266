/*
 * dns.c - loom.dns: name resolution on libuv's thread pool
 * (uv_getaddrinfo, uv_getnameinfo). Only the calling tasklet waits.
 *
 * A request libuv still holds outlives its caller when the caller is
 * killed or times out: the cancel hook drops the request's pointer to the
 * block and asks uv_cancel to take it off the pool's queue; a lookup that
 * already runs finishes there, and its callback only frees memory (design
 * rule Y3). No callback ever reaches Lua after its caller left.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "loom_int.h"

typedef struct dnsop {
  union {
    uv_req_t req;
    uv_getaddrinfo_t ai;
    uv_getnameinfo_t ni;
  } u;
  loom_runtime *rt;
  loom_block *b; /* NULL once the caller left */
  char *name;    /* host or address, for error messages */
} dnsop;

static void op_free(dnsop *op) {
  free(op->name);
  free(op);
}

/* The cancel hook (kill, timeout, loom.timeout): detach, then cancel if the
 * pool has not started the lookup yet. Either way the callback frees. */
static void dns_cancel(loom_runtime *rt, loom_block *b, int why) {
  dnsop *op = b->data;
  (void)rt;
  (void)why;
  op->b = NULL;
  uv_cancel(&op->u.req);
}

/* A string argument without NUL bytes (getaddrinfo would stop at the
 * first one and look up another name). */
static const char *check_name(lua_State *L, int idx, const char *what) {
  size_t len;
  const char *s = luaL_checklstring(L, idx, &len);
  if (strlen(s) != len)
    luaL_argerror(L, idx, lua_pushfstring(L, "%s contains a NUL byte", what));
  if (len == 0)
    luaL_argerror(L, idx, lua_pushfstring(L, "%s must not be empty", what));
  return s;
}

/* opts.timeout of the options table at idx (absent: -1, none). */
static double opt_timeout_field(lua_State *L, int idx) {
  double s = -1;
  if (lua_getfield(L, idx, "timeout") != LUA_TNIL) {
    int isnum;
    s = (double)lua_tonumberx(L, -1, &isnum);
    if (!isnum || isnan(s) || s < 0)
      luaL_argerror(L, idx, "opts.timeout must be a number >= 0");
  }
  lua_pop(L, 1);
  return s;
}

static dnsop *op_new(lua_State *L, loom_runtime *rt, const char *name) {
  dnsop *op = calloc(1, sizeof *op);
  if (op)
    op->name = strdup(name);
  if (!op || !op->name) {
    free(op);
    luaL_error(L, "not enough memory");
  }
  op->rt = rt;
  op->u.req.data = op;
  return op;
}

/* Wakes the caller with the fail triple of a libuv (EAI_*) error. */
static void wake_fail(dnsop *op, int status) {
  lua_State *S = loom__wake_stack(op->rt, op->b->t, 3);
  int n = 0;
  if (S) {
    lua_pushnil(S);
    lua_pushfstring(S, "%s: %s: %s", uv_err_name(status), uv_strerror(status), op->name);
    lua_pushstring(S, uv_err_name(status));
    n = 3;
  }
  loom__wake(op->rt, op->b, n, LOOM_WOKE_DONE);
}

/* ------------------------------------------------------------ resolve */

static void resolve_cb(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  dnsop *op = req->data;
  if (op->b) {
    if (status < 0)
      wake_fail(op, status);
    else {
      lua_State *S = loom__wake_stack(op->rt, op->b->t, 6);
      struct addrinfo *ai;
      int n = 0, i = 0;
      if (S) {
        lua_newtable(S); /* the result */
        lua_newtable(S); /* seen addresses: one entry per address */
        for (ai = res; ai; ai = ai->ai_next) {
          char addr[UV_IF_NAMESIZE + INET6_ADDRSTRLEN + 2];
          int fam = ai->ai_family;
          if (fam == AF_INET)
            uv_ip4_name((struct sockaddr_in *)ai->ai_addr, addr, sizeof addr);
          else if (fam == AF_INET6)
            uv_ip6_name((struct sockaddr_in6 *)ai->ai_addr, addr, sizeof addr);
          else
            continue;
          if (lua_getfield(S, -1, addr) != LUA_TNIL) {
            lua_pop(S, 1);
            continue;
          }
          lua_pop(S, 1);
          lua_pushboolean(S, 1);
          lua_setfield(S, -2, addr);
          lua_createtable(S, 0, 2);
          lua_pushstring(S, addr);
          lua_setfield(S, -2, "address");
          lua_pushstring(S, fam == AF_INET ? "inet" : "inet6");
          lua_setfield(S, -2, "family");
          lua_rawseti(S, -3, ++i);
        }
        lua_pop(S, 1);
        n = 1;
      }
      loom__wake(op->rt, op->b, n, LOOM_WOKE_DONE);
    }
  }
  uv_freeaddrinfo(res);
  op_free(op);
}

/* dns.resolve(host [, opts]) -> { {address=, family=}, ... } | fail
 * opts.family: "inet" | "inet6" (default: both); opts.timeout: seconds. */
static int l_resolve(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  const char *host = check_name(L, 1, "host name");
  struct addrinfo hints;
  double timeout = -1;
  int family = AF_UNSPEC, err;
  loom_block *b;
  dnsop *op;
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    if (lua_getfield(L, 2, "family") != LUA_TNIL) {
      const char *f = lua_tostring(L, -1);
      if (f && strcmp(f, "inet") == 0)
        family = AF_INET;
      else if (f && strcmp(f, "inet6") == 0)
        family = AF_INET6;
      else
        luaL_argerror(L, 2, "opts.family must be \"inet\" or \"inet6\"");
    }
    lua_pop(L, 1);
    timeout = opt_timeout_field(L, 2);
  }
  memset(&hints, 0, sizeof hints);
  hints.ai_family = family;
  /* One socket type, so that each address comes once (not once per
   * stream/datagram/raw). */
  hints.ai_socktype = SOCK_STREAM;
  loom__check_block(L, rt);
  op = op_new(L, rt, host);
  b = loom__block_new(rt, L, "dns.resolve");
  b->data = op;
  b->cancel = dns_cancel;
  op->b = b;
  err = uv_getaddrinfo(rt->loop, &op->u.ai, resolve_cb, host, NULL, &hints);
  if (err < 0) {
    loom__block_abort(rt, b);
    lua_pushnil(L);
    lua_pushfstring(L, "%s: %s: %s", uv_err_name(err), uv_strerror(err), host);
    lua_pushstring(L, uv_err_name(err));
    op_free(op);
    return 3;
  }
  loom__block_timeout(rt, b, timeout);
  return loom__suspend(L, rt, b);
}

/* ------------------------------------------------------------ reverse */

static void reverse_cb(uv_getnameinfo_t *req, int status, const char *hostname,
                       const char *service) {
  dnsop *op = req->data;
  (void)service;
  if (op->b) {
    if (status < 0)
      wake_fail(op, status);
    else {
      lua_State *S = loom__wake_stack(op->rt, op->b->t, 1);
      if (S)
        lua_pushstring(S, hostname);
      loom__wake(op->rt, op->b, S ? 1 : 0, LOOM_WOKE_DONE);
    }
  }
  op_free(op);
}

/* dns.reverse(address [, opts]) -> name | fail. The address is a numeric
 * IPv4 or IPv6 address; an address without a name fails (EAI_NONAME). */
static int l_reverse(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  const char *addr = check_name(L, 1, "address");
  struct sockaddr_storage ss;
  double timeout = -1;
  loom_block *b;
  dnsop *op;
  int err;
  if (uv_ip4_addr(addr, 0, (struct sockaddr_in *)&ss) != 0 &&
      uv_ip6_addr(addr, 0, (struct sockaddr_in6 *)&ss) != 0)
    return luaL_argerror(L, 1, "numeric IPv4 or IPv6 address expected");
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    timeout = opt_timeout_field(L, 2);
  }
  loom__check_block(L, rt);
  op = op_new(L, rt, addr);
  b = loom__block_new(rt, L, "dns.reverse");
  b->data = op;
  b->cancel = dns_cancel;
  op->b = b;
  err = uv_getnameinfo(rt->loop, &op->u.ni, reverse_cb, (struct sockaddr *)&ss, NI_NAMEREQD);
  if (err < 0) {
    loom__block_abort(rt, b);
    lua_pushnil(L);
    lua_pushfstring(L, "%s: %s: %s", uv_err_name(err), uv_strerror(err), addr);
    lua_pushstring(L, uv_err_name(err));
    op_free(op);
    return 3;
  }
  loom__block_timeout(rt, b, timeout);
  return loom__suspend(L, rt, b);
}

void loom__open_dns(lua_State *L, loom_runtime *rt) {
  static const luaL_Reg funcs[] = {{"resolve", l_resolve}, {"reverse", l_reverse}, {NULL, NULL}};
  lua_newtable(L);
  loom__setfuncs(L, rt, funcs);
  lua_setfield(L, -2, "dns");
}
