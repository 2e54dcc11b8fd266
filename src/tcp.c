/*
 * tcp.c - loom.tcp: connect() and listen() in blocking style, the server
 * object with accept(), and the TCP-only connection methods. Reads and
 * writes come from the shared stream machinery (stream.c).
 *
 * A connect resolves the host on the loop (uv_getaddrinfo) unless it is an
 * IP literal, then tries each address in turn with a fresh socket. The
 * object being connected sits on the caller's stack while it waits, so a
 * kill or timeout only has to close it: libuv cannot cancel a uv_connect_t,
 * so its callback then merely frees the operation (rule Y3).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "stream.h"

#define CONN_MT "loom.tcp_conn"
#define SERVER_MT "loom.tcp_server"

/* process.c: ignores SIGPIPE unless the host chose a disposition, so that a
 * write to a reset connection fails with EPIPE instead of killing us. */
LOOM_HIDDEN void loom__ignore_sigpipe(void);

static void no_sigpipe(void) {
  static int done;
  if (!done) {
    loom__ignore_sigpipe();
    done = 1;
  }
}

/* ------------------------------------------------------------ arguments */

static const char *check_host(lua_State *L, int idx) {
  size_t len;
  const char *h = luaL_checklstring(L, idx, &len);
  if (strlen(h) != len)
    luaL_argerror(L, idx, "host must not contain NUL bytes");
  return h;
}

static int check_port(lua_State *L, int idx) {
  lua_Integer p;
  if (!lua_isinteger(L, idx)) {
    if (lua_type(L, idx) != LUA_TNUMBER)
      luaL_typeerror(L, idx, "integer");
    luaL_argerror(L, idx, "port must be an integer 0..65535");
  }
  p = lua_tointeger(L, idx);
  if (p < 0 || p > 65535)
    luaL_argerror(L, idx, "port must be an integer 0..65535");
  return (int)p;
}

typedef struct opts {
  double timeout;
  int nodelay;
  size_t hwm;
  int backlog;
} opts;

static void check_opts(lua_State *L, int idx, opts *o) {
  o->timeout = -1;
  o->nodelay = 1;
  o->hwm = LOOM_STREAM_HWM;
  o->backlog = 511;
  if (lua_isnoneornil(L, idx))
    return;
  luaL_checktype(L, idx, LUA_TTABLE);
  if (lua_getfield(L, idx, "timeout") != LUA_TNIL) {
    lua_Number t = lua_tonumber(L, -1);
    if (!lua_isnumber(L, -1) || t != t || t < 0)
      luaL_argerror(L, idx, "opts.timeout must be a number >= 0");
    o->timeout = t > 1e9 ? 1e9 : t;
  }
  if (lua_getfield(L, idx, "nodelay") != LUA_TNIL)
    o->nodelay = lua_toboolean(L, -1);
  if (lua_getfield(L, idx, "high_water") != LUA_TNIL) {
    if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 0)
      luaL_argerror(L, idx, "opts.high_water must be a non-negative integer");
    o->hwm = (size_t)lua_tointeger(L, -1);
  }
  if (lua_getfield(L, idx, "backlog") != LUA_TNIL) {
    if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 1 || lua_tointeger(L, -1) > 65535)
      luaL_argerror(L, idx, "opts.backlog must be an integer 1..65535");
    o->backlog = (int)lua_tointeger(L, -1);
  }
  lua_pop(L, 4);
}

static int parse_literal(const char *host, int port, struct sockaddr_storage *ss) {
  memset(ss, 0, sizeof *ss);
  if (uv_ip4_addr(host, port, (struct sockaddr_in *)ss) == 0)
    return 0;
  if (uv_ip6_addr(host, port, (struct sockaddr_in6 *)ss) == 0)
    return 0;
  return -1;
}

static void set_port(struct sockaddr *sa, int port) {
  if (sa->sa_family == AF_INET)
    ((struct sockaddr_in *)sa)->sin_port = htons((uint16_t)port);
  else
    ((struct sockaddr_in6 *)sa)->sin6_port = htons((uint16_t)port);
}

/* Pushes host, port of a socket address; returns 2, or a fail triple. */
static int push_addr(lua_State *L, const struct sockaddr_storage *ss) {
  char ip[INET6_ADDRSTRLEN + 1];
  int port, err;
  if (ss->ss_family == AF_INET) {
    const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
    err = uv_ip4_name(a, ip, sizeof ip);
    port = ntohs(a->sin_port);
  } else if (ss->ss_family == AF_INET6) {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
    err = uv_ip6_name(a, ip, sizeof ip);
    port = ntohs(a->sin6_port);
  } else
    return loom__fail(L, "EAFNOSUPPORT", "not an IP address");
  if (err < 0)
    return loom__fail_uv(L, err, NULL);
  lua_pushstring(L, ip);
  lua_pushinteger(L, port);
  return 2;
}

/* Settings an accepted or connected socket gets. */
static void setup_conn(loom_stream *s, const opts *o) {
  if (o->nodelay)
    uv_tcp_nodelay(&s->h.tcp, 1);
  s->hwm = o->hwm;
  s->timeout = o->timeout;
}

/* ------------------------------------------------------------ resolving ops */

/* A connect (or a listen on a host name) in flight. The object it
 * produces is a box on the waiter's stack at (L, boxidx). */
typedef struct addr_op {
  loom_runtime *rt;
  loom_block *b; /* NULL once the waiter left */
  lua_State *L;
  int boxidx;
  int listen;        /* 1: bind + listen on the first address */
  loom_stream *s;    /* connect: the socket being connected */
  struct server *sv; /* listen: the server */
  uv_getaddrinfo_t gai;
  uv_connect_t req;
  struct addrinfo *res, *next;
  int inflight;  /* libuv requests still pointing at op */
  int resolving; /* the getaddrinfo is the one in flight */
  int tried;     /* a connect was attempted on op->s */
  int lasterr;
  opts o;
  int port;
  char host[];
} addr_op;

struct server;
static void server_close(loom_runtime *rt, struct server *sv);

static void op_free(addr_op *op) {
  if (op->res)
    uv_freeaddrinfo(op->res);
  free(op);
}

/* Wakes the waiter with the fail triple for err at host:port. */
static void op_fail(addr_op *op, int err) {
  char msg[320];
  loom_block *b = op->b;
  op->b = NULL;
  /* The object made for the waiter is useless now: close it at once
   * rather than leave its socket to the garbage collector. */
  if (op->s) {
    loom__stream_close(op->rt, op->s);
    op->s = NULL;
  }
  if (op->sv) {
    server_close(op->rt, op->sv);
    op->sv = NULL;
  }
  snprintf(msg, sizeof msg, "%.200s:%d: %s", op->host, op->port, uv_strerror(err));
  loom__wake_fail(op->rt, b, uv_err_name(err), msg, LOOM_WOKE_DONE);
}

/* Wakes the waiter with the object it waited for. */
static void op_done(addr_op *op) {
  loom_block *b = op->b;
  lua_State *S = loom__wake_stack(op->rt, b->t, 1);
  op->b = NULL;
  if (S && lua_checkstack(op->L, 2)) {
    lua_pushvalue(op->L, op->boxidx);
    if (op->L != S)
      lua_xmove(op->L, S, 1);
    loom__wake(op->rt, b, 1, LOOM_WOKE_DONE);
  } else
    loom__wake(op->rt, b, 0, LOOM_WOKE_DONE);
}

static void connect_cb(uv_connect_t *req, int status);
static int server_bind(struct server *sv, const struct sockaddr *sa, int backlog);

/* Tries the next address; wakes the waiter when none is left. */
static void try_next(addr_op *op) {
  while (op->next) {
    struct addrinfo *ai = op->next;
    int err;
    op->next = ai->ai_next;
    if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
      continue;
    set_port(ai->ai_addr, op->port);
    if (op->listen) {
      err = server_bind(op->sv, ai->ai_addr, op->o.backlog);
      if (err == 0)
        op_done(op);
      else
        op_fail(op, err);
      return;
    }
    if (op->tried) {
      /* A socket that failed to connect is not reused. */
      loom_stream *n = loom__stream_renew(op->s);
      if (!n) {
        op->s = NULL;
        op_fail(op, UV_ENOMEM);
        return;
      }
      op->s = n;
      if (loom__stream_opened(n, uv_tcp_init(op->rt->loop, &n->h.tcp)) < 0) {
        op->s = NULL;
        op_fail(op, UV_ENOMEM);
        return;
      }
    }
    op->tried = 1;
    err = uv_tcp_connect(&op->req, &op->s->h.tcp, ai->ai_addr, connect_cb);
    if (err == 0) {
      op->inflight++;
      return;
    }
    op->lasterr = err;
  }
  op_fail(op, op->lasterr ? op->lasterr : UV_EAI_NONAME);
}

static void connect_cb(uv_connect_t *req, int status) {
  addr_op *op = (addr_op *)((char *)req - offsetof(addr_op, req));
  op->inflight--;
  if (!op->b) {
    if (!op->inflight)
      op_free(op);
    return;
  }
  if (status == 0) {
    setup_conn(op->s, &op->o);
    op_done(op);
  } else if (status == UV_ECANCELED) {
    op_fail(op, status); /* the socket was closed under it */
  } else {
    op->lasterr = status;
    try_next(op);
  }
  if (!op->b && !op->inflight)
    op_free(op);
}

static void gai_cb(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  addr_op *op = (addr_op *)((char *)req - offsetof(addr_op, gai));
  op->inflight--;
  op->resolving = 0;
  op->res = res;
  if (!op->b) {
    if (!op->inflight)
      op_free(op);
    return;
  }
  if (status < 0)
    op_fail(op, status);
  else {
    op->next = res;
    try_next(op);
  }
  if (!op->b && !op->inflight)
    op_free(op);
}

/* Kill, timeout or close of the waiter: close what it was making. */
static void op_cancel(loom_runtime *rt, loom_block *b, int why) {
  addr_op *op = b->data;
  (void)why;
  op->b = NULL;
  if (op->resolving)
    uv_cancel((uv_req_t *)&op->gai);
  if (op->s)
    loom__stream_close(rt, op->s); /* a connect in flight ends ECANCELED */
  if (op->sv)
    server_close(rt, op->sv);
  if (!op->inflight)
    op_free(op);
}

/* Starts resolving op->host, or (literal) acting on it at once. Returns 0
 * when the waiter must wait, 1 when op is done (woken or failed through
 * *err), or a negative error before anything started. */
static int op_start(addr_op *op) {
  struct sockaddr_storage ss;
  struct addrinfo hints;
  int err;
  if (parse_literal(op->host, op->port, &ss) == 0) {
    if (op->listen)
      return server_bind(op->sv, (struct sockaddr *)&ss, op->o.backlog);
    err = uv_tcp_connect(&op->req, &op->s->h.tcp, (struct sockaddr *)&ss, connect_cb);
    if (err == 0) {
      op->tried = 1;
      op->inflight++;
    }
    return err;
  }
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_protocol = IPPROTO_TCP;
  if (op->listen)
    hints.ai_flags = AI_PASSIVE;
  err = uv_getaddrinfo(op->rt->loop, &op->gai, gai_cb, op->host, NULL, &hints);
  if (err == 0) {
    op->inflight++;
    op->resolving = 1;
  }
  return err;
}

static addr_op *op_new(lua_State *L, loom_runtime *rt, const char *host, int port, const opts *o) {
  size_t hl = strlen(host);
  addr_op *op = calloc(1, sizeof *op + hl + 1);
  if (!op)
    luaL_error(L, "not enough memory");
  op->rt = rt;
  op->L = L;
  op->boxidx = lua_gettop(L);
  op->port = port;
  op->o = *o;
  memcpy(op->host, host, hl + 1);
  return op;
}

/* ------------------------------------------------------------ connect */

/* loom.tcp.connect(host, port [, opts]) -> conn or fail.
 * opts: timeout (connect, then the conn's default), nodelay (default true),
 * high_water (bytes). */
static int l_connect(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  const char *host = check_host(L, 1);
  int port = check_port(L, 2), err;
  opts o;
  loom_stream *s;
  addr_op *op;
  loom_block *b;
  check_opts(L, 3, &o);
  loom__check_block(L, rt);
  no_sigpipe();
  lua_settop(L, 3);
  s = loom__stream_push(L, rt, CONN_MT);
  if (!s)
    return luaL_error(L, "not enough memory");
  err = loom__stream_opened(s, uv_tcp_init(rt->loop, &s->h.tcp));
  if (err < 0)
    return loom__fail_uv(L, err, host);
  s->timeout = o.timeout;
  s->hwm = o.hwm;
  op = op_new(L, rt, host, port, &o);
  op->s = s;
  b = loom__block_new(rt, L, "tcp connect");
  b->data = op;
  b->cancel = op_cancel;
  op->b = b;
  err = op_start(op);
  if (err < 0) {
    loom__block_abort(rt, b);
    loom__stream_close(rt, s);
    if (!op->inflight)
      op_free(op);
    lua_pushfstring(L, "%s:%d", host, port);
    return loom__fail_uv(L, err, lua_tostring(L, -1));
  }
  loom__block_timeout(rt, b, o.timeout);
  return loom__suspend(L, rt, b);
}

/* ------------------------------------------------------------ conn methods */

static loom_stream *check_conn(lua_State *L) { return loom__stream_check(L, 1, CONN_MT); }

static int c_name(lua_State *L, int peer) {
  loom_stream *s = check_conn(L);
  struct sockaddr_storage ss;
  int len = sizeof ss, err;
  if (!s)
    return loom__fail(L, "ECLOSED", CONN_MT " is closed");
  err = peer ? uv_tcp_getpeername(&s->h.tcp, (struct sockaddr *)&ss, &len)
             : uv_tcp_getsockname(&s->h.tcp, (struct sockaddr *)&ss, &len);
  if (err < 0)
    return loom__fail_uv(L, err, NULL);
  return push_addr(L, &ss);
}

/* conn:peername() -> host, port or fail */
static int c_peername(lua_State *L) { return c_name(L, 1); }
/* conn:sockname() -> host, port or fail */
static int c_sockname(lua_State *L) { return c_name(L, 0); }

/* conn:nodelay(on) -> true or fail */
static int c_nodelay(lua_State *L) {
  loom_stream *s = check_conn(L);
  int err;
  luaL_checkany(L, 2);
  if (!s)
    return loom__fail(L, "ECLOSED", CONN_MT " is closed");
  err = uv_tcp_nodelay(&s->h.tcp, lua_toboolean(L, 2));
  if (err < 0)
    return loom__fail_uv(L, err, NULL);
  lua_pushboolean(L, 1);
  return 1;
}

/* conn:keepalive(on [, seconds]) -> true or fail; seconds (default 60) is
 * the idle time before the first probe. */
static int c_keepalive(lua_State *L) {
  loom_stream *s = check_conn(L);
  lua_Integer delay = 60;
  int err;
  luaL_checkany(L, 2);
  if (!lua_isnoneornil(L, 3)) {
    delay = luaL_checkinteger(L, 3);
    luaL_argcheck(L, delay >= 1 && delay <= 0x7fffffff, 3, "seconds must be a positive integer");
  }
  if (!s)
    return loom__fail(L, "ECLOSED", CONN_MT " is closed");
  err = uv_tcp_keepalive(&s->h.tcp, lua_toboolean(L, 2), (unsigned)delay);
  if (err < 0)
    return loom__fail_uv(L, err, NULL);
  lua_pushboolean(L, 1);
  return 1;
}

/* ------------------------------------------------------------ server */

typedef struct server {
  loom_link link;
  loom_runtime *rt;
  struct server **box;
  loom_block *ablock; /* the waiting accepter */
  loom_stream *aconn; /* the conn it will receive (a box on its stack) */
  lua_State *aL;
  int aidx;
  int lerr; /* a failed incoming connection, for the next accept */
  int closed;
  opts o; /* for accepted conns */
  uv_tcp_t tcp;
} server;

static void server_free_cb(uv_handle_t *h) { free(h->data); }

static void server_close(loom_runtime *rt, server *sv) {
  if (sv->closed)
    return;
  sv->closed = 1;
  loom__unlink(&sv->link);
  if (sv->box) {
    *sv->box = NULL;
    sv->box = NULL;
  }
  if (sv->ablock)
    loom__wake_fail(rt, sv->ablock, "ECLOSED", "server closed while accepting", LOOM_WOKE_CLOSE);
  uv_close((uv_handle_t *)&sv->tcp, server_free_cb);
}

static void server_link_close(loom_runtime *rt, loom_link *l) {
  server_close(rt, (server *)((char *)l - offsetof(server, link)));
}

static void accepter_leaves(server *sv) {
  sv->ablock = NULL;
  sv->aconn = NULL;
  sv->aL = NULL;
  if (!sv->closed)
    uv_unref((uv_handle_t *)&sv->tcp);
}

static void connection_cb(uv_stream_t *h, int status) {
  server *sv = h->data;
  loom_block *b = sv->ablock;
  int err;
  if (status < 0) {
    if (!b) {
      sv->lerr = status;
      return;
    }
    accepter_leaves(sv);
    loom__wake_fail(sv->rt, b, uv_err_name(status), uv_strerror(status), LOOM_WOKE_DONE);
    return;
  }
  if (!b)
    return; /* libuv holds the connection until the next accept() */
  err = uv_accept(h, &sv->aconn->h.stream);
  if (err == UV_EAGAIN)
    return;
  if (err < 0) {
    accepter_leaves(sv);
    loom__wake_fail(sv->rt, b, uv_err_name(err), uv_strerror(err), LOOM_WOKE_DONE);
    return;
  }
  setup_conn(sv->aconn, &sv->o);
  {
    lua_State *S = loom__wake_stack(sv->rt, b->t, 1), *L = sv->aL;
    int idx = sv->aidx;
    accepter_leaves(sv);
    if (S && lua_checkstack(L, 2)) {
      lua_pushvalue(L, idx);
      if (L != S)
        lua_xmove(L, S, 1);
      loom__wake(sv->rt, b, 1, LOOM_WOKE_DONE);
    } else
      loom__wake(sv->rt, b, 0, LOOM_WOKE_DONE);
  }
}

static int server_bind(server *sv, const struct sockaddr *sa, int backlog) {
  int err = uv_tcp_bind(&sv->tcp, sa, 0);
  if (err == 0)
    err = uv_listen((uv_stream_t *)&sv->tcp, backlog, connection_cb);
  if (err == 0)
    uv_unref((uv_handle_t *)&sv->tcp); /* only a waiting accepter counts */
  return err;
}

static server *check_server(lua_State *L) { return *(server **)luaL_checkudata(L, 1, SERVER_MT); }

static void accept_cancel(loom_runtime *rt, loom_block *b, int why) {
  (void)rt;
  (void)why;
  accepter_leaves(b->data);
}

/* server:accept([s]) -> conn or fail (ETIMEDOUT, ECLOSED, ...). */
static int s_accept(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  server *sv = check_server(L);
  double timeout = loom__opt_timeout(L, 2);
  loom_stream *s;
  loom_block *b;
  int err;
  if (!sv)
    return loom__fail(L, "ECLOSED", SERVER_MT " is closed");
  if (sv->ablock)
    return luaL_error(L, SERVER_MT ": another tasklet is already accepting");
  if (sv->lerr) {
    err = sv->lerr;
    sv->lerr = 0;
    return loom__fail_uv(L, err, NULL);
  }
  lua_settop(L, 2);
  s = loom__stream_push(L, rt, CONN_MT);
  if (!s)
    return luaL_error(L, "not enough memory");
  err = loom__stream_opened(s, uv_tcp_init(rt->loop, &s->h.tcp));
  if (err < 0)
    return loom__fail_uv(L, err, NULL);
  err = uv_accept((uv_stream_t *)&sv->tcp, &s->h.stream);
  if (err == 0) {
    setup_conn(s, &sv->o);
    return 1;
  }
  if (err != UV_EAGAIN) {
    loom__stream_close(rt, s);
    return loom__fail_uv(L, err, NULL);
  }
  if (loom__why_not_block(L, rt))
    loom__stream_close(rt, s); /* the raise below drops the box */
  loom__check_block(L, rt);
  b = loom__block_new(rt, L, "tcp accept");
  b->data = sv;
  b->cancel = accept_cancel;
  sv->ablock = b;
  sv->aconn = s;
  sv->aL = L;
  sv->aidx = lua_gettop(L);
  uv_ref((uv_handle_t *)&sv->tcp);
  loom__block_timeout(rt, b, timeout);
  return loom__suspend(L, rt, b);
}

/* server:sockname() -> host, port or fail */
static int s_sockname(lua_State *L) {
  server *sv = check_server(L);
  struct sockaddr_storage ss;
  int len = sizeof ss, err;
  if (!sv)
    return loom__fail(L, "ECLOSED", SERVER_MT " is closed");
  err = uv_tcp_getsockname(&sv->tcp, (struct sockaddr *)&ss, &len);
  if (err < 0)
    return loom__fail_uv(L, err, NULL);
  return push_addr(L, &ss);
}

/* server:close() -> true; wakes a waiting accepter with ECLOSED. */
static int s_close(lua_State *L) {
  server *sv = check_server(L);
  if (sv)
    server_close(loom__rt(L), sv);
  lua_pushboolean(L, 1);
  return 1;
}

static int s_closed(lua_State *L) {
  lua_pushboolean(L, check_server(L) == NULL);
  return 1;
}

static int s_gc(lua_State *L) {
  server **box = luaL_testudata(L, 1, SERVER_MT);
  if (box && *box)
    server_close(loom__rt(L), *box);
  return 0;
}

static int s_tostring(lua_State *L) {
  server *sv = check_server(L);
  if (sv)
    lua_pushfstring(L, SERVER_MT ": %p", (void *)sv);
  else
    lua_pushliteral(L, SERVER_MT " (closed)");
  return 1;
}

/* loom.tcp.listen(host, port [, opts]) -> server or fail.
 * opts: backlog (511), and for accepted conns nodelay (true), high_water,
 * timeout (their default timeout). A host name is resolved first (the only
 * case where listen waits). */
static int l_listen(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  const char *host = check_host(L, 1);
  int port = check_port(L, 2), err;
  struct sockaddr_storage ss;
  int literal = parse_literal(host, port, &ss) == 0;
  opts o;
  server *sv, **box;
  addr_op *op;
  loom_block *b;
  check_opts(L, 3, &o);
  no_sigpipe();
  if (!literal)
    loom__check_block(L, rt);
  lua_settop(L, 3);
  box = lua_newuserdatauv(L, sizeof *box, 0);
  *box = NULL;
  luaL_setmetatable(L, SERVER_MT);
  sv = calloc(1, sizeof *sv);
  if (!sv)
    return luaL_error(L, "not enough memory");
  err = uv_tcp_init(rt->loop, &sv->tcp);
  if (err < 0) {
    free(sv);
    return loom__fail_uv(L, err, NULL);
  }
  sv->rt = rt;
  sv->o = o;
  sv->tcp.data = sv;
  sv->box = box;
  *box = sv;
  sv->link.close = server_link_close;
  loom__link(rt, &sv->link);
  if (literal) {
    err = server_bind(sv, (struct sockaddr *)&ss, o.backlog);
    if (err < 0) {
      server_close(rt, sv);
      lua_pushfstring(L, "%s:%d", host, port);
      return loom__fail_uv(L, err, lua_tostring(L, -1));
    }
    return 1;
  }
  op = op_new(L, rt, host, port, &o);
  op->listen = 1;
  op->sv = sv;
  b = loom__block_new(rt, L, "tcp listen (resolving)");
  b->data = op;
  b->cancel = op_cancel;
  op->b = b;
  err = op_start(op);
  if (err < 0) {
    loom__block_abort(rt, b);
    server_close(rt, sv);
    op_free(op);
    lua_pushfstring(L, "%s:%d", host, port);
    return loom__fail_uv(L, err, lua_tostring(L, -1));
  }
  return loom__suspend(L, rt, b);
}

/* ------------------------------------------------------------ open */

void loom__open_tcp(lua_State *L, loom_runtime *rt) {
  static const luaL_Reg conn_methods[] = {{"peername", c_peername},
                                          {"sockname", c_sockname},
                                          {"nodelay", c_nodelay},
                                          {"keepalive", c_keepalive},
                                          {NULL, NULL}};
  static const luaL_Reg server_methods[] = {{"accept", s_accept},
                                            {"sockname", s_sockname},
                                            {"close", s_close},
                                            {"closed", s_closed},
                                            {NULL, NULL}};
  static const luaL_Reg server_metas[] = {
      {"__gc", s_gc}, {"__close", s_gc}, {"__tostring", s_tostring}, {NULL, NULL}};
  static const luaL_Reg funcs[] = {{"connect", l_connect}, {"listen", l_listen}, {NULL, NULL}};
  loom__stream_metatable(L, rt, CONN_MT, conn_methods);
  luaL_newmetatable(L, SERVER_MT);
  lua_newtable(L);
  loom__setfuncs(L, rt, server_methods);
  lua_setfield(L, -2, "__index");
  loom__setfuncs(L, rt, server_metas);
  lua_pop(L, 1);
  lua_newtable(L);
  loom__setfuncs(L, rt, funcs);
  lua_setfield(L, -2, "tcp");
}
