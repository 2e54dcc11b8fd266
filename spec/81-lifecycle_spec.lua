-- spec/81-lifecycle_spec.lua - lifecycle and cancellation (issue 7):
-- double close; close with 10,000 writes in flight; close while connecting;
-- close wakes blocked readers; kill during every kind of wait (the killed
-- tasklet is never resumed again, its handles are released, and nothing it
-- waited for is lost); timers of equal deadline fire in start order;
-- sleep(0) never runs synchronously; huge and NaN timeouts.
--
-- Every test ends with the tasklets, handles and fds it started with
-- (spec/support/clean.lua). I/O cases run only where the module exists.
-- Run: build-rel/loom /usr/bin/busted spec/81-lifecycle_spec.lua
local loom = require "loom"
local clean = require "spec.support.clean"

local BIN = os.getenv("LOOM_BIN") or (arg and arg[-1]) or "build/loom"

local function noop() end

-- Yields until pred() or `s` seconds pass; returns pred().
local function wait_for(pred, s)
  local deadline = loom.now() + (s or 2)
  while not pred() and loom.now() < deadline do
    loom.sleep(0.001)
  end
  return pred()
end

local function is_fail(code, a, b, c)
  return a == nil and type(b) == "string" and c == code
end

-- A connected pair: conn (client) and peer (accepted).
local function tcp_pair(opts)
  local srv = assert(loom.tcp.listen("127.0.0.1", 0))
  local _, port = srv:sockname()
  local conn
  local t = loom.spawn(function() conn = assert(loom.tcp.connect("127.0.0.1", port, opts)) end)
  local peer = assert(srv:accept(5))
  assert(t:join(5))
  srv:close()
  return conn, peer
end

-- A listener whose backlog is full, so that a further connect stays in
-- progress (SYN unanswered) until it is cancelled. Returns port, close().
local function stuck_listener()
  local srv = assert(loom.tcp.listen("127.0.0.1", 0, { backlog = 1 }))
  local _, port = srv:sockname()
  local fillers = {}
  for _ = 1, 64 do
    local c = loom.tcp.connect("127.0.0.1", port, { timeout = 0.05 })
    if not c then break end
    fillers[#fillers + 1] = c
  end
  return port, function()
    for _, c in ipairs(fillers) do c:close() end
    srv:close()
  end
end

-- Runs `code` with the loom CLI in a child; returns ok, status, stderr.
local function child(code)
  local script = os.tmpname()
  local errf = os.tmpname()
  local f = assert(io.open(script, "w"))
  f:write(code)
  f:close()
  local ok, _, status = os.execute(("timeout -k 5 60 %s %s </dev/null >/dev/null 2>%s")
    :format(BIN, script, errf))
  local ef = io.open(errf)
  local err = ef and ef:read("a") or ""
  if ef then ef:close() end
  os.remove(script)
  os.remove(errf)
  return ok, status, err
end

------------------------------------------------------------------------
describe("double close", function()
  clean.around_each(before_each, after_each)

  local function twice(obj)
    assert.is_true(obj:close() ~= false)
    local ok, err = pcall(obj.close, obj)
    assert(ok, "second close raised: " .. tostring(err))
    -- and once more through __close, as a <close> scope would
    local mt = getmetatable(obj)
    if type(mt) == "table" and rawget(mt, "__close") then
      local ok2, err2 = pcall(rawget(mt, "__close"), obj)
      assert(ok2, "__close after close raised: " .. tostring(err2))
    end
  end

  it("channel", function()
    local ch = loom.channel(2)
    twice(ch)
    assert.is_true(ch.closed)
    assert.is_true(is_fail("ECLOSED", ch:send(1)))
  end)

  if loom.tcp then
    it("tcp connection, its peer and a server", function()
      local conn, peer = tcp_pair()
      twice(conn)
      twice(peer)
      assert.is_true(conn:closed())
      assert.is_true(is_fail("ECLOSED", conn:read()))
      assert.is_true(is_fail("ECLOSED", conn:write("x")))
      local srv = assert(loom.tcp.listen("127.0.0.1", 0))
      twice(srv)
      assert.is_true(is_fail("ECLOSED", srv:accept(0)))
    end)

    it("a connection closed, then dropped and collected", function()
      for _ = 1, 20 do
        local conn, peer = tcp_pair()
        conn:close()
        peer:close()
      end
      collectgarbage()
      collectgarbage()
    end)

    it("a connection dropped without close is closed by the collector", function()
      for _ = 1, 20 do tcp_pair() end
    end)
  end

  if loom.udp then
    it("udp socket", function()
      local u = assert(loom.udp.bind("127.0.0.1", 0))
      twice(u)
      assert.is_true(is_fail("ECLOSED", u:send("x", "127.0.0.1", 9)))
    end)
  end

  if loom.fs then
    it("file", function()
      local p = os.tmpname()
      local f = assert(loom.fs.open(p, "w"))
      twice(f)
      assert.is_true(is_fail("ECLOSED", f:write("x")))
      os.remove(p)
    end)
  end

  if loom.process then
    it("process and its pipes", function()
      local p = assert(loom.process.spawn("true", {}, { stdin = "pipe", stdout = "pipe",
        stderr = "pipe" }))
      twice(p.stdin)
      twice(p.stdout)
      twice(p.stderr)
      assert(p:wait(5))
      twice(p)
    end)
  end

  if loom.signal then
    it("signal handler", function()
      local h = loom.signal.on("SIGWINCH", noop)
      assert.is_true(h:stop())
      assert.is_true(h:stop())
      assert.is_false(h:active())
    end)
  end

  it("call_later handle, looping_call, group, tasklet, deferred", function()
    local h = loom.call_later(10, noop)
    assert.is_true(h:cancel())
    assert.is_false(h:cancel())
    local lc = loom.looping_call(10, noop)
    lc:stop()
    lc:stop()
    local g = loom.group()
    g:spawn(function() loom.sleep(10) end)
    g:cancel()
    g:cancel()
    local t = loom.spawn(function() loom.sleep(10) end)
    loom.yield()
    t:kill()
    t:kill()
    assert.is_false((t:join(1)))
    t:kill()
    assert.is_false(t:alive())
    local d = loom.deferred()
    d:add_errback(noop)
    d:cancel()
    d:cancel()
  end)
end)

------------------------------------------------------------------------
if loom.tcp then
  describe("close with writes in flight", function()
    clean.around_each(before_each, after_each, 3)

    it("10,000 sequential writes: each returns exactly once, the blocked one with ECLOSED",
      function()
        local conn, peer = tcp_pair()
        conn:set_high_water(64 * 1024)
        local chunk = string.rep("w", 4096)
        local N = 10000
        local returns, outcomes = {}, { ok = 0, ECLOSED = 0, other = 0 }
        local writer = loom.spawn(function()
          for i = 1, N do
            local ok, _, code = conn:write(chunk)
            returns[i] = (returns[i] or 0) + 1
            if ok then outcomes.ok = outcomes.ok + 1
            elseif code == "ECLOSED" then outcomes.ECLOSED = outcomes.ECLOSED + 1
            else outcomes.other = outcomes.other + 1 end
          end
        end)
        -- nobody reads peer: the writer fills the kernel buffers and the
        -- queue, then waits
        assert(wait_for(function() return writer.status == "blocked" end, 5))
        assert.is_true(conn:write_queue_size() > 0)
        conn:close()
        assert(writer:join(5))
        for i = 1, N do
          assert(returns[i] == 1, ("write %d returned %s times"):format(i, tostring(returns[i])))
        end
        assert.equal(N, outcomes.ok + outcomes.ECLOSED + outcomes.other)
        assert.is_true(outcomes.ok > 0)
        assert.is_true(outcomes.ECLOSED >= 1, "the blocked write did not get ECLOSED")
        assert.equal(0, outcomes.other)
        peer:close()
      end)

    it("10,000 tasklets writing at once: each returns exactly once", function()
      local conn, peer = tcp_pair()
      conn:set_high_water(16 * 1024)
      local chunk = string.rep("v", 8192)
      local N = 10000
      local count, kinds = {}, {}
      local ts = {}
      for i = 1, N do
        ts[i] = loom.spawn(function()
          local ok, a, b, c = pcall(conn.write, conn, chunk)
          local kind
          if not ok then
            kind = tostring(a):match("already writing") and "busy" or ("raised " .. tostring(a))
          elseif a then kind = "ok"
          else kind = c or tostring(b) end
          count[i] = (count[i] or 0) + 1
          kinds[kind] = (kinds[kind] or 0) + 1
        end)
      end
      assert(wait_for(function()
        local waiting = 0
        for i = 1, N do if count[i] then waiting = waiting + 1 end end
        return waiting >= N - 1
      end, 10))
      conn:close()
      for i = 1, N do ts[i]:join(5) end
      local total = 0
      for i = 1, N do
        assert(count[i] == 1, ("tasklet %d's write returned %s times"):format(i, tostring(count[i])))
        total = total + 1
      end
      assert.equal(N, total)
      for k in pairs(kinds) do
        assert(k == "ok" or k == "busy" or k == "ECLOSED", "unexpected outcome " .. k)
      end
      peer:close()
    end)

    it("the peer sees at most what was accepted, then EOF", function()
      local conn, peer = tcp_pair()
      local sent = 0
      for _ = 1, 100 do
        if conn:write(string.rep("z", 1000)) then sent = sent + 1000 end
      end
      conn:close()
      local got = peer:read_all()
      assert.is_true(type(got) == "string" and #got <= sent)
      peer:close()
    end)
  end)

  describe("close while connecting", function()
    clean.around_each(before_each, after_each, 3)

    it("a connect timeout closes the half-open socket", function()
      local port, done = stuck_listener()
      local c, err, code = loom.tcp.connect("127.0.0.1", port, { timeout = 0.05 })
      assert.is_nil(c)
      assert.equal("ETIMEDOUT", code, err)
      done()
    end)

    it("loom.timeout around a connect", function()
      local port, done = stuck_listener()
      local a, b, code = loom.timeout(0.05, loom.tcp.connect, "127.0.0.1", port)
      assert.is_nil(a)
      assert.equal("ETIMEDOUT", code, b)
      done()
    end)

    it("the runtime shutting down with connects in flight does not crash", function()
      local ok, status, err = child([[
        local loom = require "loom"
        local srv = assert(loom.tcp.listen("127.0.0.1", 0, { backlog = 1 }))
        local _, port = srv:sockname()
        for _ = 1, 64 do
          if not loom.tcp.connect("127.0.0.1", port, { timeout = 0.05 }) then break end
        end
        for _ = 1, 5 do
          loom.spawn(function() loom.tcp.connect("127.0.0.1", port) end)
        end
        loom.sleep(0.05)
        os.exit(0, true) -- closes the state: the runtime shuts down now
      ]])
      assert(ok, ("exit %s: %s"):format(tostring(status), err))
      assert.is_nil(err:match("Sanitizer"), err)
    end)
  end)

  describe("close wakes a blocked", function()
    clean.around_each(before_each, after_each, 3)

    local function closes(start, close)
      local res
      local t = loom.spawn(function() res = table.pack(start()) end)
      assert(wait_for(function() return t.status == "blocked" end))
      close()
      assert(t:join(2))
      return res
    end

    it("tcp reader, with ECLOSED", function()
      local conn, peer = tcp_pair()
      local r = closes(function() return conn:read() end, function() conn:close() end)
      assert.is_nil(r[1])
      assert.equal("ECLOSED", r[3])
      peer:close()
    end)

    it("tcp line reader and a writer at the same time", function()
      local conn, peer = tcp_pair()
      conn:set_high_water(1024)
      local rr, wr
      local reader = loom.spawn(function() rr = table.pack(conn:read_line()) end)
      local writer = loom.spawn(function()
        local big = string.rep("q", 1 << 20)
        while true do
          wr = table.pack(conn:write(big))
          if not wr[1] then return end
        end
      end)
      assert(wait_for(function() return reader.status == "blocked" and writer.status == "blocked" end, 5))
      conn:close()
      assert(reader:join(2))
      assert(writer:join(2))
      assert.equal("ECLOSED", rr[3])
      assert.equal("ECLOSED", wr[3])
      peer:close()
    end)

    it("server accept", function()
      local srv = assert(loom.tcp.listen("127.0.0.1", 0))
      local r = closes(function() return srv:accept() end, function() srv:close() end)
      assert.is_nil(r[1])
      assert.equal("ECLOSED", r[3])
    end)

    it("channel receivers and senders", function()
      local ch = loom.channel()
      local r1, r2
      local a = loom.spawn(function() r1 = table.pack(ch:receive()) end)
      local b = loom.spawn(function() r2 = table.pack(ch:receive()) end)
      loom.yield()
      ch:close()
      assert(a:join(1))
      assert(b:join(1))
      assert.equal("ECLOSED", r1[3])
      assert.equal("ECLOSED", r2[3])
      local ch2 = loom.channel()
      local r = closes(function() return ch2:send(1) end, function() ch2:close() end)
      assert.equal("ECLOSED", r[3])
    end)

    if loom.udp then
      it("udp receiver", function()
        local u = assert(loom.udp.bind("127.0.0.1", 0))
        local r = closes(function() return u:receive() end, function() u:close() end)
        assert.is_nil(r[1])
        assert.equal("ECLOSED", r[3])
      end)
    end

    if loom.process then
      it("pipe reader, and a process waiter on close()", function()
        local p = assert(loom.process.spawn("sleep", { "5" }, { stdin = "ignore",
          stdout = "pipe", stderr = "ignore" }))
        local r = closes(function() return p.stdout:read() end, function() p.stdout:close() end)
        assert.is_nil(r[1])
        assert.equal("ECLOSED", r[3])
        local w = closes(function() return p:wait() end, function() p:kill("SIGKILL") end)
        assert.is_not_nil(w[1])
        p:close()
      end)
    end
  end)
end

------------------------------------------------------------------------
-- kill during a wait: the tasklet dies at its waiting point, its <close>
-- variables run once, the code after the wait never runs, and whatever it
-- waited for is not consumed by the dead tasklet.
describe("kill during", function()
  clean.around_each(before_each, after_each, 3)

  -- start() -> the blocking call (runs in the tasklet);
  -- later() -> makes the awaited thing happen after the kill (optional).
  local function kill_during(start, later)
    local st = { closed = 0 }
    local t = loom.spawn(function()
      local _ <close> = setmetatable({}, { __close = function(_, e)
        st.closed = st.closed + 1
        st.err = e
      end })
      st.started = true
      st.result = table.pack(start())
      st.resumed = true
    end)
    -- run it up to its wait; no poll happens in between, so even a
    -- thread-pool operation is still in flight when the kill lands
    loom.yield()
    assert(st.started, "the tasklet did not start")
    assert.equal("blocked", t.status)
    t:kill("lifecycle kill")
    local ok, err = t:join(2)
    assert.is_false(ok)
    assert.is_true(loom.TaskletExit:is(err), "join gave " .. tostring(err))
    assert.equal("dead", t.status)
    assert.equal(1, st.closed)
    assert.is_nil(st.resumed)
    if later then later() end
    loom.sleep(0.05)
    assert.is_nil(st.resumed, "the killed tasklet was resumed: " ..
      (st.result and tostring(st.result[1]) or "?"))
    assert.equal(1, st.closed)
    assert.equal("dead", t.status)
    return st
  end

  it("sleep", function()
    local timers = loom.stats().timers
    kill_during(function() return loom.sleep(10) end)
    assert.equal(timers, loom.stats().timers)
  end)

  it("loom.timeout around a sleep", function()
    kill_during(function() return loom.timeout(5, loom.sleep, 10) end)
  end)

  it("channel receive: a later send finds no receiver", function()
    local ch = loom.channel()
    kill_during(function() return ch:receive() end)
    local a, _, code = ch:send("v", 0.02)
    assert.is_nil(a)
    assert.equal("ETIMEDOUT", code)
    ch:close()
  end)

  it("channel send: the value is not delivered", function()
    local ch = loom.channel()
    kill_during(function() return ch:send("lost?") end)
    local a, _, code = ch:receive(0.02)
    assert.is_nil(a)
    assert.equal("ETIMEDOUT", code)
    assert.equal(0, ch.balance)
  end)

  it("select", function()
    local a, b = loom.channel(), loom.channel()
    kill_during(function() return loom.select({ { "receive", a }, { "send", b, 1 } }) end)
    assert.is_nil((b:receive(0.01)))
    assert.is_nil((a:send(1, 0.01)))
  end)

  it("event wait and semaphore acquire: the unit is not lost", function()
    local ev = loom.event()
    kill_during(function() return ev:wait() end, function() ev:set() end)
    local sem = loom.semaphore(0)
    kill_during(function() return sem:acquire() end, function() sem:release() end)
    assert.is_true(sem:acquire(0.1))
  end)

  it("join", function()
    local other = loom.spawn(function() loom.sleep(0.05) return "fine" end)
    kill_during(function() return other:join() end)
    local ok, v = other:join(2)
    assert.is_true(ok)
    assert.equal("fine", v)
  end)

  it("block_on: the Deferred still fires for its other callbacks", function()
    local d = loom.deferred()
    kill_during(function() return loom.block_on(d) end, function() d:callback(42) end)
    local got
    d:add_callback(function(v) got = v end)
    assert.equal(42, got)
  end)

  if loom.tcp then
    it("read: the data is kept for the next reader", function()
      local conn, peer = tcp_pair()
      kill_during(function() return conn:read() end, function() peer:write("kept") end)
      assert.equal("kept", conn:read_exactly(4))
      conn:close(); peer:close()
    end)

    it("write: the writer slot is released", function()
      local conn, peer = tcp_pair()
      conn:set_high_water(1024)
      local big = string.rep("k", 1 << 20)
      kill_during(function()
        while true do
          local ok, err = conn:write(big)
          if not ok then return ok, err end
        end
      end)
      local ok, err = pcall(conn.write, conn, "")
      assert(ok, err)
      conn:close(); peer:close()
    end)

    it("accept: the next accept gets the connection", function()
      local srv = assert(loom.tcp.listen("127.0.0.1", 0))
      local _, port = srv:sockname()
      kill_during(function() return srv:accept() end)
      local c = assert(loom.tcp.connect("127.0.0.1", port))
      local s = assert(srv:accept(2))
      s:close(); c:close(); srv:close()
    end)

    it("connect (in progress)", function()
      local port, done = stuck_listener()
      kill_during(function() return loom.tcp.connect("127.0.0.1", port) end)
      done()
    end)
  end

  if loom.udp then
    it("udp receive", function()
      local u = assert(loom.udp.bind("127.0.0.1", 0))
      local _, port = u:sockname()
      kill_during(function() return u:receive() end, function()
        local s = assert(loom.udp.open())
        s:send("late", "127.0.0.1", port)
        s:close()
      end)
      local data = u:receive(1)
      assert.equal("late", data)
      u:close()
    end)
  end

  if loom.dns then
    it("DNS resolve and reverse", function()
      kill_during(function() return loom.dns.resolve("localhost") end)
      kill_during(function() return loom.dns.reverse("127.0.0.1") end)
      loom.sleep(0.1) -- the thread-pool requests finish and free themselves
    end)
  end

  if loom.fs then
    it("fs operations", function()
      local p = os.tmpname()
      local f = assert(io.open(p, "w")); f:write(string.rep("y", 1 << 20)); f:close()
      kill_during(function() return loom.fs.read_file(p) end)
      kill_during(function() return loom.fs.stat(p) end)
      kill_during(function() return loom.fs.write_file(p .. ".w", "data") end)
      local fh = assert(loom.fs.open(p, "r"))
      kill_during(function() return fh:read(1 << 20) end)
      loom.sleep(0.1)
      assert.equal(string.rep("y", 10), fh:read(10)) -- the file still works
      fh:close()
      os.remove(p)
      os.remove(p .. ".w")
    end)
  end

  if loom.process then
    it("process wait", function()
      local p = assert(loom.process.spawn("sleep", { "5" }, { stdin = "ignore",
        stdout = "ignore", stderr = "ignore" }))
      kill_during(function() return p:wait() end)
      p:kill("SIGKILL")
      local code, sig = p:wait(5)
      assert.is_not_nil(code)
      assert.equal("SIGKILL", sig)
      p:close()
    end)
  end

  if loom.signal then
    it("signal wait", function()
      kill_during(function() return loom.signal.wait("SIGWINCH") end)
    end)
  end
end)

------------------------------------------------------------------------
describe("timers", function()
  clean.around_each(before_each, after_each)

  it("call_later timers of equal delay fire in start order", function()
    local order = {}
    for i = 1, 2000 do
      loom.call_later(0.01, function() order[#order + 1] = i end)
    end
    assert(wait_for(function() return #order == 2000 end, 5))
    for i = 1, 2000 do
      assert(order[i] == i, ("timer %d fired as number %d"):format(order[i], i))
    end
  end)

  it("sleepers of equal delay wake in start order", function()
    local order = {}
    local ts = {}
    for i = 1, 500 do
      ts[i] = loom.spawn(function() loom.sleep(0.01) order[#order + 1] = i end)
    end
    for i = 1, 500 do ts[i]:join() end
    for i = 1, 500 do assert.equal(i, order[i]) end
  end)

  it("timers of the same deadline, started from a timer callback, wait for the next pass", function()
    local fired, rearmed = 0, 0
    local function again()
      rearmed = rearmed + 1
      if rearmed < 1000 then loom.call_later(0, again) end
    end
    loom.call_later(0, again)
    local t = loom.spawn(function() fired = fired + 1 end)
    t:join()
    assert.equal(1, fired)
    assert(wait_for(function() return rearmed == 1000 end, 5))
  end)

  it("sleep(0) never returns synchronously", function()
    local order = {}
    loom.spawn(function() order[#order + 1] = "other" end)
    order[#order + 1] = "before"
    loom.sleep(0)
    order[#order + 1] = "after"
    assert.same({ "before", "other", "after" }, order)
    -- alone, it still switches
    local sw = loom.stats().switches
    loom.sleep(0)
    assert.is_true(loom.stats().switches > sw)
  end)

  it("call_later(0) never runs synchronously", function()
    local ran = false
    loom.call_later(0, function() ran = true end)
    assert.is_false(ran)
    assert(wait_for(function() return ran end))
  end)

  it("sleep(0) in reactor context raises 'cannot block'", function()
    local err
    loom.call_later(0, function()
      local ok, e = pcall(loom.sleep, 0)
      err = ok and "no error" or tostring(e)
    end)
    assert(wait_for(function() return err end))
    assert.matches("cannot block", err)
  end)
end)

describe("huge and NaN timeouts", function()
  clean.around_each(before_each, after_each)

  local function bad(fn, ...)
    local ok, err = pcall(fn, ...)
    assert.is_false(ok)
    assert.matches("bad argument", tostring(err))
  end

  -- starts fn(...) in a tasklet: it must still be waiting after a while
  -- (a huge timeout means "practically never"), and die cleanly when killed.
  local function waits(fn, ...)
    local args = table.pack(...)
    local t = loom.spawn(function() return fn(table.unpack(args, 1, args.n)) end)
    loom.sleep(0.02)
    assert.equal("blocked", t.status)
    t:kill()
    assert.is_false((t:join(1)))
  end

  it("NaN and negative seconds raise bad argument everywhere", function()
    local ch = loom.channel()
    for _, v in ipairs({ 0 / 0, -1, -1 / 0, math.mininteger }) do
      bad(loom.sleep, v)
      bad(loom.timeout, v, noop)
      bad(loom.call_later, v, noop)
      bad(loom.looping_call, v, noop)
      bad(ch.receive, ch, v)
      bad(ch.send, ch, 1, v)
      bad(loom.select, { { "receive", ch } }, v)
      bad(loom.event().wait, loom.event(), v)
      bad(loom.semaphore(0).acquire, loom.semaphore(0), v)
      local t = loom.spawn(noop)
      bad(t.join, t, v)
      local g = loom.group()
      bad(g.wait, g, v)
      local d = loom.deferred()
      bad(d.add_timeout, d, v)
      if loom.tcp then
        bad(loom.tcp.connect, "127.0.0.1", 1, { timeout = v })
      end
      if loom.signal then bad(loom.signal.wait, "SIGWINCH", v) end
    end
  end)

  it("huge seconds are clamped: the call waits (practically) forever", function()
    for _, v in ipairs({ 1e300, 2 ^ 53, 1 / 0 }) do
      waits(loom.sleep, v)
      local ch = loom.channel()
      waits(ch.receive, ch, v)
      waits(loom.select, { { "receive", ch } }, v)
      local ev = loom.event()
      waits(ev.wait, ev, v)
    end
  end)

  it("a huge deadline returns fn's results; a huge call_later stays armed", function()
    assert.equal(7, loom.timeout(1e300, function() return 7 end))
    assert.equal(8, loom.timeout(1 / 0, function() loom.sleep(0.001) return 8 end))
    local h = loom.call_later(1e300, noop)
    assert.is_true(h:active())
    assert.is_true(h:cancel())
    local t = loom.spawn(noop)
    assert.is_true((t:join(1e300)))
  end)
end)

------------------------------------------------------------------------
-- Regressions found by the reliability suite (docs/reliability.md lists
-- them); named after the bug.
describe("regressions", function()
  clean.around_each(before_each, after_each)

  it("nested loom.timeout: when both deadlines pass before the next wait, no stray Timeout "
    .. "is raised later", function()
    local t = loom.spawn(function()
      local r = table.pack(loom.timeout(0.002, function()
        return loom.timeout(0.003, function()
          local t0 = os.clock()
          while os.clock() - t0 < 0.01 do end -- both deadlines pass meanwhile
          loom.sleep(1)
        end)
      end))
      assert(r[1] == nil and r[3] == "ETIMEDOUT", "the outer loom.timeout did not time out")
      loom.sleep(0.005) -- an unrelated wait, outside both deadlines
      return "survived"
    end)
    local ok, v = t:join(2)
    assert(ok, "the tasklet died by " .. tostring(v))
    assert.equal("survived", v)
  end)

  it("loom.run inside a tasklet runs fn as a child tasklet and returns its results", function()
    local ok, a, b = pcall(loom.run, function(x)
      loom.sleep(0.001)
      return x, "child"
    end, 42)
    assert(ok, a)
    assert.equal(42, a)
    assert.equal("child", b)
    -- and its error comes back as the caller's error
    local ok2, err = pcall(loom.run, function() error("child failed", 0) end)
    assert.is_false(ok2)
    assert.equal("child failed", err)
  end)

  it("a tasklet's numeric error reaches its joiner as a number", function()
    local t = loom.spawn(function() error(42, 0) end)
    local ok, err = t:join()
    assert.is_false(ok)
    assert.equal("number", type(err))
    assert.equal(42, err)
  end)

  it("add_callback(nil) raises even after the last checked callback was collected (found by "
    .. "test/gcstress.sh)", function()
    do
      local d0 = loom.deferred()
      d0:add_callback(function() end)
      d0:add_errback(function() end)
    end
    collectgarbage()
    collectgarbage()
    local d = loom.deferred()
    assert.is_false((pcall(d.add_callback, d, nil)))
    assert.is_false((pcall(d.add_errback, d, nil)))
  end)

  it("d:add_timeout on something that is not a Deferred arms no timer", function()
    local timers = loom.stats().timers
    local d = loom.deferred()
    local ok = pcall(d.add_timeout, "not a deferred", 10)
    assert.is_false(ok)
    assert.equal(timers, loom.stats().timers)
  end)
end)


------------------------------------------------------------------------
-- Signals and shutdown (issue 7): the CLI with open servers and waiting
-- clients exits promptly on SIGTERM / SIGINT; SIGPIPE never kills.
if loom.process and loom.tcp then
  describe("signals and shutdown", function()
    clean.around_each(before_each, after_each, 3)

    local SERVER = [[
      local loom = require "loom"
      local srv = assert(loom.tcp.serve("127.0.0.1", 0, function(c)
        c:read() -- waits until the end
      end))
      local _, port = srv:sockname()
      local c = assert(loom.tcp.connect("127.0.0.1", port))
      loom.spawn(function() c:read() end) -- a client blocked in a read
      loom.spawn(function() loom.sleep(3600) end)
      io.stdout:write("READY\n")
      io.stdout:flush()
      loom.sleep(3600)
    ]]

    local function start(code)
      local script = os.tmpname()
      local f = assert(io.open(script, "w"))
      f:write(code)
      f:close()
      local p = assert(loom.process.spawn(BIN, { script }, { stdin = "ignore", stdout = "pipe",
        stderr = "pipe" }))
      local line = p.stdout:read_line({ max = 100 })
      assert.equal("READY", line)
      return p, script
    end

    for _, sig in ipairs({ "SIGTERM", "SIGINT" }) do
      it(sig .. " ends the CLI promptly with servers open and tasklets waiting", function()
        local p, script = start(SERVER)
        local t0 = loom.now()
        p:kill(sig)
        local code, signame = p:wait(5)
        local took = loom.now() - t0
        if not code then p:kill("SIGKILL"); p:wait(5) end
        local err = p.stderr:read_all() or ""
        p:close()
        os.remove(script)
        assert(code, sig .. " did not end the CLI within 5 s")
        assert(took < 2, ("%s took %.2f s"):format(sig, took))
        assert.is_nil(err:match("Sanitizer"), err)
        assert.is_nil(err:match("runtime error"), err)
        local _ = signame
      end)
    end

    it("a second SIGINT exits at once even if the first one is caught", function()
      local p, script = start([[
        local loom = require "loom"
        io.stdout:write("READY\n") io.stdout:flush()
        while true do pcall(loom.sleep, 3600) end -- swallows the interrupt
      ]])
      p:kill("SIGINT")
      loom.sleep(0.2)
      p:kill("SIGINT")
      local code = p:wait(3)
      if not code then p:kill("SIGKILL"); p:wait(5) end
      p.stderr:read_all()
      p:close()
      os.remove(script)
      assert(code, "the second SIGINT did not end the CLI")
    end)

    it("SIGPIPE never kills: writes to a reset connection and a closed pipe fail with a triple",
      function()
        local conn, peer = tcp_pair()
        peer:close()
        loom.sleep(0.01)
        local last
        for _ = 1, 100 do
          local ok, _, code = conn:write(string.rep("p", 65536))
          if not ok then last = code break end
          loom.sleep(0.001)
        end
        assert.is_not_nil(last, "writes to a closed peer never failed")
        conn:close()
        local p = assert(loom.process.spawn("true", {}, { stdin = "pipe", stdout = "ignore",
          stderr = "ignore" }))
        p:wait(5)
        local fail
        for _ = 1, 20 do
          local ok, _, code = p.stdin:write(string.rep("q", 65536))
          if not ok then fail = code break end
        end
        assert.is_not_nil(fail)
        p:close()
      end)
  end)
end
