-- Specs for tasklets (SPEC section 3, docs/design.md rules T, Y, M):
-- spawn, run, current, yield, sleep, now, introspection, join, kill, throw,
-- the tasklet fields, loom.timeout and loom.group.
-- Run: build/loom /usr/bin/busted spec/10-tasklet_spec.lua
-- Every example ends with no live tasklet, timer or handle of its own
-- (spec/helper.lua, H.clean).
local loom = require "loom"
local H = require "spec.helper"

local clean = H.clean
local pack = table.pack

-- Records the errors that would be reported while fn runs.
local function capture_reports(fn)
  local reports = {}
  loom.on_error(function(err, where, tb)
    reports[#reports + 1] = { err = err, where = where, tb = tb }
  end)
  local ok, e = pcall(fn, reports)
  loom.on_error(nil)
  if not ok then
    error(e, 0)
  end
  return reports
end

describe("loom.spawn()", function()
  it("queues tasklets at the end of the run queue: they run in spawn order", clean(function()
    local log = {}
    local ts = {}
    for i = 1, 5 do
      ts[i] = loom.spawn(function()
        log[#log + 1] = i
      end)
    end
    assert.are.same({}, log) -- nothing runs before the caller waits
    loom.yield()
    assert.are.same({ 1, 2, 3, 4, 5 }, log)
    for _, t in ipairs(ts) do
      assert.is_false(t:alive())
    end
  end))

  it("passes every argument, nils and trailing nils included", clean(function()
    local got
    local t = loom.spawn(function(...)
      got = pack(...)
    end, 1, nil, "three", nil)
    t:join()
    assert.are.equal(4, got.n)
    assert.are.equal(1, got[1])
    assert.is_nil(got[2])
    assert.are.equal("three", got[3])
  end))

  it("returns a tasklet that is ready and not yet started", clean(function()
    local ran = false
    local t = loom.spawn(function()
      ran = true
    end)
    assert.are.equal("ready", t.status)
    assert.is_true(t:alive())
    assert.is_false(ran)
    t:join()
    assert.is_true(ran)
  end))

  it("accepts a callable table", clean(function()
    local obj = setmetatable({}, { __call = function(_, a) return a * 2 end })
    local t = loom.spawn(obj, 21)
    assert.are.same({ true, 42 }, { t:join() })
  end))

  it("raises 'bad argument #1' for something not callable", clean(function()
    for _, bad in ipairs({ 1, "f", {}, true }) do
      local ok, err = pcall(loom.spawn, bad)
      assert.is_false(ok)
      assert.matches("bad argument #1 to '[%w%.]*spawn' %(function expected, got %a+%)", err)
    end
    local ok, err = pcall(loom.spawn)
    assert.is_false(ok)
    assert.matches("bad argument #1", err)
  end))

  it("gives every tasklet a distinct, increasing id", clean(function()
    local a = loom.spawn(function() end)
    local b = loom.spawn(function() end)
    assert.are.equal("number", type(a.id))
    assert.are.equal("integer", math.type(a.id))
    assert.is_true(b.id > a.id)
    a:join()
    b:join()
  end))
end)

describe("loom.run()", function()
  it("inside a tasklet, runs fn as a child tasklet and returns its results", clean(function()
    local a, b, c = loom.run(function(x)
      loom.sleep(0.001)
      return x, nil, "z"
    end, 1)
    assert.are.equal(1, a)
    assert.is_nil(b)
    assert.are.equal("z", c)
  end))

  it("inside a tasklet, raises fn's error", clean(function()
    local e = {}
    local ok, err = pcall(loom.run, function()
      loom.sleep(0.001)
      error(e)
    end)
    assert.is_false(ok)
    assert.are.equal(e, err)
  end))

  it("raises 'bad argument' for a non-function", clean(function()
    local ok, err = pcall(loom.run, 42)
    assert.is_false(ok)
    assert.matches("bad argument #1", err)
  end))
end)

describe("loom.current()", function()
  it("is the running tasklet, with status 'running'", clean(function()
    local me = loom.current()
    assert.is_not_nil(me)
    assert.are.equal("running", me.status)
    local inner
    local t = loom.spawn(function()
      inner = loom.current()
    end)
    t:join()
    assert.are.equal(t, inner)
    assert.are_not.equal(me, inner)
  end))

  it("is nil in the reactor (a call_later callback)", clean(function()
    local seen = "unset"
    loom.call_later(0, function()
      seen = loom.current()
    end)
    H.wait_until(function() return seen ~= "unset" end)
    assert.is_nil(seen)
  end))
end)

describe("loom.yield()", function()
  it("requeues the caller behind the tasklets that are ready", clean(function()
    local log = {}
    local a = loom.spawn(function()
      log[#log + 1] = "a1"
      loom.yield()
      log[#log + 1] = "a2"
    end)
    local b = loom.spawn(function()
      log[#log + 1] = "b1"
    end)
    loom.yield()
    log[#log + 1] = "main"
    a:join()
    b:join()
    -- a yields behind b, main behind a and b; a's second half was queued
    -- behind main when it yielded after main.
    assert.are.same({ "a1", "b1", "main", "a2" }, log)
  end))

  it("returns at once (and nothing) when nothing else is ready", clean(function()
    local t0 = loom.now()
    assert.are.equal(0, select("#", loom.yield()))
    assert.is_true(loom.now() - t0 < 0.1)
  end))

  it("round-robins between tasklets that yield in a loop", clean(function()
    local log = {}
    local ts = {}
    for _, name in ipairs({ "x", "y", "z" }) do
      ts[#ts + 1] = loom.spawn(function()
        for i = 1, 3 do
          log[#log + 1] = name .. i
          loom.yield()
        end
      end)
    end
    for _, t in ipairs(ts) do
      t:join()
    end
    assert.are.same({ "x1", "y1", "z1", "x2", "y2", "z2", "x3", "y3", "z3" }, log)
  end))
end)

describe("loom.sleep()", function()
  it("sleep(0) is a yield: every ready tasklet runs first", clean(function()
    local ran = {}
    for i = 1, 3 do
      loom.spawn(function()
        ran[#ran + 1] = i
      end)
    end
    loom.sleep(0)
    assert.are.same({ 1, 2, 3 }, ran)
  end))

  it("sleep(0) never returns synchronously", clean(function()
    local ran = false
    local t = loom.spawn(function()
      ran = true
    end)
    loom.sleep(0)
    assert.is_true(ran)
    assert.is_false(t:alive())
    -- and with nothing ready it still returns
    loom.sleep(0)
  end))

  it("never ends before the duration has passed", clean(function()
    for _, d in ipairs({ 0.001, 0.01, 0.03 }) do
      local t0 = loom.now()
      loom.sleep(d)
      local elapsed = loom.now() - t0
      assert.is_true(elapsed >= d, ("slept %.6f for %.3f"):format(elapsed, d))
      assert.is_true(elapsed < d + 0.5, ("slept %.6f for %.3f"):format(elapsed, d))
    end
  end))

  it("wakes sleepers in deadline order", clean(function()
    local order = {}
    local ts = {}
    for _, d in ipairs({ 0.03, 0.01, 0.02 }) do
      ts[#ts + 1] = loom.spawn(function()
        loom.sleep(d)
        order[#order + 1] = d
      end)
    end
    for _, t in ipairs(ts) do
      t:join()
    end
    assert.are.same({ 0.01, 0.02, 0.03 }, order)
  end))

  it("suspends only the caller: sleepers run concurrently", clean(function()
    local t0 = loom.now()
    local ts = {}
    for i = 1, 20 do
      ts[i] = loom.spawn(loom.sleep, 0.05)
    end
    for _, t in ipairs(ts) do
      assert.is_true((t:join()))
    end
    assert.is_true(loom.now() - t0 < 0.5)
  end))

  it("waits in the kernel: a sleep costs (almost) no CPU time", clean(function()
    local c0, t0 = os.clock(), loom.now()
    loom.sleep(0.3)
    local cpu, wall = os.clock() - c0, loom.now() - t0
    assert.is_true(wall >= 0.3)
    assert.is_true(cpu < 0.05,
      ("a 0.3 s sleep used %.3f s of CPU: the drive loop spins instead of polling"):format(cpu))
  end))

  it("sleeping tasklets cost no CPU time either", clean(function()
    local t = loom.spawn(loom.sleep, 0.3)
    local c0 = os.clock()
    t:join()
    local cpu = os.clock() - c0
    assert.is_true(cpu < 0.05, ("joining a 0.3 s sleeper used %.3f s of CPU"):format(cpu))
  end))

  it("rejects negative, NaN and non-number durations with 'bad argument'", clean(function()
    local cases = {
      { -1, "negative" },
      { -0.001, "negative" },
      { 0 / 0, "NaN" },
      { "soon", "number expected, got string" },
      { {}, "number expected, got table" },
      { true, "number expected, got boolean" },
    }
    for _, c in ipairs(cases) do
      local ok, err = pcall(loom.sleep, c[1])
      assert.is_false(ok)
      assert.matches("bad argument #1 to '[%w%.]*sleep'", err)
      assert.is_true(H.has(err, c[2]), err)
    end
    local ok, err = pcall(loom.sleep)
    assert.is_false(ok)
    assert.matches("bad argument #1 to '[%w%.]*sleep' %(number expected, got no value%)", err)
  end))

  it("clamps huge durations instead of failing", clean(function()
    local r = pack(loom.timeout(0.01, loom.sleep, 1e300))
    assert.are.same({ n = 3, nil, r[2], "ETIMEDOUT" }, r)
    r = pack(loom.timeout(0.01, loom.sleep, math.huge))
    assert.are.equal("ETIMEDOUT", r[3])
  end))
end)

describe("loom.now()", function()
  it("is a number of seconds that never goes backwards", clean(function()
    local prev = loom.now()
    assert.are.equal("number", type(prev))
    for _ = 1, 10000 do
      local n = loom.now()
      assert(n >= prev, "loom.now() went backwards")
      prev = n
    end
  end))

  it("advances with sleeps", clean(function()
    local t0 = loom.now()
    loom.sleep(0.02)
    local d = loom.now() - t0
    assert.is_true(d >= 0.02 and d < 1)
  end))
end)

describe("loom.tasklets(), loom.dump() and loom.stats()", function()
  it("tasklets() lists live tasklets only", clean(function()
    local ch = loom.channel()
    local t = loom.spawn(function() ch:receive() end)
    local function listed(x)
      for _, y in ipairs(loom.tasklets()) do
        if y == x then return true end
      end
      return false
    end
    assert.is_true(listed(loom.current()))
    assert.is_true(listed(t)) -- ready, not started
    loom.yield()
    assert.is_true(listed(t)) -- blocked
    ch:send(1)
    t:join()
    assert.is_false(listed(t))
  end))

  it("dump() shows every tasklet with its status and what it waits on", clean(function()
    local ch = loom.channel()
    local a = loom.spawn(function() ch:receive() end)
    a.name = "dump-receiver"
    local b = loom.spawn(loom.sleep, 5)
    loom.yield()
    local d = loom.dump()
    assert.are.equal("string", type(d))
    assert.is_true(H.has(d, "'dump-receiver' [blocked] waits on channel receive"), d)
    assert.is_true(H.has(d, ("#%d [blocked] waits on sleep"):format(b.id)), d)
    assert.is_true(H.has(d, "[running]"), d)
    assert.is_true(H.has(d, "10-tasklet_spec.lua"), d) -- tracebacks show where
    a:kill()
    b:kill()
    a:join()
    b:join()
  end))

  it("stats() counts tasklets, ready, blocked, switches and handles", clean(function()
    local s0 = loom.stats()
    for _, k in ipairs({ "tasklets", "ready", "blocked", "switches", "preemptions", "handles",
                         "memory" }) do
      assert.are.equal("number", type(s0[k]), k)
    end
    assert.is_true(s0.handles >= 0, "stats().handles is negative: " .. s0.handles)
    assert.is_true(s0.memory > 0)
    local ev = loom.event()
    local ts = {}
    for i = 1, 3 do
      ts[i] = loom.spawn(function() ev:wait() end)
    end
    local s1 = loom.stats()
    assert.are.equal(s0.tasklets + 3, s1.tasklets)
    assert.are.equal(s0.ready + 3, s1.ready)
    loom.yield()
    local s2 = loom.stats()
    assert.are.equal(s0.blocked + 3, s2.blocked)
    assert.is_true(s2.switches >= s0.switches + 4)
    ev:set()
    for _, t in ipairs(ts) do t:join() end
    local s3 = loom.stats()
    assert.are.equal(s0.tasklets, s3.tasklets)
    assert.are.equal(s0.blocked, s3.blocked)
  end))
end)

describe("t:join()", function()
  it("returns true and every result, nils included", clean(function()
    local t = loom.spawn(function()
      loom.sleep(0.001)
      return 1, nil, "three", nil
    end)
    local r = pack(t:join())
    assert.are.equal(5, r.n)
    assert.are.same({ n = 5, true, 1, nil, "three", nil }, r)
  end))

  it("returns just true for a tasklet that returned nothing", clean(function()
    local t = loom.spawn(function() end)
    local r = pack(t:join())
    assert.are.same({ n = 1, true }, r)
  end))

  it("returns false and the very error value for a tasklet that raised", clean(function()
    local e = setmetatable({}, { __tostring = function() return "custom" end })
    local t = loom.spawn(function()
      loom.sleep(0.001)
      error(e)
    end)
    local ok, err = t:join()
    assert.is_false(ok)
    assert.are.equal(e, err)
  end))

  it("returns the same results again for a dead tasklet", clean(function()
    local t = loom.spawn(function() return "r", 2 end)
    assert.are.same({ true, "r", 2 }, { t:join() })
    assert.are.same({ true, "r", 2 }, { t:join() })
    local f = loom.spawn(function() error("once", 0) end)
    assert.are.same({ false, "once" }, { f:join() })
    assert.are.same({ false, "once" }, { f:join() })
  end))

  it("times out with the ETIMEDOUT triple; the tasklet keeps running", clean(function()
    local t = loom.spawn(function()
      loom.sleep(0.05)
      return "late"
    end)
    local t0 = loom.now()
    local r = pack(t:join(0.01))
    assert.are.equal(3, r.n)
    assert.is_nil(r[1])
    assert.matches("^ETIMEDOUT: ", r[2])
    assert.are.equal("ETIMEDOUT", r[3])
    assert.is_true(loom.now() - t0 >= 0.01)
    assert.is_true(t:alive())
    assert.are.same({ true, "late" }, { t:join() })
  end))

  it("join(0) of a waiting tasklet times out at once", clean(function()
    local t = loom.spawn(loom.sleep, 0.05)
    loom.yield()
    local t0 = loom.now()
    local _, _, code = t:join(0)
    assert.are.equal("ETIMEDOUT", code)
    assert.is_true(loom.now() - t0 < 0.04)
    assert.is_true(t:alive())
    t:join()
  end))

  it("wakes every joiner with the results", clean(function()
    local t = loom.spawn(function()
      loom.sleep(0.01)
      return "shared"
    end)
    local got = {}
    local joiners = {}
    for i = 1, 3 do
      joiners[i] = loom.spawn(function()
        got[i] = pack(t:join())
      end)
    end
    for _, j in ipairs(joiners) do j:join() end
    for i = 1, 3 do
      assert.are.same({ n = 2, true, "shared" }, got[i])
    end
  end))

  it("refuses to join the calling tasklet itself", clean(function()
    local ok, err = pcall(function() return loom.current():join() end)
    assert.is_false(ok)
    assert.matches("cannot join itself", err)
  end))

  it("rejects a bad timeout with 'bad argument'", clean(function()
    local t = loom.spawn(function() end)
    local ok, err = pcall(t.join, t, -1)
    assert.is_false(ok)
    assert.matches("bad argument", err)
    ok, err = pcall(t.join, t, "x")
    assert.is_false(ok)
    assert.matches("bad argument", err)
    t:join()
  end))

  it("takes the error of the tasklet it joins: nothing is reported", clean(function()
    local reports = capture_reports(function()
      local t = loom.spawn(function() error("joined error") end)
      local ok = t:join()
      assert.is_false(ok)
    end)
    assert.are.equal(0, #reports)
  end))
end)

describe("t:kill()", function()
  it("raises TaskletExit at the waiting point; <close> and pcall handlers run", clean(function()
    local log = {}
    local caught
    local t = loom.spawn(function()
      local _ <close> = H.closer(log, "closed")
      local _, err = pcall(loom.sleep, 10)
      caught = err
      log[#log + 1] = "after pcall"
      error(err, 0)
    end)
    loom.yield()
    assert.are.equal("blocked", t.status)
    t:kill("go away")
    local ok, err = t:join()
    assert.is_false(ok)
    assert.is_true(loom.TaskletExit:is(err))
    assert.are.equal("EKILLED", err.code)
    assert.are.equal("go away", err.message)
    assert.are.equal("EKILLED: go away", tostring(err))
    assert.are.equal(err, caught)
    assert.are.same({ "after pcall", "closed" }, log)
    assert.are.equal("dead", t.status)
  end))

  it("of a tasklet that never started: its body never runs", clean(function()
    local ran = false
    local t = loom.spawn(function() ran = true end)
    t:kill()
    local ok, err = t:join()
    assert.is_false(ok)
    assert.is_true(loom.TaskletExit:is(err))
    assert.is_false(ran)
    assert.is_false(t:alive())
  end))

  it("of a ready tasklet (woken, not yet resumed): it does not continue", clean(function()
    local ev = loom.event()
    local reached = false
    local t = loom.spawn(function()
      ev:wait()
      reached = true
    end)
    loom.yield()
    ev:set()
    assert.are.equal("ready", t.status)
    t:kill()
    local ok, err = t:join()
    assert.is_false(ok)
    assert.is_true(loom.TaskletExit:is(err))
    assert.is_false(reached)
  end))

  it("of a tasklet that yielded: it does not continue", clean(function()
    local reached = false
    local t = loom.spawn(function()
      loom.yield()
      reached = true
    end)
    loom.yield() -- t runs and yields: it is ready again
    t:kill()
    assert.is_false((t:join()))
    assert.is_false(reached)
  end))

  it("is never reported as an error", clean(function()
    local errors0 = loom.stats().errors
    local reports = capture_reports(function()
      local a = loom.spawn(loom.sleep, 10)
      local b = loom.spawn(function() end)
      loom.yield()
      a:kill()
      b:kill()
      -- not joined: the scheduler alone finishes them
      H.wait_until(function() return not a:alive() and not b:alive() end)
    end)
    assert.are.equal(0, #reports)
    if errors0 then
      assert.are.equal(errors0, loom.stats().errors)
    end
  end))

  it("of a dead tasklet is harmless", clean(function()
    local t = loom.spawn(function() return 1 end)
    t:join()
    assert.has_no.errors(function() t:kill() end)
    assert.are.same({ true, 1 }, { t:join() })
  end))

  it("of the calling tasklet raises TaskletExit at once", clean(function()
    local after = false
    local t = loom.spawn(function()
      loom.current():kill("self")
      after = true
    end)
    local ok, err = t:join()
    assert.is_false(ok)
    assert.is_true(loom.TaskletExit:is(err))
    assert.is_false(after)
  end))

  it("takes a killed receiver off the channel: nothing is delivered to it", clean(function()
    local ch = loom.channel()
    local t = loom.spawn(function() return ch:receive() end)
    loom.yield()
    assert.are.equal(-1, ch.balance)
    t:kill()
    assert.are.equal(0, ch.balance)
    t:join()
    local ok, _, code = ch:send("v", 0)
    assert.is_nil(ok)
    assert.are.equal("ETIMEDOUT", code)
  end))

  it("a tasklet may catch TaskletExit and still wait afterwards", clean(function()
    local t = loom.spawn(function()
      local ok, err = pcall(loom.sleep, 10)
      assert(not ok and loom.TaskletExit:is(err))
      loom.sleep(0.001)
      return "cleaned up"
    end)
    loom.yield()
    t:kill()
    assert.are.same({ true, "cleaned up" }, { t:join() })
  end))
end)

describe("t:throw()", function()
  it("raises the value at the waiting point", clean(function()
    local e = { reason = "thrown" }
    local t = loom.spawn(function()
      local ok, err = pcall(loom.sleep, 10)
      return ok, err
    end)
    loom.yield()
    t:throw(e)
    local ok, pok, perr = t:join()
    assert.is_true(ok)
    assert.is_false(pok)
    assert.are.equal(e, perr)
  end))

  it("an uncaught throw ends the tasklet with that error", clean(function()
    local t = loom.spawn(loom.sleep, 10)
    loom.yield()
    t:throw("thrown string")
    assert.are.same({ false, "thrown string" }, { t:join() })
  end))

  it("into a tasklet that never started: the body never runs", clean(function()
    local ran = false
    local t = loom.spawn(function() ran = true end)
    t:throw("early")
    assert.are.same({ false, "early" }, { t:join() })
    assert.is_false(ran)
  end))

  it("into a dead tasklet raises", clean(function()
    local t = loom.spawn(function() end)
    t:join()
    local ok, err = pcall(t.throw, t, "x")
    assert.is_false(ok)
    assert.matches("dead", err)
  end))
end)

describe("tasklet fields", function()
  it("status goes ready -> running -> blocked -> dead", clean(function()
    local seen
    local ev = loom.event()
    local t = loom.spawn(function()
      seen = loom.current().status
      ev:wait()
    end)
    assert.are.equal("ready", t.status)
    loom.yield()
    assert.are.equal("running", seen)
    assert.are.equal("blocked", t.status)
    ev:set()
    assert.are.equal("ready", t.status)
    t:join()
    assert.are.equal("dead", t.status)
  end))

  it("name is nil by default, settable, shown by tostring", clean(function()
    local t = loom.spawn(function() end)
    assert.is_nil(t.name)
    t.name = "worker"
    assert.are.equal("worker", t.name)
    assert.is_true(H.has(tostring(t), "'worker'"))
    assert.is_true(H.has(tostring(t), "#" .. t.id))
    t.name = nil
    assert.is_nil(t.name)
    t:join()
  end))

  it("other fields cannot be set", clean(function()
    local t = loom.spawn(function() end)
    assert.has_error(function() t.status = "dead" end)
    assert.has_error(function() t.id = 5 end)
    assert.has_error(function() t.whatever = 1 end)
    assert.has_error(function() t.name = {} end)
    t:join()
  end))

  it("alive() is true until the tasklet has ended", clean(function()
    local t = loom.spawn(loom.sleep, 0.001)
    assert.is_true(t:alive())
    loom.yield()
    assert.is_true(t:alive())
    t:join()
    assert.is_false(t:alive())
  end))

  it("traceback() shows where a blocked tasklet waits", clean(function()
    local t = loom.spawn(function()
      loom.sleep(10)
    end)
    assert.are.equal("string", type(t:traceback()))
    loom.yield()
    local tb = t:traceback()
    assert.is_true(H.has(tb, "sleep"), tb)
    assert.is_true(H.has(tb, "10-tasklet_spec.lua"), tb)
    t:kill()
    t:join()
    assert.are.equal("string", type(t:traceback()))
  end))

  it("tostring() names the type, the id and the status", clean(function()
    local t = loom.spawn(function() end)
    assert.matches("^loom%.tasklet #%d+ %(ready%)$", tostring(t))
    t:join()
    assert.matches("%(dead%)$", tostring(t))
  end))
end)

describe("loom.timeout()", function()
  it("returns fn's results when it finishes in time", clean(function()
    local r = pack(loom.timeout(1, function(a, b)
      loom.sleep(0.001)
      return a, nil, b
    end, "x", "y"))
    assert.are.same({ n = 3, "x", nil, "y" }, r)
  end))

  it("returns the ETIMEDOUT triple when the deadline passes", clean(function()
    local t0 = loom.now()
    local r = pack(loom.timeout(0.02, function()
      loom.sleep(5)
      return "not this"
    end))
    local elapsed = loom.now() - t0
    assert.are.equal(3, r.n)
    assert.is_nil(r[1])
    assert.matches("^ETIMEDOUT: ", r[2])
    assert.are.equal("ETIMEDOUT", r[3])
    assert.is_true(elapsed >= 0.02 and elapsed < 1, "elapsed " .. elapsed)
  end))

  it("interrupts and unwinds the blocking call in progress", clean(function()
    local log = {}
    local ch = loom.channel()
    local _, _, code = loom.timeout(0.01, function()
      local _ <close> = H.closer(log, "closed")
      ch:receive()
      log[#log + 1] = "after receive"
    end)
    assert.are.equal("ETIMEDOUT", code)
    assert.are.same({ "closed" }, log)
    assert.are.equal(0, ch.balance) -- the receive left the channel
  end))

  it("nested: the inner deadline gives the inner triple, the outer goes on", clean(function()
    local r = pack(loom.timeout(1, function()
      local a, _, c = loom.timeout(0.01, loom.sleep, 5)
      return "outer went on", a, c
    end))
    assert.are.same({ n = 3, "outer went on", nil, "ETIMEDOUT" }, r)
  end))

  it("nested: the outer deadline passes through the inner timeout", clean(function()
    local inner_returned = false
    local r = pack(loom.timeout(0.01, function()
      loom.timeout(5, loom.sleep, 5)
      inner_returned = true
      return "no"
    end))
    assert.are.equal("ETIMEDOUT", r[3])
    assert.is_false(inner_returned)
  end))

  it("lets other errors pass through unchanged", clean(function()
    local e = {}
    local ok, err = pcall(loom.timeout, 1, function()
      loom.sleep(0.001)
      error(e)
    end)
    assert.is_false(ok)
    assert.are.equal(e, err)
    ok, err = pcall(loom.timeout, 1, error, "plain", 0)
    assert.is_false(ok)
    assert.are.equal("plain", err)
  end))

  it("lets a kill pass through", clean(function()
    local t = loom.spawn(function()
      return loom.timeout(5, loom.sleep, 5)
    end)
    loom.yield()
    t:kill()
    local ok, err = t:join()
    assert.is_false(ok)
    assert.is_true(loom.TaskletExit:is(err))
  end))

  it("leaves no deadline behind: a later wait is not interrupted", clean(function()
    assert.are.equal("done", loom.timeout(0.02, function() return "done" end))
    loom.sleep(0.04) -- past the old deadline
    local timers = loom.stats().timers
    assert.are.equal("spun", loom.timeout(0.01, function()
      H.spin(0.02) -- past the deadline without waiting
      return "spun"
    end))
    loom.sleep(0.01)
    assert.are.equal(timers, loom.stats().timers)
  end))

  it("a deadline that expires together with a kill never fires later", clean(function()
    -- The kill and the deadline reach the tasklet in the same timer pass,
    -- before it runs again. loom.timeout passes the kill through; the
    -- tasklet's cleanup that waits afterwards must not get the old deadline.
    local t
    loom.call_later(0.005, function() t:kill() end)
    t = loom.spawn(function()
      local _, e = pcall(loom.timeout, 0.005, loom.sleep, 10)
      local later = pack(pcall(loom.sleep, 0.001))
      return e, later
    end)
    loom.yield()
    H.spin(0.015)
    local ok, e, later = t:join()
    assert.is_true(ok)
    assert.is_true(loom.TaskletExit:is(e))
    assert.is_true(later[1], "a later sleep raised " .. tostring(later[2]))
  end))

  it("rejects bad arguments", clean(function()
    for _, args in ipairs({ { -1, print }, { 0 / 0, print }, { "1", print } }) do
      local ok, err = pcall(loom.timeout, args[1], args[2])
      assert.is_false(ok)
      assert.matches("bad argument #1 to 'timeout'", err)
    end
    local ok, err = pcall(loom.timeout, 1, 2)
    assert.is_false(ok)
    assert.matches("bad argument #2 to 'timeout'", err)
  end))
end)

describe("loom.group()", function()
  it("wait() returns true when every member ended well; members run concurrently",
    clean(function()
      local g = loom.group()
      local done = {}
      local t0 = loom.now()
      for i = 1, 5 do
        g:spawn(function()
          loom.sleep(0.1)
          done[#done + 1] = i
        end)
      end
      local r = pack(g:wait())
      assert.are.same({ n = 1, true }, r)
      assert.are.equal(5, #done)
      assert.is_true(loom.now() - t0 < 0.4) -- one after the other would take 0.5 s
      assert.are.same({ n = 1, true }, pack(g:wait()))
    end))

  it("an empty group's wait() returns true at once", clean(function()
    assert.is_true(loom.group():wait())
    assert.is_true(loom.group():wait(0))
  end))

  it("the first error kills the other members and wait() returns false, err",
    clean(function()
      local reports = capture_reports(function()
        local g = loom.group()
        local log = {}
        local slow = g:spawn(function()
          local _ <close> = H.closer(log, "slow closed")
          loom.sleep(10)
        end)
        g:spawn(function()
          loom.sleep(0.01)
          error("first", 0)
        end)
        local second = g:spawn(function()
          loom.sleep(0.02)
          error("second", 0)
        end)
        local ok, err = g:wait()
        assert.is_false(ok)
        assert.are.equal("first", err)
        assert.are.same({ "slow closed" }, log)
        assert.is_false(slow:alive())
        assert.is_false(second:alive())
      end)
      assert.are.equal(0, #reports) -- the group takes its members' errors
    end))

  it("cancel() kills every member", clean(function()
    local g = loom.group()
    local log = {}
    local ts = {}
    for i = 1, 3 do
      ts[i] = g:spawn(function()
        local _ <close> = H.closer(log, i)
        loom.sleep(10)
      end)
    end
    loom.yield()
    g:cancel()
    local r = pack(g:wait(1))
    assert.are_not.equal("ETIMEDOUT", r[3])
    for _, t in ipairs(ts) do
      assert.is_false(t:alive())
    end
    table.sort(log)
    assert.are.same({ 1, 2, 3 }, log)
    assert.has_error(function() g:spawn(function() end) end)
  end))

  it("wait(s) gives the ETIMEDOUT triple and leaves the members running", clean(function()
    local g = loom.group()
    local t = g:spawn(loom.sleep, 0.05)
    local r = pack(g:wait(0.01))
    assert.are.equal(3, r.n)
    assert.is_nil(r[1])
    assert.are.equal("ETIMEDOUT", r[3])
    assert.is_true(t:alive())
    assert.is_true(g:wait())
  end))

  it("a member killed from outside is not a group error", clean(function()
    local g = loom.group()
    local t = g:spawn(loom.sleep, 10)
    local other = g:spawn(loom.sleep, 0.01)
    loom.yield()
    t:kill()
    assert.is_true(g:wait())
    assert.is_false(other:alive())
  end))
end)
