-- Specs for the contexts code runs in (SPEC section 1, design rules Y5-Y7,
-- D1): the reactor, user coroutines inside tasklets, foreign resumes,
-- places where Lua cannot yield, and deadlock detection.
-- Run: build/loom /usr/bin/busted spec/12-context_spec.lua
-- Deadlock scenarios would stop the busted runner itself, so they run in a
-- child process (LOOM_BIN, default build/loom; or a stock lua5.4).
local loom = require "loom"
local H = require "spec.helper"

local clean = H.clean
local pack = table.pack

local REACTOR = "cannot block in the reactor"
local NOT_HERE = "cannot block here"

-- Runs fn(...) in a call_later callback and returns what it returned (or
-- false, err when it raised).
local function in_reactor(fn, ...)
  local args = pack(...)
  local result
  loom.call_later(0, function()
    result = pack(pcall(fn, table.unpack(args, 1, args.n)))
  end)
  H.wait_until(function() return result ~= nil end, 2, "the call_later callback")
  return table.unpack(result, 1, result.n)
end

describe("the reactor context", function()
  local blocking_calls = {
    ["loom.sleep"] = function() loom.sleep(0.01) end,
    ["loom.sleep(0)"] = function() loom.sleep(0) end,
    ["loom.yield"] = function() loom.yield() end,
    ["ch:receive"] = function() loom.channel():receive() end,
    ["ch:send on a full channel"] = function() loom.channel():send(1) end,
    ["ev:wait"] = function() loom.event():wait() end,
    ["sem:acquire"] = function() loom.semaphore(0):acquire() end,
    ["loom.select"] = function() loom.select({ { "receive", loom.channel() } }) end,
    ["t:join"] = function()
      local t = loom.spawn(function() end)
      t:join()
    end,
    ["loom.timeout"] = function() loom.timeout(1, function() end) end,
    ["loom.run"] = function() loom.run(function() end) end,
    ["g:wait"] = function()
      local g = loom.group()
      g:spawn(function() end)
      g:wait()
    end,
  }
  for name, call in pairs(blocking_calls) do
    it(name .. " in a call_later callback raises 'cannot block in the reactor'", clean(function()
      local ok, err = in_reactor(call)
      assert.is_false(ok)
      assert.is_true(H.has(tostring(err), REACTOR), tostring(err))
      -- a tasklet spawned by the failed call still runs to its end
      loom.sleep(0.001)
    end))
  end

  it("an unprotected blocking call in a callback is reported, and the loop goes on",
    clean(function()
      local reports = {}
      loom.on_error(function(err, where) reports[#reports + 1] = { tostring(err), where } end)
      local after = false
      loom.call_later(0, function()
        loom.sleep(0.01)
        after = true
      end)
      loom.sleep(0.01)
      loom.on_error(nil)
      assert.are.equal(1, #reports)
      assert.is_true(H.has(reports[1][1], REACTOR), reports[1][1])
      assert.is_true(H.has(reports[1][2], "call_later"), reports[1][2])
      assert.is_false(after)
    end))

  it("the reactor may spawn, set events and send where there is room", clean(function()
    local ch = loom.channel(1)
    local ev = loom.event()
    local t
    local ok, err = in_reactor(function()
      assert(ch:send("r"))
      ev:set()
      t = loom.spawn(function() return "spawned" end)
      -- a send that would wait, asked not to wait, is a plain failure
      local r = pack(ch:send("full", 0))
      assert(r[3] == "ETIMEDOUT")
    end)
    assert.is_true(ok, tostring(err))
    assert.are.equal("r", ch:receive())
    assert.is_true(ev:is_set())
    assert.are.same({ true, "spawned" }, { t:join() })
  end))

  it("the reactor may hand a value to a waiting receiver", clean(function()
    local ch = loom.channel()
    local r = loom.spawn(function() return ch:receive() end)
    loom.yield()
    local ok, err = in_reactor(function() assert(ch:send("handed")) end)
    assert.is_true(ok, tostring(err))
    assert.are.same({ true, "handed" }, { r:join() })
  end))
end)

describe("loom.call_later()", function()
  it("calls fn(...) after s seconds", clean(function()
    local got, at
    local t0 = loom.now()
    loom.call_later(0.02, function(a, b, c)
      got, at = pack(a, b, c), loom.now()
    end, 1, nil, "c")
    H.wait_until(function() return got ~= nil end)
    assert.are.same({ n = 3, 1, nil, "c" }, got)
    assert.is_true(at - t0 >= 0.02)
  end))

  it("cancel() stops a pending call; active() tells whether it is pending", clean(function()
    local fired = false
    local h = loom.call_later(0.01, function() fired = true end)
    assert.is_true(h:active())
    assert.is_true(h:cancel())
    assert.is_false(h:active())
    assert.is_false(h:cancel())
    loom.sleep(0.02)
    assert.is_false(fired)
  end))

  it("active() is false once it fired; cancel() then returns false", clean(function()
    local fired = false
    local h = loom.call_later(0, function() fired = true end)
    H.wait_until(function() return fired end)
    assert.is_false(h:active())
    assert.is_false(h:cancel())
  end))

  it("fires even when the handle is dropped and collected", clean(function()
    local fired = false
    do
      loom.call_later(0.01, function() fired = true end)
    end
    collectgarbage()
    collectgarbage()
    H.wait_until(function() return fired end)
  end))

  it("a callback that re-arms itself with 0 cannot starve the loop", clean(function()
    -- Timers started by a timer callback wait for the next pass (rule M4),
    -- so an endless chain of call_later(0) still lets a sleeper wake. The
    -- chain stops by itself after 2 s so that a starved loop fails the
    -- example instead of hanging it.
    local n, stop = 0, false
    local t_start = loom.now()
    local function again()
      n = n + 1
      if not stop and loom.now() - t_start < 2 then loom.call_later(0, again) end
    end
    loom.call_later(0, again)
    local t0 = loom.now()
    loom.sleep(0.01)
    local slept = loom.now() - t0
    stop = true
    loom.sleep(0.001)
    assert.is_true(n > 1, "the chain did not run")
    assert.is_true(slept < 0.5, ("a 0.01 s sleep took %.3f s beside the chain"):format(slept))
  end))

  it("rejects bad arguments", clean(function()
    assert.has_error(function() loom.call_later(-1, print) end)
    assert.has_error(function() loom.call_later(0 / 0, print) end)
    assert.has_error(function() loom.call_later(1, 2) end)
    assert.has_error(function() loom.call_later("x", print) end)
  end))
end)

describe("user coroutines inside tasklets", function()
  it("a coroutine.wrap generator may sleep and receive; values pass both ways",
    clean(function()
      local ch = loom.channel(3)
      for i = 1, 3 do ch:send(i * 10) end
      local backs = {}
      local gen = coroutine.wrap(function(first)
        backs[#backs + 1] = first
        for i = 1, 3 do
          loom.sleep(0.001)
          local v = ch:receive()
          backs[#backs + 1] = coroutine.yield(v, i)
        end
        return "done"
      end)
      assert.are.same({ 10, 1 }, { gen("start") })
      assert.are.same({ 20, 2 }, { gen("b1") })
      assert.are.same({ 30, 3 }, { gen("b2") })
      assert.are.same({ "done" }, { gen("b3") })
      assert.are.same({ "start", "b1", "b2", "b3" }, backs)
    end))

  it("coroutine.resume returns true and the user's values across loom waits",
    clean(function()
      local co = coroutine.create(function(x)
        loom.sleep(0.001)
        local y = coroutine.yield(x + 1)
        loom.yield()
        return y * 2
      end)
      assert.are.same({ true, 2 }, { coroutine.resume(co, 1) })
      assert.are.equal("suspended", coroutine.status(co))
      assert.are.same({ true, 10 }, { coroutine.resume(co, 5) })
      assert.are.equal("dead", coroutine.status(co))
      assert.are.same({ false, "cannot resume dead coroutine" }, { coroutine.resume(co) })
    end))

  it("a generator works as a for-in iterator while it waits", clean(function()
    local ch = loom.channel()
    local p = loom.spawn(function()
      for i = 1, 4 do ch:send(i) end
      ch:close()
    end)
    local function values(c)
      return coroutine.wrap(function()
        for v in c:iter() do coroutine.yield(v) end
      end)
    end
    local got = {}
    for v in values(ch) do got[#got + 1] = v end
    assert.are.same({ 1, 2, 3, 4 }, got)
    p:join()
  end))

  it("nested generators three deep pass waits and values through", clean(function()
    local function level(name, inner)
      return coroutine.wrap(function()
        for i = 1, 2 do
          loom.sleep(0.001)
          if inner then
            coroutine.yield(name .. ":" .. inner())
          else
            loom.channel(1):send(i)
            coroutine.yield(name .. ":" .. i)
          end
        end
      end)
    end
    local g = level("a", level("b", level("c")))
    assert.are.equal("a:b:c:1", g())
    assert.are.equal("a:b:c:2", g())
  end))

  it("several tasklets drive their own generators interleaved", clean(function()
    local out = {}
    local ts = {}
    for k = 1, 3 do
      ts[k] = loom.spawn(function()
        local g = coroutine.wrap(function()
          for i = 1, 3 do
            loom.sleep(0.001 * k)
            coroutine.yield(k * 10 + i)
          end
        end)
        local mine = {}
        for _ = 1, 3 do mine[#mine + 1] = g() end
        out[k] = mine
      end)
    end
    for _, t in ipairs(ts) do t:join() end
    assert.are.same({ { 11, 12, 13 }, { 21, 22, 23 }, { 31, 32, 33 } }, out)
  end))

  it("an error raised after a wait reaches the generator's caller", clean(function()
    local gen = coroutine.wrap(function()
      loom.sleep(0.001)
      error("generator failed")
    end)
    local ok, err = pcall(gen)
    assert.is_false(ok)
    assert.matches("generator failed", err)
    local co = coroutine.create(function()
      loom.sleep(0.001)
      error({ code = "E" })
    end)
    local ok2, e2 = coroutine.resume(co)
    assert.is_false(ok2)
    assert.are.equal("E", e2.code)
  end))

  it("loom.timeout interrupts a wait inside a generator", clean(function()
    local closed = {}
    local gen = coroutine.wrap(function()
      local _ <close> = H.closer(closed, "gen")
      loom.sleep(5)
      coroutine.yield("no")
    end)
    local r = pack(loom.timeout(0.01, gen))
    assert.are.equal("ETIMEDOUT", r[3])
    assert.are.same({ "gen" }, closed)
  end))

  it("kill of a tasklet blocked inside a generator unwinds both; every <close> runs",
    clean(function()
      local closed = {}
      local t = loom.spawn(function()
        local _ <close> = H.closer(closed, "tasklet")
        local g = coroutine.wrap(function()
          local _ <close> = H.closer(closed, "generator")
          loom.sleep(10)
        end)
        g()
      end)
      loom.yield()
      assert.are.equal("blocked", t.status)
      t:kill()
      local ok, err = t:join()
      assert.is_false(ok)
      assert.is_true(loom.TaskletExit:is(err))
      table.sort(closed)
      assert.are.same({ "generator", "tasklet" }, closed)
    end))

  it("a plain coroutine.yield at a tasklet's top level acts as loom.yield", clean(function()
    local log = {}
    local a = loom.spawn(function()
      log[#log + 1] = "a1"
      coroutine.yield("ignored")
      log[#log + 1] = "a2"
      return "a done"
    end)
    local b = loom.spawn(function() log[#log + 1] = "b" end)
    assert.are.same({ true, "a done" }, { a:join() })
    b:join()
    assert.are.same({ "a1", "b", "a2" }, log)
  end))

  it("coroutine.running() and isyieldable() inside a tasklet", clean(function()
    local co, ismain = coroutine.running()
    assert.are.equal("thread", type(co))
    assert.is_false(ismain)
    assert.is_true(coroutine.isyieldable())
  end))
end)

describe("foreign coroutine.resume", function()
  it("of another tasklet's thread is refused with a clear error", clean(function()
    local th
    local t = loom.spawn(function()
      th = coroutine.running()
      loom.sleep(0.02)
      return "undisturbed"
    end)
    loom.yield()
    local r = pack(pcall(coroutine.resume, th))
    -- refused: raises, or returns false with the reason
    local refused = (r[1] == false) or (r[1] == true and r[2] == false)
    assert.is_true(refused, "resume of a tasklet's thread was not refused")
    local msg = tostring(r[1] == false and r[2] or r[3])
    assert.is_true(H.has(msg, "tasklet"), msg)
    assert.are.same({ true, "undisturbed" }, { t:join() })
  end))

  it("of the running tasklet's own thread is refused", clean(function()
    local me = coroutine.running()
    local r = pack(pcall(coroutine.resume, me))
    assert.is_true(r[1] == false or r[2] == false)
  end))

  it("coroutine.close of a tasklet's thread is refused", clean(function()
    local th
    local t = loom.spawn(function()
      th = coroutine.running()
      loom.sleep(0.01)
    end)
    loom.yield()
    local ok, err = pcall(coroutine.close, th)
    assert.is_false(ok and err ~= false)
    t:join()
  end))

  it("of a tasklet's thread from the reactor is refused", clean(function()
    local th
    local t = loom.spawn(function()
      th = coroutine.running()
      loom.sleep(0.02)
      return "ok"
    end)
    loom.yield()
    local ok, a, b = in_reactor(coroutine.resume, th)
    assert.is_true(ok == false or a == false, tostring(a) .. " " .. tostring(b))
    assert.are.same({ true, "ok" }, { t:join() })
  end))

  it("of a generator suspended in another tasklet's loom wait is refused; the wait goes on",
    clean(function()
      local ch = loom.channel()
      local co = coroutine.create(function()
        local v = ch:receive()
        return "received " .. tostring(v)
      end)
      local t = loom.spawn(function() return coroutine.resume(co) end)
      loom.yield() -- t waits inside co
      local r = pack(pcall(coroutine.resume, co))
      local refused = (r[1] == false) or (r[1] == true and r[2] == false)
      assert.is_true(refused, ("a foreign resume cut the wait short: %s %s %s"):format(
        tostring(r[1]), tostring(r[2]), tostring(r[3])))
      assert.is_true(ch:send("x", 0.5) == true)
      assert.are.same({ true, true, "received x" }, { t:join() })
    end))

  it("coroutine.close of a generator suspended in a loom wait is refused; nothing is lost",
    clean(function()
      local ch = loom.channel()
      local co = coroutine.create(function()
        local v = ch:receive()
        return "received " .. tostring(v)
      end)
      local t = loom.spawn(function() return coroutine.resume(co) end)
      loom.yield() -- t waits inside co
      local ok, closed = pcall(coroutine.close, co)
      assert.is_false(ok == true and closed == true, "a waiting generator was closed under its tasklet")
      assert.is_true(ch:send("x", 0.5) == true)
      assert.are.same({ true, true, "received x" }, { t:join() })
    end))
end)

describe("blocking where Lua cannot yield", function()
  local function check(ok, err)
    assert.is_false(ok)
    assert.is_true(H.has(tostring(err), NOT_HERE), tostring(err))
  end

  it("inside a table.sort comparator raises a clear error", clean(function()
    check(pcall(table.sort, { 3, 2, 1 }, function(a, b)
      loom.sleep(0.001)
      return a < b
    end))
    loom.sleep(0.001) -- the tasklet is still fine
  end))

  it("inside a string.gsub callback raises a clear error", clean(function()
    local ch = loom.channel()
    check(pcall(string.gsub, "abc", "%w", function(c)
      ch:receive()
      return c
    end))
    assert.are.equal(0, ch.balance)
  end))

  it("inside a __tostring metamethod raises a clear error", clean(function()
    local o = setmetatable({}, { __tostring = function()
      loom.sleep(0.001)
      return "o"
    end })
    check(pcall(tostring, o))
  end))

  it("inside a load() reader raises a clear error", clean(function()
    local ok, err = pcall(load, function()
      loom.yield()
      return nil
    end)
    if ok then
      -- load catches the reader's error and returns nil, message
      assert.is_nil(err)
    else
      check(ok, err)
    end
  end))

  it("inside a __gc metamethod raises a clear error and nothing crashes", clean(function()
    local seen
    local t = loom.spawn(function()
      setmetatable({}, { __gc = function()
        local ok, err = pcall(loom.sleep, 0.001)
        seen = { ok, err }
      end })
    end)
    t:join()
    collectgarbage()
    collectgarbage()
    assert.is_not_nil(seen, "the finalizer did not run")
    check(seen[1], seen[2])
    loom.sleep(0.001)
  end))

  it("yieldable metamethods (__index, __close) may block", clean(function()
    local o = setmetatable({}, { __index = function(_, k)
      loom.sleep(0.001)
      return k .. "!"
    end })
    assert.are.equal("x!", o.x)
    local closed = false
    do
      local _ <close> = setmetatable({}, { __close = function()
        loom.sleep(0.001)
        closed = true
      end })
    end
    assert.is_true(closed)
  end))

  it("the failed attempt left nothing waiting", clean(function()
    local s0 = loom.stats()
    pcall(table.sort, { 2, 1 }, function(a, b)
      loom.semaphore(0):acquire()
      return a < b
    end)
    local s1 = loom.stats()
    assert.are.equal(s0.blocked, s1.blocked)
    assert.are.equal(s0.timers, s1.timers)
  end))
end)

describe("deadlock detection", function()
  it("the CLI fails with a loom.Deadlock report listing every waiting tasklet",
    clean(function()
      local code, out, err = H.run_loom([[
local a, b = loom.channel(), loom.channel()
local t1 = loom.spawn(function() a:receive(); b:send(1) end)
local t2 = loom.spawn(function() b:receive(); a:send(1) end)
t1.name = "alpha"
t2.name = "beta"
print("spawned", t1.id, t2.id)
]])
      assert.are.equal(1, code, err)
      assert.is_true(H.has(err, "all tasklets are asleep"), err)
      assert.is_true(H.has(err, "EDEADLK"), err)
      assert.is_true(H.has(err, "'alpha' waits on channel receive"), err)
      assert.is_true(H.has(err, "'beta' waits on channel receive"), err)
      assert.is_true(H.has(err, ".lua:2"), err) -- where they wait
      assert.is_true(H.has(err, ".lua:3"), err)
      assert.is_true(H.has(out, "spawned"), out)
    end))

  it("the CLI reports a main tasklet that waits forever", clean(function()
    local code, _, err = H.run_loom([[loom.event():wait()]])
    assert.are.equal(1, code)
    assert.is_true(H.has(err, "all tasklets are asleep"), err)
    assert.is_true(H.has(err, "waits on event"), err)
  end))

  it("tasklets joining each other are a deadlock", clean(function()
    local code, _, err = H.run_loom([[
local a, b
a = loom.spawn(function() loom.yield(); b:join() end)
b = loom.spawn(function() loom.yield(); a:join() end)
]])
    assert.are.equal(1, code)
    assert.is_true(H.has(err, "all tasklets are asleep"), err)
    assert.is_true(H.has(err, "waits on join"), err)
  end))

  it("loom.run (stock lua5.4) raises a loom.Deadlock listing them; the runtime is clean after",
    clean(function()
      local code, out, err = H.run_stock([[
local loom = require "loom"
local a, b = loom.channel(), loom.channel()
local ok, e = pcall(loom.run, function()
  local t1 = loom.spawn(function() a:receive(); b:send(1) end)
  t1.name = "alpha"
  local t2 = loom.spawn(function() b:receive(); a:send(1) end)
  t1:join()
end)
print("ok", ok)
print("is", loom.Deadlock:is(e))
print("code", type(e) == "table" and e.code)
print("text", tostring(e))
print("left", #loom.tasklets())
print("again", loom.run(function() loom.sleep(0.001) return "usable" end))
]])
      assert.are.equal(0, code, err)
      assert.is_true(H.has(out, "ok\tfalse"), out)
      assert.is_true(H.has(out, "is\ttrue"), out)
      assert.is_true(H.has(out, "code\tEDEADLK"), out)
      assert.is_true(H.has(out, "all tasklets are asleep"), out)
      assert.is_true(H.has(out, "'alpha' waits on channel receive"), out)
      assert.is_true(H.has(out, "waits on join"), out)
      assert.is_true(H.has(out, "left\t0"), out)
      assert.is_true(H.has(out, "again\tusable"), out)
    end))

  it("a sleeping tasklet is never a deadlock", clean(function()
    local code, out, err = H.run_loom([[
local ch = loom.channel()
loom.spawn(function() loom.sleep(0.05); ch:send("late") end)
print(ch:receive())
]])
    assert.are.equal(0, code, err)
    assert.is_true(H.has(out, "late"), out)
  end))

  it("a tasklet waiting on a timer (call_later, a timeout) is never a deadlock",
    clean(function()
      local code, out, err = H.run_loom([[
local ev = loom.event()
loom.call_later(0.03, function() ev:set() end)
print("event", ev:wait())
print("receive", loom.channel():receive(0.02))
print("timeout", loom.timeout(0.02, function() return loom.channel():receive() end))
]])
      assert.are.equal(0, code, err)
      assert.is_true(H.has(out, "event\ttrue"), out)
      assert.is_true(H.has(out, "receive\tnil\tETIMEDOUT"), out)
      assert.is_true(H.has(out, "timeout\tnil\tETIMEDOUT"), out)
    end))
end)
