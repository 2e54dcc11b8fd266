-- Specs for channels, select, events and semaphores (SPEC section 4).
-- Run: build/loom /usr/bin/busted spec/11-channel_spec.lua
-- Every example ends with no live tasklet, timer or handle of its own
-- (spec/helper.lua, H.clean).
local loom = require "loom"
local H = require "spec.helper"

local clean = H.clean
local pack = table.pack

local function is_fail(code, ...)
  local r = pack(...)
  return r.n == 3 and r[1] == nil and type(r[2]) == "string" and r[2]:sub(1, #code + 2) ==
    code .. ": " and r[3] == code
end

-- Asserts the fail triple nil, "CODE: ...", "CODE".
local function assert_fail(code, ...)
  local r = pack(...)
  assert(is_fail(code, ...), ("expected the %s triple, got %d value(s): %s, %s, %s"):format(code,
    r.n, tostring(r[1]), tostring(r[2]), tostring(r[3])))
end

describe("loom.channel()", function()
  it("is a rendezvous by default; capacity is settable", clean(function()
    local ch = loom.channel()
    assert.are.equal(0, ch.capacity)
    assert.are.equal(0, #ch)
    assert.is_false(ch.closed)
    assert.are.equal(0, ch.balance)
    assert.are.equal(5, loom.channel(5).capacity)
    assert.matches("^loom%.channel", tostring(ch))
  end))

  it("rejects a negative or non-number capacity with 'bad argument'", clean(function()
    local ok, err = pcall(loom.channel, -1)
    assert.is_false(ok)
    assert.matches("bad argument #1 to '[%w%.]*channel'", err)
    ok, err = pcall(loom.channel, "big")
    assert.is_false(ok)
    assert.matches("bad argument #1 to '[%w%.]*channel'", err)
  end))
end)

describe("rendezvous send/receive", function()
  it("send waits until a receiver arrives", clean(function()
    local ch = loom.channel()
    local sent
    local s = loom.spawn(function() sent = pack(ch:send("v")) end)
    loom.yield()
    assert.are.equal("blocked", s.status)
    assert.are.equal(1, ch.balance)
    assert.are.equal("v", ch:receive())
    s:join()
    assert.are.same({ n = 1, true }, sent)
    assert.are.equal(0, ch.balance)
  end))

  it("receive waits until a sender arrives", clean(function()
    local ch = loom.channel()
    local got
    local r = loom.spawn(function() got = pack(ch:receive()) end)
    loom.yield()
    assert.are.equal("blocked", r.status)
    assert.are.equal(-1, ch.balance)
    assert.is_true(ch:send("w"))
    r:join()
    assert.are.same({ n = 1, "w" }, got)
    assert.are.equal(0, ch.balance)
  end))

  it("hands the value over and lets the sender continue (the receiver becomes ready)",
    clean(function()
      local ch = loom.channel()
      local after = false
      local r = loom.spawn(function()
        ch:receive()
        after = true
      end)
      loom.yield()
      assert.is_true(ch:send(1))
      assert.are.equal("ready", r.status)
      assert.is_false(after)
      r:join()
      assert.is_true(after)
    end))

  it("passes any value but nil, tables by identity", clean(function()
    local ch = loom.channel()
    local t, f = {}, function() end
    local values = { false, 0, "", t, f, math.huge, ch }
    local got = {}
    local r = loom.spawn(function()
      for i = 1, #values do got[i] = ch:receive() end
    end)
    for _, v in ipairs(values) do assert.is_true(ch:send(v)) end
    r:join()
    for i, v in ipairs(values) do assert.are.equal(v, got[i]) end
  end))

  it("serves waiting receivers and senders in FIFO order", clean(function()
    local ch = loom.channel()
    local got = {}
    local rs = {}
    for i = 1, 3 do
      rs[i] = loom.spawn(function() got[i] = ch:receive() end)
    end
    loom.yield()
    for i = 1, 3 do ch:send("v" .. i) end
    for _, r in ipairs(rs) do r:join() end
    assert.are.same({ "v1", "v2", "v3" }, got)
    local ss = {}
    for i = 1, 3 do
      ss[i] = loom.spawn(function() ch:send("s" .. i) end)
    end
    loom.yield()
    assert.are.equal(3, ch.balance)
    assert.are.same({ "s1", "s2", "s3" }, { ch:receive(), ch:receive(), ch:receive() })
    for _, s in ipairs(ss) do s:join() end
  end))

  it("refuses nil with 'bad argument #1'", clean(function()
    local ch = loom.channel(1)
    local ok, err = pcall(function() return ch:send(nil) end)
    assert.is_false(ok)
    assert.matches("bad argument #1 to 'send'", err)
    ok, err = pcall(function() return ch:send() end)
    assert.is_false(ok)
    assert.matches("bad argument #1 to 'send'", err)
    assert.are.equal(0, #ch)
  end))

  it("rejects bad receivers and bad timeouts", clean(function()
    local ch = loom.channel(1)
    assert.has_error(function() ch.send({}, 1) end)
    local ok, err = pcall(function() return ch:receive(-1) end)
    assert.is_false(ok)
    assert.matches("bad argument #1 to 'receive'", err)
    ok, err = pcall(function() return ch:send(1, 0 / 0) end)
    assert.is_false(ok)
    assert.matches("bad argument #2 to 'send'", err)
  end))
end)

describe("buffered send/receive", function()
  it("send does not wait while there is room; #ch counts the values", clean(function()
    local ch = loom.channel(3)
    for i = 1, 3 do
      assert.is_true(ch:send(i, 0))
      assert.are.equal(i, #ch)
    end
    assert_fail("ETIMEDOUT", ch:send(4, 0))
    assert.are.same({ 1, 2, 3 }, { ch:receive(), ch:receive(), ch:receive() })
    assert.are.equal(0, #ch)
  end))

  it("a full channel makes the sender wait; its value keeps its place", clean(function()
    local ch = loom.channel(2)
    ch:send(1)
    ch:send(2)
    local s = loom.spawn(function() return ch:send(3) end)
    loom.yield()
    assert.are.equal("blocked", s.status)
    assert.are.equal(1, ch.balance)
    assert.are.equal(1, ch:receive())
    assert.are.equal(2, #ch) -- 3 moved into the room
    assert.are.same({ true, true }, { s:join() })
    assert.are.same({ 2, 3 }, { ch:receive(), ch:receive() })
  end))

  it("a receiver waits on an empty buffer and gets the next value", clean(function()
    local ch = loom.channel(2)
    local r = loom.spawn(function() return ch:receive() end)
    loom.yield()
    assert.are.equal(-1, ch.balance)
    ch:send("x")
    assert.are.equal(0, #ch) -- handed straight to the waiting receiver
    assert.are.same({ true, "x" }, { r:join() })
  end))
end)

describe("close()", function()
  it("keeps buffered values; once drained, receive gives ECLOSED", clean(function()
    local ch = loom.channel(3)
    ch:send("a")
    ch:send("b")
    ch:close()
    assert.is_true(ch.closed)
    assert.are.equal("a", ch:receive())
    assert.are.equal("b", ch:receive())
    assert_fail("ECLOSED", ch:receive())
    assert_fail("ECLOSED", ch:receive())
    assert_fail("ECLOSED", ch:receive(0))
  end))

  it("makes send fail with ECLOSED; a second close is harmless", clean(function()
    local ch = loom.channel(3)
    ch:close()
    assert_fail("ECLOSED", ch:send(1))
    assert.has_no.errors(function() ch:close() end)
    assert.are.equal(0, #ch)
  end))

  it("wakes every waiting receiver with ECLOSED", clean(function()
    local ch = loom.channel()
    local rs = {}
    for i = 1, 3 do rs[i] = loom.spawn(function() return ch:receive() end) end
    loom.yield()
    ch:close()
    for _, r in ipairs(rs) do
      local r2 = pack(r:join())
      assert.is_true(r2[1])
      assert(is_fail("ECLOSED", table.unpack(r2, 2, r2.n)))
    end
    assert.are.equal(0, ch.balance)
  end))

  it("wakes every waiting sender with ECLOSED; their values are not delivered",
    clean(function()
      local ch = loom.channel(1)
      ch:send("kept")
      local ss = {}
      for i = 1, 2 do ss[i] = loom.spawn(function() return ch:send("lost" .. i) end) end
      loom.yield()
      assert.are.equal(2, ch.balance)
      ch:close()
      for _, s in ipairs(ss) do
        local r = pack(s:join())
        assert(is_fail("ECLOSED", table.unpack(r, 2, r.n)))
      end
      assert.are.equal("kept", ch:receive())
      assert_fail("ECLOSED", ch:receive())
    end))
end)

describe("ch.balance and #ch", function()
  it("balance is waiting senders minus waiting receivers", clean(function()
    local ch = loom.channel()
    local ts = {}
    for _ = 1, 2 do ts[#ts + 1] = loom.spawn(function() ch:receive() end) end
    loom.yield()
    assert.are.equal(-2, ch.balance)
    ch:send(1)
    ch:send(2)
    assert.are.equal(0, ch.balance)
    for i = 1, 3 do ts[#ts + 1] = loom.spawn(function() ch:send(i) end) end
    loom.yield()
    assert.are.equal(3, ch.balance)
    for _ = 1, 3 do ch:receive() end
    for _, t in ipairs(ts) do t:join() end
    assert.are.equal(0, ch.balance)
  end))
end)

describe("ch:iter()", function()
  it("loops over the values until the channel is closed and drained", clean(function()
    local ch = loom.channel(2)
    local p = loom.spawn(function()
      for i = 1, 5 do ch:send(i) end
      ch:close()
    end)
    local sum, n = 0, 0
    for v in ch:iter() do
      sum, n = sum + v, n + 1
    end
    assert.are.equal(15, sum)
    assert.are.equal(5, n)
    p:join()
  end))

  it("ends at once on a closed, empty channel", clean(function()
    local ch = loom.channel()
    ch:close()
    for _ in ch:iter() do error("no value expected") end
  end))
end)

describe("ch:send_exception()", function()
  it("makes the waiting receiver raise the error", clean(function()
    local ch = loom.channel()
    local e = { "boom" }
    local r = loom.spawn(function() return pcall(ch.receive, ch) end)
    loom.yield()
    ch:send_exception(e)
    local ok, pok, perr = r:join()
    assert.is_true(ok)
    assert.is_false(pok)
    assert.are.equal(e, perr)
  end))

  it("travels through the buffer in order", clean(function()
    local ch = loom.channel(3)
    ch:send(1)
    ch:send_exception("bad")
    ch:send(2)
    assert.are.equal(1, ch:receive())
    local ok, err = pcall(ch.receive, ch)
    assert.is_false(ok)
    assert.are.equal("bad", err)
    assert.are.equal(2, ch:receive())
  end))
end)

describe("timeouts on send/receive", function()
  it("receive(s) gives ETIMEDOUT after s and leaves the channel", clean(function()
    local ch = loom.channel()
    local t0 = loom.now()
    assert_fail("ETIMEDOUT", ch:receive(0.02))
    assert.is_true(loom.now() - t0 >= 0.02)
    assert.are.equal(0, ch.balance)
  end))

  it("send(v, s) gives ETIMEDOUT after s and delivered nothing", clean(function()
    local ch = loom.channel()
    assert_fail("ETIMEDOUT", ch:send("never", 0.01))
    assert.are.equal(0, ch.balance)
    local r = loom.spawn(function() return ch:receive(0.01) end)
    local res = pack(r:join())
    assert(is_fail("ETIMEDOUT", table.unpack(res, 2, res.n)))
  end))

  it("timeout 0 never waits", clean(function()
    local ch = loom.channel()
    local t0 = loom.now()
    assert_fail("ETIMEDOUT", ch:receive(0))
    assert_fail("ETIMEDOUT", ch:send(1, 0))
    assert.is_true(loom.now() - t0 < 0.01)
    assert.are.equal(0, ch.balance)
  end))

  -- Producer and consumer with random short timeouts and random pauses:
  -- every send that returned true is received exactly once, every send that
  -- timed out is never received.
  for _, cap in ipairs({ 0, 1, 3 }) do
    it(("nothing is lost or duplicated (capacity %d, many iterations)"):format(cap),
      clean(function()
        math.randomseed(1000 + cap)
        local ch = loom.channel(cap)
        local N = 500
        local ok_sent, timed_out_sends, timed_out_receives = {}, 0, 0
        local received = {}
        local producer_done = false
        local function pause()
          local r = math.random()
          if r < 0.3 then
            loom.yield()
          elseif r < 0.5 then
            loom.sleep(math.random() * 0.001)
          end
        end
        local p = loom.spawn(function()
          for i = 1, N do
            local ok, _, code = ch:send(i, math.random() * 0.001)
            if ok then
              ok_sent[i] = true
            else
              assert(code == "ETIMEDOUT", code)
              timed_out_sends = timed_out_sends + 1
            end
            pause()
          end
          producer_done = true
        end)
        local c = loom.spawn(function()
          while true do
            local v, _, code = ch:receive(math.random() * 0.001)
            if v then
              received[#received + 1] = v
            elseif producer_done and #ch == 0 and ch.balance == 0 then
              break
            else
              assert(code == "ETIMEDOUT", code)
              timed_out_receives = timed_out_receives + 1
            end
            pause()
          end
        end)
        p:join()
        c:join()
        local seen, dup, phantom = {}, 0, 0
        for _, v in ipairs(received) do
          if seen[v] then dup = dup + 1 end
          if not ok_sent[v] then phantom = phantom + 1 end
          seen[v] = true
        end
        local lost = 0
        for v in pairs(ok_sent) do
          if not seen[v] then lost = lost + 1 end
        end
        assert.are.equal(0, dup, "duplicated values")
        assert.are.equal(0, lost, "values lost (sent ok, never received)")
        assert.are.equal(0, phantom, "values received although their send failed")
        -- the scenario must actually have exercised both kinds of timeout
        assert.is_true(timed_out_sends > 0, "no send timed out")
        assert.is_true(timed_out_receives > 0, "no receive timed out")
      end))
  end

  it("a receive cut by loom.timeout consumes nothing (value handed over at the deadline)",
    clean(function()
      -- The reactor hands a value to the waiting receiver in the same
      -- timer pass in which the receiver's loom.timeout deadline expires.
      -- Either the receive returns the value, or it times out and the value
      -- is still in the channel; a successful send must never vanish.
      local lost = 0
      for _ = 1, 20 do
        local ch = loom.channel(1)
        local sent = false
        loom.call_later(0.005, function()
          sent = ch:send("v") == true
        end)
        local got
        local r = loom.spawn(function()
          got = pack(loom.timeout(0.005, function() return ch:receive() end))
        end)
        loom.yield() -- r blocks in receive
        H.spin(0.015) -- both timers expire before the loop looks at them
        r:join()
        assert.is_true(sent)
        if got[1] ~= "v" and #ch == 0 then
          lost = lost + 1
        end
      end
      assert.are.equal(0, lost, "values sent successfully but lost by a timed-out receive")
    end))

  it("a value handed to a receiver that is killed before it runs is not lost", clean(function()
    local ch = loom.channel(1)
    local r = loom.spawn(function() return ch:receive() end)
    loom.yield() -- r waits
    assert.is_true(ch:send("precious")) -- handed straight to r, r is ready
    r:kill()
    local ok = r:join()
    assert.is_false(ok)
    local v = ch:receive(0)
    assert.are.equal("precious", v, "the killed receiver took the value with it")
  end))

  it("values given back by several killed receivers keep their order", clean(function()
    local ch = loom.channel()
    local r1 = loom.spawn(function() return ch:receive() end)
    local r2 = loom.spawn(function() return ch:receive() end)
    loom.yield()
    ch:send(1) -- to r1
    ch:send(2) -- to r2
    r1:kill()
    r2:kill()
    r1:join()
    r2:join()
    assert.are.same({ 1, 2 }, { ch:receive(0), ch:receive(0) })
  end))

  for _, cap in ipairs({ 0, 1 }) do
    it(("a send cut by loom.timeout as its value is taken reports success or delivered nothing "
        .. "(capacity %d)"):format(cap), clean(function()
      -- The reactor takes the waiting sender's value in the same timer pass
      -- in which the sender's loom.timeout deadline expires.
      local ch = loom.channel(cap)
      if cap > 0 then ch:send("filler") end
      local taken = {}
      loom.call_later(0.005, function()
        local v = ch:receive(0)
        if v then taken[#taken + 1] = v end
      end)
      local r
      local t = loom.spawn(function()
        r = pack(loom.timeout(0.005, function() return ch:send("v") end))
      end)
      loom.yield() -- the sender waits
      H.spin(0.015)
      t:join()
      while #ch > 0 do taken[#taken + 1] = ch:receive(0) end
      local delivered = false
      for _, v in ipairs(taken) do
        if v == "v" then delivered = true end
      end
      if r[1] ~= true then
        assert.is_false(delivered, "the send reported " .. tostring(r[3]) .. " but its value was delivered")
      else
        assert.is_true(delivered)
      end
    end))
  end

  it("a send cut by loom.timeout delivered nothing", clean(function()
    local ch = loom.channel()
    local r = pack(loom.timeout(0.01, function() return ch:send("x") end))
    assert.are.equal("ETIMEDOUT", r[3])
    assert.are.equal(0, ch.balance)
    assert_fail("ETIMEDOUT", ch:receive(0))
  end))
end)

describe("loom.select()", function()
  it("completes the one ready receive case: i, v", clean(function()
    local a, b = loom.channel(1), loom.channel(1)
    b:send("from b")
    local r = pack(loom.select({ { "receive", a }, { "receive", b } }))
    assert.are.same({ n = 2, 2, "from b" }, r)
    assert.are.equal(0, #b)
  end))

  it("completes a ready send case: i alone; the value is delivered", clean(function()
    local a, b = loom.channel(), loom.channel(1)
    local r = pack(loom.select({ { "send", a, 1 }, { "send", b, "into b" } }))
    assert.are.same({ n = 1, 2 }, r)
    assert.are.equal("into b", b:receive())
    assert.are.equal(0, a.balance)
  end))

  it("completes exactly one case when several are ready", clean(function()
    local a, b = loom.channel(1), loom.channel(1)
    a:send(1)
    b:send(2)
    local i = loom.select({ { "receive", a }, { "receive", b } })
    assert.are.equal(1, #a + #b)
    assert.is_true(i == 1 and #a == 0 or i == 2 and #b == 0)
  end))

  it("waits for the first case to become ready and withdraws the others", clean(function()
    local a, b, c = loom.channel(), loom.channel(), loom.channel()
    local t = loom.spawn(function()
      return loom.select({ { "receive", a }, { "receive", b }, { "send", c, "cv" } })
    end)
    loom.yield()
    assert.are.equal(-1, a.balance)
    assert.are.equal(-1, b.balance)
    assert.are.equal(1, c.balance)
    b:send("bv")
    assert.are.same({ true, 2, "bv" }, { t:join() })
    assert.are.equal(0, a.balance)
    assert.are.equal(0, c.balance)
    assert_fail("ETIMEDOUT", c:receive(0))
  end))

  it("a waiting send case completes when a receiver comes", clean(function()
    local a = loom.channel()
    local t = loom.spawn(function() return loom.select({ { "send", a, "sv" } }) end)
    loom.yield()
    assert.are.equal("sv", a:receive())
    assert.are.same({ true, 1 }, { t:join() })
  end))

  it("is fair among ready cases (measured over many rounds)", clean(function()
    local a, b = loom.channel(1), loom.channel(1)
    local wins = { 0, 0 }
    local rounds = 2000
    for _ = 1, rounds do
      if #a == 0 then a:send("a") end
      if #b == 0 then b:send("b") end
      local i = loom.select({ { "receive", a }, { "receive", b } })
      wins[i] = wins[i] + 1
    end
    a:receive(0)
    b:receive(0)
    assert.is_true(wins[1] > rounds * 0.3 and wins[2] > rounds * 0.3,
      ("case wins %d / %d"):format(wins[1], wins[2]))
  end))

  it("is fair among three ready cases", clean(function()
    local chs = { loom.channel(1000), loom.channel(1000), loom.channel(1000) }
    local cases = {}
    for i, ch in ipairs(chs) do
      for v = 1, 900 do ch:send(v) end
      cases[i] = { "receive", ch }
    end
    local wins = { 0, 0, 0 }
    for _ = 1, 900 do
      local i = loom.select(cases)
      wins[i] = wins[i] + 1
    end
    for i = 1, 3 do
      assert.is_true(wins[i] > 900 / 3 * 0.6, ("case wins %d / %d / %d"):format(wins[1], wins[2],
        wins[3]))
    end
  end))

  it("a closed channel case gives i, nil, 'ECLOSED: ...', 'ECLOSED'", clean(function()
    local open, closed = loom.channel(), loom.channel()
    closed:close()
    local r = pack(loom.select({ { "receive", open }, { "receive", closed } }))
    assert.are.equal(4, r.n)
    assert.are.equal(2, r[1])
    assert.is_nil(r[2])
    assert.matches("^ECLOSED: ", r[3])
    assert.are.equal("ECLOSED", r[4])
    r = pack(loom.select({ { "send", closed, 1 } }))
    assert.are.equal(1, r[1])
    assert.are.equal("ECLOSED", r[4])
    assert.are.equal(0, open.balance)
  end))

  it("still delivers the buffered values of a closed channel", clean(function()
    local ch = loom.channel(2)
    ch:send("left")
    ch:close()
    assert.are.same({ 1, "left" }, { loom.select({ { "receive", ch } }) })
    local r = pack(loom.select({ { "receive", ch } }))
    assert.are.equal("ECLOSED", r[4])
  end))

  it("a waiting select wakes with ECLOSED when its channel closes", clean(function()
    local a, b = loom.channel(), loom.channel()
    local t = loom.spawn(function() return loom.select({ { "receive", a }, { "receive", b } }) end)
    loom.yield()
    b:close()
    local r = pack(t:join())
    assert.are.equal(true, r[1])
    assert.are.equal(2, r[2])
    assert.are.equal("ECLOSED", r[5])
    assert.are.equal(0, a.balance)
  end))

  it("times out with the ETIMEDOUT triple, withdrawing every case", clean(function()
    local a, b = loom.channel(), loom.channel()
    local t0 = loom.now()
    assert_fail("ETIMEDOUT", loom.select({ { "receive", a }, { "send", b, 1 } }, 0.01))
    assert.is_true(loom.now() - t0 >= 0.01)
    assert.are.equal(0, a.balance)
    assert.are.equal(0, b.balance)
    assert_fail("ETIMEDOUT", loom.select({ { "receive", a } }, 0))
  end))

  it("a timed-out select consumed and delivered nothing (many iterations)", clean(function()
    math.randomseed(77)
    local a, b = loom.channel(), loom.channel()
    local N = 400
    local sent_ok, received = {}, {}
    local done = false
    local p = loom.spawn(function()
      for i = 1, N do
        local ch = (i % 2 == 0) and a or b
        if ch:send(i, math.random() * 0.001) then sent_ok[i] = true end
        if math.random() < 0.4 then loom.sleep(math.random() * 0.001) end
      end
      done = true
    end)
    local c = loom.spawn(function()
      while not done or a.balance ~= 0 or b.balance ~= 0 do
        local i, v = loom.select({ { "receive", a }, { "receive", b } }, math.random() * 0.001)
        if i then received[#received + 1] = v end
        if math.random() < 0.4 then loom.sleep(math.random() * 0.001) end
      end
    end)
    p:join()
    c:join()
    local seen = {}
    for _, v in ipairs(received) do
      assert.is_nil(seen[v], "duplicate " .. v)
      assert.is_true(sent_ok[v] == true, "received a value whose send failed: " .. v)
      seen[v] = true
    end
    for v in pairs(sent_ok) do
      assert.is_true(seen[v] == true, "lost " .. v)
    end
  end))

  it("rejects bad cases with 'bad argument #1'", clean(function()
    local ch = loom.channel()
    local bad = {
      {},
      { 1 },
      { { "peek", ch } },
      { { "receive", 5 } },
      { { "receive" } },
      { { "send", ch } },
      { { "send", {}, 1 } },
    }
    for _, cases in ipairs(bad) do
      local ok, err = pcall(loom.select, cases)
      assert.is_false(ok)
      assert.matches("bad argument #1 to '[%w%.]*select'", err)
    end
    local ok, err = pcall(loom.select, "cases")
    assert.is_false(ok)
    assert.matches("bad argument #1 to '[%w%.]*select'", err)
    ok, err = pcall(loom.select, { { "receive", ch } }, -1)
    assert.is_false(ok)
    assert.matches("bad argument #2 to '[%w%.]*select'", err)
    assert.are.equal(0, ch.balance)
  end))
end)

describe("loom.event()", function()
  it("wait() returns true at once when set; set() wakes every waiter", clean(function()
    local ev = loom.event()
    assert.is_false(ev:is_set())
    local got = {}
    local ts = {}
    for i = 1, 3 do
      ts[i] = loom.spawn(function() got[i] = pack(ev:wait()) end)
    end
    loom.yield()
    ev:set()
    assert.is_true(ev:is_set())
    for _, t in ipairs(ts) do t:join() end
    for i = 1, 3 do assert.are.same({ n = 1, true }, got[i]) end
    assert.is_true(ev:wait())
    assert.is_true(ev:wait(0))
  end))

  it("clear() makes wait() wait again", clean(function()
    local ev = loom.event()
    ev:set()
    ev:clear()
    assert.is_false(ev:is_set())
    assert_fail("ETIMEDOUT", ev:wait(0))
  end))

  it("wait(s) gives the ETIMEDOUT triple; a timed-out waiter is not woken later",
    clean(function()
      local ev = loom.event()
      local t0 = loom.now()
      assert_fail("ETIMEDOUT", ev:wait(0.01))
      assert.is_true(loom.now() - t0 >= 0.01)
      ev:set() -- nobody waits: must not touch the old waiter
      assert.is_true(ev:wait(0))
      assert.matches("0 waiting", tostring(ev))
    end))

  it("rejects a bad timeout", clean(function()
    local ev = loom.event()
    assert.has_error(function() ev:wait(-1) end)
    assert.has_error(function() ev:wait(0 / 0) end)
    assert.has_error(function() ev.wait({}) end)
  end))
end)

describe("loom.semaphore()", function()
  it("acquire() takes a unit and waits at zero; release() gives one back", clean(function()
    local s = loom.semaphore(2)
    assert.are.equal(2, s.count)
    assert.is_true(s:acquire())
    assert.is_true(s:acquire())
    assert.are.equal(0, s.count)
    assert_fail("ETIMEDOUT", s:acquire(0))
    local t = loom.spawn(function() return s:acquire() end)
    loom.yield()
    assert.are.equal("blocked", t.status)
    s:release()
    assert.are.same({ true, true }, { t:join() })
    assert.are.equal(0, s.count)
    s:release()
    s:release()
    assert.are.equal(2, s.count)
  end))

  it("defaults to one unit", clean(function()
    local s = loom.semaphore()
    assert.is_true(s:acquire(0))
    assert_fail("ETIMEDOUT", s:acquire(0))
    s:release()
  end))

  it("acquire(s) times out with the triple and takes no unit", clean(function()
    local s = loom.semaphore(0)
    local t0 = loom.now()
    assert_fail("ETIMEDOUT", s:acquire(0.01))
    assert.is_true(loom.now() - t0 >= 0.01)
    s:release()
    assert.are.equal(1, s.count) -- the timed-out waiter did not take it
    assert.is_true(s:acquire(0))
  end))

  it("hands units to waiters in FIFO order", clean(function()
    local s = loom.semaphore(0)
    local order = {}
    local ts = {}
    for i = 1, 4 do
      ts[i] = loom.spawn(function()
        s:acquire()
        order[#order + 1] = i
      end)
    end
    loom.yield()
    for _ = 1, 4 do s:release() end
    for _, t in ipairs(ts) do t:join() end
    assert.are.same({ 1, 2, 3, 4 }, order)
  end))

  it("release() hands the unit to the oldest waiter: the releaser cannot take it back",
    clean(function()
      local s = loom.semaphore(1)
      s:acquire()
      local got = false
      local t = loom.spawn(function()
        s:acquire()
        got = true
        s:release()
      end)
      loom.yield()
      s:release()
      assert_fail("ETIMEDOUT", s:acquire(0))
      t:join()
      assert.is_true(got)
      assert.are.equal(1, s.count)
    end))

  it("a unit handed to a waiter that is killed before it runs is not lost", clean(function()
    local s = loom.semaphore(0)
    local t = loom.spawn(function() return s:acquire() end)
    loom.yield()
    s:release() -- handed to t, which is ready
    t:kill()
    t:join()
    assert.are.equal(1, s.count, "the semaphore lost a unit")
    assert.is_true(s:acquire(0) == true)
  end))

  it("a unit handed over as the waiter's loom.timeout expires is not lost", clean(function()
    local s = loom.semaphore(0)
    loom.call_later(0.005, function() s:release() end)
    local got
    local t = loom.spawn(function()
      got = table.pack(loom.timeout(0.005, function() return s:acquire() end))
    end)
    loom.yield()
    H.spin(0.015) -- the release and the deadline fall in the same timer pass
    t:join()
    if got[1] == true then
      s:release() -- the waiter got it: give it back
    end
    assert.are.equal(1, s.count, "the semaphore lost a unit")
    s:acquire(0)
  end))

  it("rejects a negative count and bad timeouts", clean(function()
    local ok, err = pcall(loom.semaphore, -1)
    assert.is_false(ok)
    assert.matches("bad argument #1 to '[%w%.]*semaphore'", err)
    local s = loom.semaphore(1)
    assert.has_error(function() s:acquire(-1) end)
    assert.has_error(function() s:acquire(0 / 0) end)
  end))
end)
