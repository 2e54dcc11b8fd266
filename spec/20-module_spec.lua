-- Specs for loom used as a module from a STOCK lua5.4 (SPEC section 1,
-- "Main thread", design rule Y6): a blocking call outside any tasklet
-- drives the scheduler and the loop until it can complete.
--
-- This file is tagged #stock. It runs under a plain lua5.4, not the loom
-- CLI (the CI does the same, .ci/run):
--
--   LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='build/lib/?.so;;' \
--     lua5.4 /usr/bin/busted --tags=stock spec/20-module_spec.lua
--
-- and the CLI run of the other specs skips it:
--
--   build/loom /usr/bin/busted --exclude-tags=stock spec
--
-- (LOOM_BIN=<dir>/loom selects another build: its <dir>/lib holds the
-- loom/core.so that the child processes below load.)
local loom = require "loom"
local H = require "spec.helper"

local clean = H.clean
local pack = table.pack

if loom.current() ~= nil then
  -- Run by the loom CLI without --exclude-tags=stock: these examples need
  -- the main thread of a plain lua5.4.
  describe("loom as a module #stock", function()
    pending("runs under a stock lua5.4 only (see the commands at the top of this file)")
  end)
  return
end

describe("loom as a module #stock", function()
  it("is loaded by require from a plain lua5.4; the main thread is no tasklet", clean(function()
    assert.are.equal("table", type(loom))
    assert.is_nil(loom.current())
    assert.is_nil(rawget(_G, "loom")) -- the module does not set globals
  end))

  it("a fresh runtime has no tasklet, timer or handle", function()
    local code, out, err = H.run_stock([[
local s = require("loom").stats()
print(s.tasklets, s.timers, s.handles)
]])
    assert.are.equal(0, code, err)
    assert.are.equal("0\t0\t0\n", out)
  end)

  it("loom.sleep in the main thread drives the loop", clean(function()
    local ran = false
    loom.spawn(function()
      loom.sleep(0.01)
      ran = true
    end)
    local t0 = loom.now()
    loom.sleep(0.05)
    local d = loom.now() - t0
    assert.is_true(d >= 0.05 and d < 1, "slept " .. d)
    assert.is_true(ran)
  end))

  it("loom.spawn queues; the next blocking call or yield runs the tasklet", clean(function()
    local log = {}
    local t = loom.spawn(function() log[#log + 1] = "ran" end)
    assert.are.same({}, log)
    assert.are.equal("ready", t.status)
    loom.yield()
    assert.are.same({ "ran" }, log)
    assert.is_false(t:alive())
  end))

  it("loom.run returns fn's results", clean(function()
    local r = pack(loom.run(function(a, b)
      loom.sleep(0.001)
      return a, nil, b
    end, 1, 2))
    assert.are.same({ n = 3, 1, nil, 2 }, r)
  end))

  it("loom.run raises fn's error", clean(function()
    local e = {}
    local ok, err = pcall(loom.run, function()
      loom.sleep(0.001)
      error(e)
    end)
    assert.is_false(ok)
    assert.are.equal(e, err)
  end))

  it("loom.run drives every tasklet, not only fn", clean(function()
    local other_done = false
    loom.run(function()
      loom.spawn(function()
        loom.sleep(0.01)
        other_done = true
      end)
    end)
    assert.is_true(other_done)
  end))

  it("loom.run inside a tasklet started by loom.run", clean(function()
    local ok, r = pcall(loom.run, function()
      return loom.run(function()
        loom.sleep(0.001)
        return "nested"
      end)
    end)
    assert.is_true(ok, tostring(r))
    assert.are.equal("nested", r)
  end))

  it("the main thread receives from a tasklet and sends to one", clean(function()
    local ch = loom.channel()
    loom.spawn(function()
      loom.sleep(0.01)
      ch:send("from tasklet")
    end)
    assert.are.equal("from tasklet", ch:receive())
    local r = loom.spawn(function() return ch:receive() end)
    assert.is_true(ch:send("to tasklet"))
    assert.are.same({ true, "to tasklet" }, { r:join() })
  end))

  it("the main thread joins, waits on events and times out", clean(function()
    local ev = loom.event()
    local t = loom.spawn(function()
      loom.sleep(0.01)
      ev:set()
      return "joined"
    end)
    assert.is_true(ev:wait())
    assert.are.same({ true, "joined" }, { t:join() })
    local r = pack(loom.timeout(0.01, function() return loom.channel():receive() end))
    assert.are.equal("ETIMEDOUT", r[3])
    r = pack(loom.channel():receive(0.01))
    assert.are.equal("ETIMEDOUT", r[3])
  end))

  it("a generator in the main thread may block", clean(function()
    local gen = coroutine.wrap(function()
      loom.sleep(0.001)
      coroutine.yield(1)
      loom.sleep(0.001)
      return 2
    end)
    assert.are.equal(1, gen())
    assert.are.equal(2, gen())
  end))

  it("a deadlock in the main thread raises loom.Deadlock instead of hanging", clean(function()
    local ch = loom.channel()
    local t = loom.spawn(function() ch:receive() end)
    t.name = "stuck"
    local t0 = loom.now()
    local ok, err = pcall(function() return loom.channel():receive() end)
    assert.is_false(ok)
    assert.is_true(loom.Deadlock:is(err), tostring(err))
    assert.are.equal("EDEADLK", err.code)
    assert.is_true(H.has(tostring(err), "all tasklets are asleep"), tostring(err))
    assert.is_true(H.has(tostring(err), "main thread waits on channel receive"), tostring(err))
    assert.is_true(H.has(tostring(err), "'stuck' waits on channel receive"), tostring(err))
    assert.is_true(loom.now() - t0 < 1)
    -- the waiting tasklets were killed: the runtime is clean and usable
    assert.is_false(t:alive())
    assert.are.equal(0, #loom.tasklets())
    assert.are.equal("usable", loom.run(function() return "usable" end))
  end))

  it("loom.run raises loom.Deadlock when its tasklets wait on each other", clean(function()
    local a, b = loom.channel(), loom.channel()
    local ok, err = pcall(loom.run, function()
      loom.spawn(function() a:receive(); b:send(1) end)
      b:receive()
      a:send(1)
    end)
    assert.is_false(ok)
    assert.is_true(loom.Deadlock:is(err), tostring(err))
    assert.are.equal(0, #loom.tasklets())
  end))

  it("a main thread waiting on a sleeping tasklet is no deadlock", clean(function()
    local ev = loom.event()
    loom.call_later(0.02, function() ev:set() end)
    assert.is_true(ev:wait())
  end))

  it("blocking in a call_later callback raises 'cannot block in the reactor'", clean(function()
    local result
    loom.call_later(0, function()
      result = pack(pcall(loom.sleep, 0.01))
    end)
    loom.sleep(0.01)
    assert.is_false(result[1])
    assert.is_true(H.has(result[2], "cannot block in the reactor"), result[2])
    local reports = {}
    loom.on_error(function(e) reports[#reports + 1] = tostring(e) end)
    loom.call_later(0, function() loom.channel():receive() end)
    loom.sleep(0.01)
    loom.on_error(nil)
    assert.are.equal(1, #reports)
    assert.is_true(H.has(reports[1], "cannot block in the reactor"), reports[1])
  end))

  it("a __gc finalizer that blocks raises a clear error; no tasklet runs inside the collector",
    clean(function()
      local ran_inside = false
      local in_gc = false
      local seen
      local t = loom.spawn(function()
        if in_gc then ran_inside = true end
      end)
      do
        setmetatable({}, { __gc = function()
          in_gc = true
          seen = pack(pcall(loom.sleep, 0.001))
          in_gc = false
        end })
      end
      collectgarbage()
      collectgarbage()
      assert.is_not_nil(seen, "the finalizer did not run")
      assert.is_false(ran_inside, "the scheduler ran a tasklet inside a __gc finalizer")
      assert.is_false(seen[1], "loom.sleep inside __gc did not raise")
      assert.is_true(H.has(tostring(seen[2]), "cannot block"), tostring(seen[2]))
      t:join()
    end))

  it("a foreign coroutine.resume of a tasklet's thread is refused", clean(function()
    local th
    local t = loom.spawn(function()
      th = coroutine.running()
      loom.sleep(0.01)
      return "ok"
    end)
    loom.yield()
    local r = pack(pcall(coroutine.resume, th))
    assert.is_true(r[1] == false or r[2] == false)
    assert.are.same({ true, "ok" }, { t:join() })
  end))

  it("work still queued when the state closes is killed, not run", function()
    local code, out, err = H.run_stock([[
local loom = require "loom"
loom.spawn(function() print("ran") end)
local t = loom.spawn(function() loom.sleep(0) end)
print("end of script")
]])
    assert.are.equal(0, code, err)
    assert.are.equal("end of script\n", out)
    assert.are.equal("", err)
  end)

  it("an unhandled tasklet error is reported on stderr", function()
    local code, out, err = H.run_stock([[
local loom = require "loom"
loom.spawn(function() error("module tasklet failed") end)
loom.sleep(0.01)
print("after")
]])
    assert.are.equal(0, code, err) -- the library never decides the exit status
    assert.are.equal("after\n", out)
    assert.is_true(H.has(err, "module tasklet failed"), err)
    assert.is_true(H.has(err, "spawned at"), err)
  end)
end)
