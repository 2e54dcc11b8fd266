/*
 * udp.c - loom.udp: datagram sockets. A bound socket reads all the time;
 * datagrams that arrive while nobody receives wait in a bounded queue (the
 * oldest is dropped when it is full), and one tasklet at a time may wait in
 * receive(). send() tries a non-blocking send first and waits only when
 * the kernel's buffer is full.
 *
 * The handle is unreferenced while nobody waits on it, so an open socket by
 * itself keeps neither the CLI nor loom.run alive; a waiting receive() or a
 * pending send() does (it is I/O, never a deadlock).
 */
#include <stdlib.h>
#include <string.h>

#include "loom_int.h"

#define UDP_MT "loom.udp"
/* The queue of unreceived datagrams holds at most this many, and at most
 * UDP_QUEUE_BYTES of data; past either the oldest datagram is dropped. */
#define UDP_QUEUE_MAX 1024
#define UDP_QUEUE_BYTES ((size_t)4 << 20)
/* The largest datagram (IPv6 jumbograms aside); a longer one is truncated. */
#define UDP_RECV_SIZE 65536

typedef struct dgram {
  char *data;
  size_t len;
  struct sockaddr_storage from;
} dgram;

typedef struct udp {
  uv_udp_t h;
  loom_link link; /* in rt->objects while open */
  loom_runtime *rt;
  struct udp **box;     /* the Lua box's slot; NULL once closed or collected */
  loom_waitq receivers; /* at most one waiting receive() */
  loom_waitq senders;   /* sends waiting for the kernel */
  dgram *q;             /* ring of UDP_QUEUE_MAX, allocated on first use */
  size_t qhead, qcount, qbytes;
  uint64_t dropped;
  char *rbuf; /* UDP_RECV_SIZE bytes while reading */
  int reading, closed;
} udp;

/* A send that waits for room: the data is copied behind the struct, since
 * the caller's string may be collected if the caller is killed. */
typedef struct sendop {
  uv_udp_send_t req;
  loom_runtime *rt;
  udp *u;
  loom_block *b; /* NULL once the caller left */
  size_t len;
  char data[];
} sendop;

/* ------------------------------------------------------------ helpers */

/* The handle keeps the loop alive only while a tasklet waits on it. */
static void update_ref(udp *u) {
  if (u->closed)
    return;
  if (u->receivers.count + u->senders.count > 0)
    uv_ref((uv_handle_t *)&u->h);
  else
    uv_unref((uv_handle_t *)&u->h);
}

/* Reads host (idx) and port (idx + 1) into ss: numeric addresses only. */
static void check_addr(lua_State *L, int idx, struct sockaddr_storage *ss) {
  size_t len;
  const char *host = luaL_checklstring(L, idx, &len);
  lua_Integer port = luaL_checkinteger(L, idx + 1);
  luaL_argcheck(L, strlen(host) == len, idx, "host contains a NUL byte");
  luaL_argcheck(L, port >= 0 && port <= 65535, idx + 1, "port must be between 0 and 65535");
  if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)ss) != 0 &&
      uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)ss) != 0)
    luaL_argerror(L, idx, "numeric IP address expected (resolve names with loom.dns.resolve)");
}

/* Pushes host and port of addr on S. Stack: +2. */
static void push_addr(lua_State *S, const struct sockaddr *addr) {
  char host[INET6_ADDRSTRLEN + 1] = "";
  int port = 0;
  if (addr->sa_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)addr;
    uv_ip4_name(in, host, sizeof host);
    port = ntohs(in->sin_port);
  } else if (addr->sa_family == AF_INET6) {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)addr;
    uv_ip6_name(in6, host, sizeof host);
    port = ntohs(in6->sin6_port);
  }
  lua_pushstring(S, host);
  lua_pushinteger(S, port);
}

/* Pushes nil, "CODE: message: host:port", "CODE". */
static int fail_addr(lua_State *L, int err, const struct sockaddr *addr) {
  char host[INET6_ADDRSTRLEN + 1] = "?";
  int port = 0;
  if (addr && addr->sa_family == AF_INET) {
    uv_ip4_name((const struct sockaddr_in *)addr, host, sizeof host);
    port = ntohs(((const struct sockaddr_in *)addr)->sin_port);
  } else if (addr && addr->sa_family == AF_INET6) {
    uv_ip6_name((const struct sockaddr_in6 *)addr, host, sizeof host);
    port = ntohs(((const struct sockaddr_in6 *)addr)->sin6_port);
  }
  return loom__fail(L, uv_err_name(err), addr ? "%s: %s:%d" : "%s", uv_strerror(err), host, port);
}

static void q_drop_oldest(udp *u) {
  dgram *d = &u->q[u->qhead];
  u->qbytes -= d->len;
  free(d->data);
  d->data = NULL;
  u->qhead = (u->qhead + 1) % UDP_QUEUE_MAX;
  u->qcount--;
  u->dropped++;
}

static void q_free(udp *u) {
  while (u->qcount > 0)
    q_drop_oldest(u);
  free(u->q);
  u->q = NULL;
}

/* ------------------------------------------------------------ reading */

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  udp *u = h->data;
  (void)suggested;
  *buf = uv_buf_init(u->rbuf, UDP_RECV_SIZE);
}

static void recv_cb(uv_udp_t *h, ssize_t nread, const uv_buf_t *buf, const struct sockaddr *addr,
                    unsigned flags) {
  udp *u = h->data;
  loom_wait *w;
  (void)flags; /* UV_UDP_PARTIAL: the datagram was truncated; deliver what fits */
  if (nread == 0 && !addr)
    return; /* nothing more to read now */
  if (nread < 0) {
    /* An error is news only for a waiting receiver. */
    if ((w = loom__waitq_pop(&u->receivers)) != NULL) {
      char msg[128];
      snprintf(msg, sizeof msg, "%s", uv_strerror((int)nread));
      loom__wake_fail(u->rt, w->block, uv_err_name((int)nread), msg, LOOM_WOKE_DONE);
      update_ref(u);
    }
    return;
  }
  if ((w = loom__waitq_pop(&u->receivers)) != NULL) {
    lua_State *S = loom__wake_stack(u->rt, w->block->t, 3);
    if (S) {
      lua_pushlstring(S, buf->base, (size_t)nread);
      push_addr(S, addr);
    }
    loom__wake(u->rt, w->block, S ? 3 : 0, LOOM_WOKE_DONE);
    update_ref(u);
    return;
  }
  /* Nobody receives: queue it, dropping the oldest beyond the bounds. */
  if (!u->q && !(u->q = calloc(UDP_QUEUE_MAX, sizeof *u->q))) {
    u->dropped++;
    return;
  }
  while (u->qcount > 0 &&
         (u->qcount == UDP_QUEUE_MAX || u->qbytes + (size_t)nread > UDP_QUEUE_BYTES))
    q_drop_oldest(u);
  {
    dgram *d = &u->q[(u->qhead + u->qcount) % UDP_QUEUE_MAX];
    d->data = malloc(nread > 0 ? (size_t)nread : 1);
    if (!d->data) {
      u->dropped++;
      return;
    }
    memcpy(d->data, buf->base, (size_t)nread);
    d->len = (size_t)nread;
    memcpy(&d->from, addr,
           addr->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in));
    u->qcount++;
    u->qbytes += d->len;
  }
}

/* Starts reading once the socket has an address (bind, first send, or
 * first receive, which binds an unbound socket to 0.0.0.0 port 0). */
static int start_reading(udp *u) {
  int err;
  if (u->reading)
    return 0;
  if (!u->rbuf && !(u->rbuf = malloc(UDP_RECV_SIZE)))
    return UV_ENOMEM;
  err = uv_udp_recv_start(&u->h, alloc_cb, recv_cb);
  if (err == 0)
    u->reading = 1;
  return err;
}

/* ------------------------------------------------------------ life */

static void close_cb(uv_handle_t *h) {
  udp *u = h->data;
  free(u->rbuf);
  free(u);
}

/* Closes u: waiters get ECLOSED, queued datagrams go, the handle closes
 * (its memory goes in close_cb). Never enters Lua. */
static void udp_close(udp *u) {
  loom_wait *w;
  if (u->closed)
    return;
  u->closed = 1;
  loom__unlink(&u->link);
  if (u->box) {
    *u->box = NULL;
    u->box = NULL;
  }
  while ((w = loom__waitq_pop(&u->receivers)) != NULL)
    loom__wake_fail(u->rt, w->block, "ECLOSED", "socket closed", LOOM_WOKE_CLOSE);
  while ((w = loom__waitq_pop(&u->senders)) != NULL)
    loom__wake_fail(u->rt, w->block, "ECLOSED", "socket closed", LOOM_WOKE_CLOSE);
  q_free(u);
  uv_close((uv_handle_t *)&u->h, close_cb);
}

static void udp_link_close(loom_runtime *rt, loom_link *l) {
  (void)rt;
  udp_close((udp *)((char *)l - offsetof(udp, link)));
}

/* Makes a socket and its box (on top of L). Returns NULL and pushes the
 * fail triple when libuv refuses. */
static udp *udp_new(lua_State *L, loom_runtime *rt) {
  udp **box = lua_newuserdatauv(L, sizeof *box, 0);
  udp *u;
  int err;
  *box = NULL;
  luaL_setmetatable(L, UDP_MT);
  u = calloc(1, sizeof *u);
  if (!u)
    luaL_error(L, "not enough memory");
  err = uv_udp_init(rt->loop, &u->h);
  if (err < 0) {
    free(u);
    lua_pop(L, 1);
    loom__fail_uv(L, err, NULL);
    return NULL;
  }
  u->h.data = u;
  u->rt = rt;
  u->box = box;
  *box = u;
  u->link.close = udp_link_close;
  loom__link(rt, &u->link);
  uv_unref((uv_handle_t *)&u->h);
  return u;
}

/* The open socket at idx, or NULL once it is closed. */
static udp *to_udp(lua_State *L, int idx) { return *(udp **)luaL_checkudata(L, idx, UDP_MT); }

static int closed_fail(lua_State *L) { return loom__fail(L, "ECLOSED", "socket closed"); }

/* udp.open() -> socket | fail: an unbound socket; the first send binds it
 * to an ephemeral port of the destination's family. */
static int l_open(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  return udp_new(L, rt) ? 1 : 3;
}

/* udp.bind(host, port) -> socket | fail; port 0 picks a free port. */
static int l_bind(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  struct sockaddr_storage ss;
  udp *u;
  int err;
  check_addr(L, 1, &ss);
  if (!(u = udp_new(L, rt)))
    return 3;
  err = uv_udp_bind(&u->h, (const struct sockaddr *)&ss, 0);
  if (err == 0)
    err = start_reading(u);
  if (err < 0) {
    udp_close(u);
    return fail_addr(L, err, (const struct sockaddr *)&ss);
  }
  return 1;
}

/* ------------------------------------------------------------ send */

static void send_cancel(loom_runtime *rt, loom_block *b, int why) {
  sendop *op = b->data;
  (void)rt;
  (void)why;
  op->b = NULL; /* a udp send cannot be taken back: its callback frees */
  update_ref(op->u);
}

static void send_cb(uv_udp_send_t *req, int status) {
  sendop *op = req->data;
  if (op->b) {
    lua_State *S = loom__wake_stack(op->rt, op->b->t, 3);
    int n = 0;
    if (S && status < 0) {
      lua_pushnil(S);
      lua_pushfstring(S, "%s: %s", uv_err_name(status), uv_strerror(status));
      lua_pushstring(S, uv_err_name(status));
      n = 3;
    } else if (S) {
      lua_pushboolean(S, 1);
      n = 1;
    }
    loom__wake(op->rt, op->b, n, LOOM_WOKE_DONE);
    update_ref(op->u);
  }
  free(op);
}

/* sock:send(data, host, port) -> true | fail */
static int u_send(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  udp *u = to_udp(L, 1);
  struct sockaddr_storage ss;
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  uv_buf_t buf;
  sendop *op;
  loom_block *b;
  int err;
  check_addr(L, 3, &ss);
  if (!u)
    return closed_fail(L);
  if (len > UDP_RECV_SIZE)
    return fail_addr(L, UV_EMSGSIZE, (const struct sockaddr *)&ss);
  buf = uv_buf_init((char *)data, (unsigned)len);
  err = uv_udp_try_send(&u->h, &buf, 1, (const struct sockaddr *)&ss);
  if (err >= 0) {
    /* The send bound an unbound socket: replies can arrive now. */
    start_reading(u);
    lua_pushboolean(L, 1);
    return 1;
  }
  if (err != UV_EAGAIN && err != UV_ENOSYS)
    return fail_addr(L, err, (const struct sockaddr *)&ss);
  /* The kernel's buffer is full (or sends are queued): wait for room. */
  loom__check_block(L, rt);
  op = malloc(sizeof *op + len);
  if (!op)
    return luaL_error(L, "not enough memory");
  b = loom__block_new(rt, L, "udp send");
  op->rt = rt;
  op->u = u;
  op->b = b;
  op->len = len;
  memcpy(op->data, data, len);
  op->req.data = op;
  buf = uv_buf_init(op->data, (unsigned)len);
  err = uv_udp_send(&op->req, &u->h, &buf, 1, (const struct sockaddr *)&ss, send_cb);
  if (err < 0) {
    loom__block_abort(rt, b);
    free(op);
    return fail_addr(L, err, (const struct sockaddr *)&ss);
  }
  start_reading(u);
  b->data = op;
  b->cancel = send_cancel;
  loom__waitq_push(&u->senders, &b->w);
  update_ref(u);
  return loom__suspend(L, rt, b);
}

/* ------------------------------------------------------------ receive */

static void recv_cancel(loom_runtime *rt, loom_block *b, int why) {
  udp *u = b->data;
  (void)rt;
  (void)why;
  update_ref(u); /* the wake already took b off u->receivers */
}

/* sock:receive([s]) -> data, host, port | fail (ETIMEDOUT, ECLOSED). A
 * queued datagram returns at once; receive(0) only polls the queue. */
static int u_receive(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  udp *u = to_udp(L, 1);
  double timeout = loom__opt_timeout(L, 2);
  loom_block *b;
  int err;
  if (!u)
    return closed_fail(L);
  if (u->qcount > 0) {
    dgram *d = &u->q[u->qhead];
    lua_pushlstring(L, d->data, d->len);
    push_addr(L, (const struct sockaddr *)&d->from);
    free(d->data);
    d->data = NULL;
    u->qbytes -= d->len;
    u->qhead = (u->qhead + 1) % UDP_QUEUE_MAX;
    u->qcount--;
    return 3;
  }
  if (u->receivers.count > 0)
    return luaL_error(L, "another tasklet is already receiving on this socket");
  if ((err = start_reading(u)) < 0)
    return loom__fail_uv(L, err, NULL);
  if (timeout == 0)
    return loom__fail(L, "ETIMEDOUT", "timed out");
  loom__check_block(L, rt);
  b = loom__block_new(rt, L, "udp receive");
  b->data = u;
  b->cancel = recv_cancel;
  loom__waitq_push(&u->receivers, &b->w);
  loom__block_timeout(rt, b, timeout);
  update_ref(u);
  return loom__suspend(L, rt, b);
}

/* ------------------------------------------------------------ the rest */

/* sock:sockname() -> host, port | fail */
static int u_sockname(lua_State *L) {
  udp *u = to_udp(L, 1);
  struct sockaddr_storage ss;
  int len = sizeof ss, err;
  if (!u)
    return closed_fail(L);
  err = uv_udp_getsockname(&u->h, (struct sockaddr *)&ss, &len);
  if (err < 0)
    return loom__fail_uv(L, err, NULL);
  push_addr(L, (const struct sockaddr *)&ss);
  return 2;
}

/* sock:close() -> true; a second close is harmless. */
static int u_close(lua_State *L) {
  udp *u = to_udp(L, 1);
  if (u)
    udp_close(u);
  lua_pushboolean(L, 1);
  return 1;
}

/* __gc and __close. */
static int u_gc(lua_State *L) {
  udp *u = *(udp **)luaL_checkudata(L, 1, UDP_MT);
  if (u)
    udp_close(u);
  return 0;
}

/* #sock: datagrams waiting in the queue. */
static int u_len(lua_State *L) {
  udp *u = to_udp(L, 1);
  lua_pushinteger(L, u ? (lua_Integer)u->qcount : 0);
  return 1;
}

/* sock:dropped() -> how many datagrams the full queue dropped. */
static int u_dropped(lua_State *L) {
  udp *u = to_udp(L, 1);
  lua_pushinteger(L, u ? (lua_Integer)u->dropped : 0);
  return 1;
}

static int u_tostring(lua_State *L) {
  udp *u = to_udp(L, 1);
  if (u)
    lua_pushfstring(L, "loom.udp (%d queued): %p", (int)u->qcount, (void *)u);
  else
    lua_pushfstring(L, "loom.udp (closed): %p", lua_touserdata(L, 1));
  return 1;
}

void loom__open_udp(lua_State *L, loom_runtime *rt) {
  static const luaL_Reg funcs[] = {{"bind", l_bind}, {"open", l_open}, {NULL, NULL}};
  static const luaL_Reg methods[] = {{"send", u_send},         {"receive", u_receive},
                                     {"sockname", u_sockname}, {"close", u_close},
                                     {"dropped", u_dropped},   {NULL, NULL}};
  luaL_newmetatable(L, UDP_MT);
  lua_newtable(L);
  loom__setfuncs(L, rt, methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, u_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, u_gc);
  lua_setfield(L, -2, "__close");
  lua_pushcfunction(L, u_len);
  lua_setfield(L, -2, "__len");
  lua_pushcfunction(L, u_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
  lua_newtable(L);
  loom__setfuncs(L, rt, funcs);
  lua_setfield(L, -2, "udp");
}
