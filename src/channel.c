/*
 * channel.c - loom.channel([capacity]) and loom.select(cases [, s]).
 *
 * Capacity 0 is a Stackless rendezvous: a value passes straight from the
 * sender's stack to the receiver's. Buffered values live in the userdata's
 * user value table (a ring). A waiting sender keeps its value on its own
 * stack (vL, vidx) until a receiver takes it, so a send that fails or times
 * out delivered nothing, and a receive that times out consumed nothing.
 */
#include <stdlib.h>
#include <string.h>

#include "loom_int.h"

#define CHANNEL_MT "loom.channel"
#define EXCEPTION_MT "loom.channel_exception"

enum { W_SEND = 1, W_RECV = 2 };

typedef struct channel {
  uint32_t magic; /* LOOM_MAGIC(LOOM_MT_CHANNEL) */
  loom_waitq recvq, sendq;
  lua_Integer cap, count, head; /* ring: slots head+1 .. head+count (mod cap) */
  lua_Integer nback, bfirst;    /* values given back by killed receivers, FIFO at
                                 * keys -(bfirst+1) .. -(bfirst+nback) */
  int closed;
} channel;

#define check_channel(L, idx) \
  ((channel *)loom__checkud_sized((L), (idx), LOOM_MT_CHANNEL, sizeof(channel), CHANNEL_MT))

/* ------------------------------------------------------------ buffer */

static void buf_push(lua_State *L, channel *ch, int ud, int vidx) {
  lua_getiuservalue(L, ud, 1);
  lua_pushvalue(L, vidx);
  lua_rawseti(L, -2, (ch->head + ch->count) % ch->cap + 1);
  lua_pop(L, 1);
  ch->count++;
}

/* Pushes the oldest buffered value. */
static void buf_pop(lua_State *L, channel *ch, int ud) {
  lua_getiuservalue(L, ud, 1);
  lua_rawgeti(L, -1, ch->head + 1);
  lua_pushnil(L);
  lua_rawseti(L, -3, ch->head + 1);
  lua_remove(L, -2);
  ch->head = (ch->head + 1) % ch->cap;
  ch->count--;
}

/* ------------------------------------------------------------ hand-over */

/* Is the value on top an exception sent with send_exception? Then raise. */
static void check_exception(lua_State *L) {
  if (lua_type(L, -1) == LUA_TUSERDATA && luaL_testudata(L, -1, EXCEPTION_MT)) {
    lua_getiuservalue(L, -1, 1);
    lua_error(L);
  }
}

static int is_exception(lua_State *L, int idx) {
  return lua_type(L, idx) == LUA_TUSERDATA && luaL_testudata(L, idx, EXCEPTION_MT) != NULL;
}

/* Gives the value at L[vidx] to a waiting receiver w. */
static void give(loom_runtime *rt, lua_State *L, int vidx, loom_wait *w) {
  loom_block *b = w->block;
  int n = 0;
  lua_State *S = loom__wake_stack(rt, b->t, 2);
  if (!S) {
    loom__wake(rt, b, 0, LOOM_WOKE_DONE);
    return;
  }
  if (is_exception(L, vidx)) {
    /* The receiver raises it at its waiting point. */
    lua_getiuservalue(L, vidx, 1);
    lua_xmove(L, S, 1);
    b->t->flags |= LOOM_T_RAISE;
    loom__wake(rt, b, 1, LOOM_WOKE_DONE);
    return;
  }
  if (w->index) {
    lua_pushinteger(S, w->index);
    n++;
  }
  lua_pushvalue(L, vidx);
  lua_xmove(L, S, 1);
  if (!(b->t->flags & LOOM_T_MAIN)) {
    b->t->flags |= LOOM_T_HANDED;
    b->t->undo = w->index ? LOOM_UNDO_SELECT : LOOM_UNDO_RECEIVE;
  }
  loom__wake(rt, b, n + 1, LOOM_WOKE_DONE);
}

/* Takes the value of a waiting sender w onto L and wakes the sender. */
static void take(loom_runtime *rt, lua_State *L, loom_wait *w) {
  loom_block *b = w->block;
  lua_State *S;
  lua_checkstack(w->vL, 1);
  lua_pushvalue(w->vL, w->vidx);
  lua_xmove(w->vL, L, 1);
  S = loom__wake_stack(rt, b->t, 1);
  if (!S) {
    loom__wake(rt, b, 0, LOOM_WOKE_DONE);
    return;
  }
  if (w->index)
    lua_pushinteger(S, w->index);
  else
    lua_pushboolean(S, 1);
  /* The value is delivered: a kill or deadline arriving before the sender
   * runs must not make the send look failed; it waits for the next wait. */
  if (!(b->t->flags & LOOM_T_MAIN))
    b->t->undo = LOOM_UNDO_KEEP;
  loom__wake(rt, b, 1, LOOM_WOKE_DONE);
}

static int fail_closed(lua_State *L) { return loom__fail(L, "ECLOSED", "channel closed"); }

/* Wakes w because the channel closed. */
static void wake_closed(loom_runtime *rt, loom_wait *w) {
  loom_block *b = w->block;
  lua_State *S = loom__wake_stack(rt, b->t, 4);
  int n = 0;
  if (S) {
    if (w->index) {
      lua_pushinteger(S, w->index);
      n++;
    }
    lua_pushnil(S);
    lua_pushliteral(S, "ECLOSED: channel closed");
    lua_pushliteral(S, "ECLOSED");
    n += 3;
  }
  loom__wake(rt, b, n, LOOM_WOKE_CLOSE);
}

/* ------------------------------------------------------------ operations */

/* Tries to complete a send of L[vidx] at once: 1 done, 0 would block. */
static int try_send(loom_runtime *rt, lua_State *L, channel *ch, int ud, int vidx) {
  if (ch->recvq.head) {
    give(rt, L, vidx, loom__waitq_pop(&ch->recvq));
    return 1;
  }
  if (ch->count < ch->cap) {
    buf_push(L, ch, ud, vidx);
    return 1;
  }
  return 0;
}

/* Tries to receive at once: pushes the value and returns 1, or 0. */
static int try_receive(loom_runtime *rt, lua_State *L, channel *ch, int ud) {
  if (ch->nback > 0) {
    /* A value a killed receiver gave back comes first: it was sent first. */
    lua_Integer k = -(++ch->bfirst);
    lua_getiuservalue(L, ud, 1);
    lua_rawgeti(L, -1, k);
    lua_pushnil(L);
    lua_rawseti(L, -3, k);
    lua_remove(L, -2);
    if (--ch->nback == 0)
      ch->bfirst = 0;
    return 1;
  }
  if (ch->count > 0) {
    buf_pop(L, ch, ud);
    if (ch->sendq.head) {
      /* Room was made: the oldest waiting sender's value moves in. */
      loom_wait *w = loom__waitq_pop(&ch->sendq);
      int top = lua_gettop(L);
      take(rt, L, w);
      buf_push(L, ch, ud, top + 1);
      lua_settop(L, top);
    }
    return 1;
  }
  if (ch->sendq.head) {
    take(rt, L, loom__waitq_pop(&ch->sendq));
    return 1;
  }
  return 0;
}

static int ch_send(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  channel *ch = check_channel(L, 1);
  double timeout;
  loom_block *b;
  luaL_argcheck(L, !lua_isnoneornil(L, 2), 2, "nil is not a value that can be sent");
  timeout = loom__opt_timeout(L, 3);
  if (ch->closed)
    return fail_closed(L);
  if (try_send(rt, L, ch, 1, 2)) {
    lua_pushboolean(L, 1);
    return 1;
  }
  if (timeout == 0)
    return loom__fail(L, "ETIMEDOUT", "timed out");
  loom__check_block(L, rt);
  b = loom__block_new(rt, L, "channel send");
  b->w.kind = W_SEND;
  b->w.vL = L;
  b->w.vidx = 2;
  loom__waitq_push(&ch->sendq, &b->w);
  loom__block_timeout(rt, b, timeout);
  return loom__suspend(L, rt, b);
}

static int ch_send_exception(lua_State *L) {
  luaL_checkany(L, 2);
  lua_settop(L, 3);
  /* The error travels in a private box, so any value (even nil) can be sent. */
  lua_newuserdatauv(L, 0, 1);
  lua_pushvalue(L, 2);
  lua_setiuservalue(L, -2, 1);
  luaL_setmetatable(L, EXCEPTION_MT);
  lua_replace(L, 2);
  return ch_send(L);
}


static int ch_receive(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  channel *ch = check_channel(L, 1);
  double timeout = loom__opt_timeout(L, 2);
  loom_block *b;
  if (try_receive(rt, L, ch, 1)) {
    check_exception(L);
    return 1;
  }
  if (ch->closed)
    return fail_closed(L);
  if (timeout == 0)
    return loom__fail(L, "ETIMEDOUT", "timed out");
  loom__check_block(L, rt);
  b = loom__block_new(rt, L, "channel receive");
  b->w.kind = W_RECV;
  loom__waitq_push(&ch->recvq, &b->w);
  loom__block_timeout(rt, b, timeout);
  return loom__suspend(L, rt, b);
}

static int ch_close(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  channel *ch = check_channel(L, 1);
  loom_wait *w;
  if (ch->closed)
    return 0;
  ch->closed = 1;
  while ((w = loom__waitq_pop(&ch->recvq)) != NULL)
    wake_closed(rt, w);
  while ((w = loom__waitq_pop(&ch->sendq)) != NULL)
    wake_closed(rt, w);
  return 0;
}

/* ch:iter(): for v in ch:iter() do ... end - until closed and drained. */
static int iter_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  /* receive's results are on top: a value, or the fail triple. */
  if (lua_gettop(L) >= 3 && lua_isnil(L, -3) && lua_type(L, -1) == LUA_TSTRING)
    return 0;
  return 1;
}

static int iter_next(lua_State *L) {
  lua_settop(L, 0);
  lua_pushvalue(L, lua_upvalueindex(3));
  lua_pushvalue(L, lua_upvalueindex(2));
  lua_callk(L, 1, LUA_MULTRET, 0, iter_k);
  return iter_k(L, LUA_OK, 0);
}

static int ch_iter(lua_State *L) {
  luaL_checkudata(L, 1, CHANNEL_MT);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_pushvalue(L, 1);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_pushcclosure(L, ch_receive, 1);
  lua_pushcclosure(L, iter_next, 3);
  return 1;
}

static int ch_len(lua_State *L) {
  channel *ch = check_channel(L, 1);
  lua_pushinteger(L, ch->count + ch->nback);
  return 1;
}

/* Properties: any key that is not a method (called with methods, key). */
static int ch_props(lua_State *L) {
  channel *ch = check_channel(L, 1);
  const char *k = lua_tostring(L, 2);
  if (!k)
    lua_pushnil(L);
  else if (strcmp(k, "closed") == 0)
    lua_pushboolean(L, ch->closed);
  else if (strcmp(k, "balance") == 0)
    lua_pushinteger(L, ch->sendq.count - ch->recvq.count);
  else if (strcmp(k, "capacity") == 0)
    lua_pushinteger(L, ch->cap);
  else
    lua_pushnil(L);
  return 1;
}

static int ch_tostring(lua_State *L) {
  channel *ch = check_channel(L, 1);
  lua_pushfstring(L, "loom.channel (%I/%I%s): %p", ch->count, ch->cap, ch->closed ? ", closed" : "",
                  (void *)ch);
  return 1;
}

static int l_channel(lua_State *L) {
  lua_Integer cap = luaL_optinteger(L, 1, 0);
  channel *ch;
  luaL_argcheck(L, cap >= 0, 1, "capacity must not be negative");
  ch = lua_newuserdatauv(L, sizeof *ch, 1);
  memset(ch, 0, sizeof *ch);
  ch->magic = LOOM_MAGIC(LOOM_MT_CHANNEL);
  ch->cap = cap;
  lua_newtable(L);
  lua_setiuservalue(L, -2, 1);
  luaL_setmetatable(L, CHANNEL_MT);
  return 1;
}

/* ------------------------------------------------------------ select */

static int l_select(lua_State *L) {
  loom_runtime *rt = loom__rt(L);
  double timeout;
  int n, i, start, top;
  loom_block *b;
  luaL_checktype(L, 1, LUA_TTABLE);
  timeout = loom__opt_timeout(L, 2);
  lua_settop(L, 1);
  n = (int)luaL_len(L, 1);
  luaL_argcheck(L, n > 0, 1, "no cases");
  luaL_checkstack(L, 2 * n + 8, "too many cases");
  /* Stack: 1 = cases, then for case i: 2i = channel, 2i+1 = value. */
  for (i = 1; i <= n; i++) {
    const char *op;
    if (lua_rawgeti(L, 1, i) != LUA_TTABLE)
      return luaL_error(L, "bad argument #1 to 'select' (case %d is not a table)", i);
    lua_rawgeti(L, -1, 1);
    op = lua_tostring(L, -1);
    if (!op || (strcmp(op, "send") != 0 && strcmp(op, "receive") != 0))
      return luaL_error(L, "bad argument #1 to 'select' (case %d: \"send\" or \"receive\" expected)",
                        i);
    lua_rawgeti(L, -2, 2);
    if (!luaL_testudata(L, -1, CHANNEL_MT))
      return luaL_error(L, "bad argument #1 to 'select' (case %d: loom.channel expected, got %s)",
                        i, luaL_typename(L, -1));
    if (op[0] == 's') {
      lua_rawgeti(L, -3, 3);
      if (lua_isnil(L, -1))
        return luaL_error(L, "bad argument #1 to 'select' (case %d: nil is not a value)", i);
    } else
      lua_pushnil(L);
    lua_remove(L, -3);
    lua_remove(L, -3);
  }
  top = lua_gettop(L);
  /* Fair among the ready cases: start the scan at a random case. */
  /* xorshift: the switch counter alone repeats in a loop without switches. */
  rt->rand ^= rt->rand << 13;
  rt->rand ^= rt->rand >> 7;
  rt->rand ^= rt->rand << 17;
  start = (int)(rt->rand % (uint64_t)n);
  for (i = 0; i < n; i++) {
    int c = (start + i) % n + 1, chi = 2 * c, vi = 2 * c + 1;
    channel *ch = lua_touserdata(L, chi);
    int is_send = !lua_isnil(L, vi);
    if (ch->closed && (is_send || (ch->count == 0 && ch->nback == 0 && !ch->sendq.head))) {
      lua_pushinteger(L, c);
      lua_pushnil(L);
      lua_pushliteral(L, "ECLOSED: channel closed");
      lua_pushliteral(L, "ECLOSED");
      return 4;
    }
    if (is_send) {
      if (try_send(rt, L, ch, chi, vi)) {
        lua_pushinteger(L, c);
        return 1;
      }
    } else if (try_receive(rt, L, ch, chi)) {
      lua_pushinteger(L, c);
      lua_insert(L, -2);
      check_exception(L);
      return 2;
    }
  }
  if (timeout == 0)
    return loom__fail(L, "ETIMEDOUT", "timed out");
  loom__check_block(L, rt);
  b = loom__block_new(rt, L, "select");
  if (n > 1) {
    b->extra = calloc((size_t)n - 1, sizeof *b->extra);
    if (!b->extra) {
      loom__wake(rt, b, 0, LOOM_WOKE_DONE);
      return luaL_error(L, "not enough memory");
    }
    b->nextra = n - 1;
  }
  for (i = 1; i <= n; i++) {
    loom_wait *w = i == 1 ? &b->w : &b->extra[i - 2];
    channel *ch = lua_touserdata(L, 2 * i);
    w->block = b;
    w->index = i;
    if (!lua_isnil(L, 2 * i + 1)) {
      w->kind = W_SEND;
      w->vL = L;
      w->vidx = 2 * i + 1;
      loom__waitq_push(&ch->sendq, w);
    } else {
      w->kind = W_RECV;
      loom__waitq_push(&ch->recvq, w);
    }
  }
  (void)top;
  loom__block_timeout(rt, b, timeout);
  return loom__suspend(L, rt, b);
}

/* The value at vidx returns to the channel at frame index chi: to a waiting
 * receiver if there is one, else ahead of the buffered values. */
static void give_back(lua_State *L, loom_runtime *rt, int chi, int vidx) {
  channel *ch = luaL_testudata(L, chi, CHANNEL_MT);
  if (!ch)
    return;
  if (ch->recvq.head) {
    give(rt, L, vidx, loom__waitq_pop(&ch->recvq));
    return;
  }
  lua_getiuservalue(L, chi, 1);
  lua_pushvalue(L, vidx);
  lua_rawseti(L, -2, -(ch->bfirst + (++ch->nback)));
  lua_pop(L, 1);
}

void loom__undo(lua_State *L, loom_runtime *rt, int kind, int nvals) {
  int top = lua_gettop(L); /* the error */
  if (kind == LOOM_UNDO_RECEIVE && nvals >= 1)
    give_back(L, rt, 1, top - 1);
  else if (kind == LOOM_UNDO_SELECT && nvals >= 2) {
    int i = (int)lua_tointeger(L, top - 2);
    if (i > 0)
      give_back(L, rt, 2 * i, top - 1);
  } else if (kind == LOOM_UNDO_SEMAPHORE)
    loom__semaphore_giveback(L, rt, 1);
  lua_settop(L, top);
}

void loom__open_channel(lua_State *L, loom_runtime *rt) {
  static const luaL_Reg funcs[] = {{"channel", l_channel}, {"select", l_select}, {NULL, NULL}};
  static const luaL_Reg meta[] = {{"__len", ch_len}, {"__tostring", ch_tostring}, {NULL, NULL}};
  static const luaL_Reg methods[] = {{"send", ch_send},
                                     {"receive", ch_receive},
                                     {"close", ch_close},
                                     {"send_exception", ch_send_exception},
                                     {NULL, NULL}};
  luaL_newmetatable(L, CHANNEL_MT);
  loom__fast_mt(L, rt, LOOM_MT_CHANNEL);
  loom__setfuncs(L, rt, meta);
  lua_newtable(L);
  loom__setfuncs(L, rt, methods);
  lua_pushlightuserdata(L, rt);
  lua_pushcclosure(L, ch_iter, 1);
  lua_setfield(L, -2, "iter");
  loom__set_methods(L, rt, ch_props);
  lua_pop(L, 1);
  luaL_newmetatable(L, EXCEPTION_MT);
  lua_pop(L, 1);
  loom__setfuncs(L, rt, funcs);
}
