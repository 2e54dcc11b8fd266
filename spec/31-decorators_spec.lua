-- Specs for the bridges between Deferreds and tasklets (SPEC section 5):
-- deferred_tasklet, blocking_tasklet, block_on, looping_call, and how they
-- behave with kill, loom.timeout, the reactor and the main thread.
-- Run: build/loom /usr/bin/busted spec/31-decorators_spec.lua
local loom = require "loom"

local function capture_reports(fn)
  local reports = {}
  loom.on_error(function(err, where, tb)
    reports[#reports + 1] = { err = err, where = where, tb = tb }
  end)
  local ok, e = pcall(fn, reports)
  loom.on_error(nil)
  if not ok then error(e, 0) end
  return reports
end

local function full_gc()
  collectgarbage()
  collectgarbage()
end

local function closer(fn)
  return setmetatable({}, { __close = fn })
end

local function result_of(d)
  local state, value = "none", nil
  d:add_callbacks(function(v)
    state, value = "ok", v
    return v
  end, function(f)
    state, value = "failed", f
    return f
  end)
  assert(state == "ok", "expected a success result, got " .. state .. " " .. tostring(value))
  return value
end

local function failure_of(d)
  local state, value = "none", nil
  d:add_callbacks(function(v)
    state, value = "ok", v
    return v
  end, function(f)
    state, value = "failed", f
    return nil
  end)
  assert(state == "failed", "expected a failure, got " .. state .. " " .. tostring(value))
  return value
end

-- Runs fn in reactor context (a call_later callback) and returns what
-- pcall(fn) gave there.
local function in_reactor(fn)
  local r
  loom.call_later(0, function() r = table.pack(pcall(fn)) end)
  while not r do loom.sleep(0.001) end
  return table.unpack(r, 1, r.n)
end

-- The loom binary running these specs, and a shell command that runs Lua
-- code in a plain lua5.4 (the main thread: loom used as a module).
local loom_bin = (arg and arg[-1]) or "build/loom"
if not loom_bin:find("loom") then loom_bin = "build/loom" end
local build_dir = loom_bin:match("^(.*)/[^/]*$") or "."

-- An ASan build's core.so needs the sanitizer runtimes preloaded into the
-- uninstrumented lua5.4 (as spec/helper.lua does for the other specs).
local function preload()
  local p = io.popen("ldd '" .. build_dir .. "/lib/loom/core.so' 2>/dev/null")
  local libs = {}
  for line in p:lines() do
    local lib = line:match("=>%s*(%S+)")
    if lib and (lib:find("libasan", 1, true) or lib:find("libubsan", 1, true)) then
      libs[#libs + 1] = lib
    end
  end
  p:close()
  if #libs == 0 then return "" end
  return "LD_PRELOAD='" .. table.concat(libs, " ") .. "' ASAN_OPTIONS=detect_leaks=0 "
end

local function run_lua5_4(code)
  local cmd = string.format(
    [[%slua5.4 -e 'package.cpath = %q .. package.cpath' -e %q 2>&1; echo "exit=$?"]],
    preload(), build_dir .. "/lib/?/core.so;", code)
  local p = io.popen(cmd)
  local out = p:read("a")
  p:close()
  return out
end

local baseline

describe("loom.deferred_tasklet()", function()
  setup(function()
    baseline = #loom.tasklets()
  end)

  after_each(function()
    assert.equal(baseline, #loom.tasklets())
  end)

  it("starts fn at once and returns its Deferred when fn first waits", function()
    local log = {}
    local f = loom.deferred_tasklet(function(x)
      log[#log + 1] = "start " .. x
      loom.sleep(0.01)
      log[#log + 1] = "end"
      return x * 2, "only the first result counts"
    end)
    local d = f(21)
    log[#log + 1] = "returned"
    assert.same({ "start 21", "returned" }, log)
    assert.is_false(d.called)
    assert.equal(42, loom.block_on(d))
    assert.same({ "start 21", "returned", "end" }, log)
  end)

  it("has fired already when fn does not wait", function()
    local d = loom.deferred_tasklet(function(a, b) return a .. b end)("x", "y")
    assert.is_true(d.called)
    assert.equal("xy", result_of(d))
  end)

  it("runs fn in a tasklet of its own, kept as d.tasklet", function()
    local inner
    local d = loom.deferred_tasklet(function()
      inner = loom.current()
      loom.sleep(0)
    end)()
    assert.is_not_nil(inner)
    assert.are_not.equal(loom.current(), inner)
    assert.equal(inner, d.tasklet)
    loom.block_on(d)
    assert.equal("dead", inner.status)
  end)

  it("errbacks with a Failure carrying the tasklet's traceback when fn raises", function()
    local function deep() error("tasklet failed") end
    local d = loom.deferred_tasklet(function()
      loom.sleep(0)
      deep()
    end)()
    local ok, err = pcall(loom.block_on, d)
    assert.is_false(ok)
    assert.matches("tasklet failed", err)
    local e = loom.deferred_tasklet(function() deep() end)()
    local f = failure_of(e)
    assert.matches("tasklet failed", f.value)
    assert.matches("deep", f.traceback)
  end)

  it("chains on a Deferred that fn returns", function()
    local later = loom.deferred()
    local d = loom.deferred_tasklet(function() return later end)()
    assert.is_true(d.called)
    later:callback("through the chain")
    assert.equal("through the chain", result_of(d))
  end)

  it("errbacks with a Failure that fn returns", function()
    local f = loom.Failure("returned failure")
    local d = loom.deferred_tasklet(function() return f end)()
    assert.equal(f, failure_of(d))
  end)

  it("errbacks with a TaskletExit failure, never reported, when the tasklet is killed", function()
    local reports = capture_reports(function()
      local d = loom.deferred_tasklet(function() loom.sleep(10) end)()
      d.tasklet:kill()
      loom.sleep(0)
      local f = failure_of(d)
      assert.is_true(loom.TaskletExit:is(f.value))
      do
        local lost = loom.deferred_tasklet(function() loom.sleep(10) end)()
        lost.tasklet:kill()
        loom.sleep(0)
        assert.is_true(lost.called)
      end
      full_gc()
    end)
    assert.same({}, reports)
  end)

  it("clears a failure it replaces when a killed tasklet's failure is returned", function()
    local reports = capture_reports(function()
      do
        local killed = loom.deferred_tasklet(function() loom.sleep(10) end)()
        killed.tasklet:kill()
        loom.sleep(0)
        local exit_failure = failure_of(killed)
        local d = loom.fail("replaced by the kill")
        d:add_errback(function() return exit_failure end)
      end
      full_gc()
    end)
    assert.same({}, reports)
  end)

  it("is cancelled by d:cancel(), which kills the tasklet", function()
    local closed = false
    local reports = capture_reports(function()
      local d = loom.deferred_tasklet(function()
        local guard <close> = closer(function() closed = true end)
        loom.sleep(10)
        return "never"
      end)()
      d:cancel()
      assert.is_true(loom.Cancelled:is(failure_of(d).value))
      loom.sleep(0)
      assert.is_true(closed)
      assert.is_false(d.tasklet:alive())
      full_gc()
    end)
    assert.same({}, reports)
  end)

  it("cancels the Deferred that fn returned, once fn has returned it", function()
    local inner_cancelled = false
    local inner = loom.deferred(function() inner_cancelled = true end)
    local d = loom.deferred_tasklet(function() return inner end)()
    d:cancel()
    assert.is_true(inner_cancelled)
    assert.is_true(loom.Cancelled:is(failure_of(d).value))
  end)

  it("times out with add_timeout(), killing the tasklet", function()
    local closed = false
    local d = loom.deferred_tasklet(function()
      local guard <close> = closer(function() closed = true end)
      loom.sleep(10)
    end)()
    d:add_timeout(0.01)
    local ok, err = pcall(loom.block_on, d)
    assert.is_false(ok)
    assert.is_true(loom.Timeout:is(err))
    loom.sleep(0)
    assert.is_true(closed)
  end)

  it("reports an unhandled failure of fn when the Deferred is collected", function()
    local reports = capture_reports(function()
      do
        loom.deferred_tasklet(function() error("nobody listens", 0) end)()
      end
      full_gc()
    end)
    assert.equal(1, #reports)
    assert.equal("nobody listens", reports[1].err.value)
  end)

  it("can be called from reactor context", function()
    local ok, d = in_reactor(function()
      return loom.deferred_tasklet(function()
        loom.sleep(0.001)
        return "blocked fine"
      end)()
    end)
    assert.is_true(ok)
    assert.equal("blocked fine", loom.block_on(d))
  end)

  it("checks its argument", function()
    assert.error_matches(function() loom.deferred_tasklet(42) end,
      "bad argument #1 to 'deferred_tasklet' %(function expected, got number%)")
  end)
end)

describe("loom.blocking_tasklet()", function()
  setup(function()
    baseline = #loom.tasklets()
  end)

  after_each(function()
    assert.equal(baseline, #loom.tasklets())
  end)

  it("returns all of fn's results", function()
    local w = loom.blocking_tasklet(function(a, b)
      loom.sleep(0.001)
      return a + b, nil, "third", nil
    end)
    local r = table.pack(w(1, 2))
    assert.equal(4, r.n)
    assert.same({ 3, nil, "third", nil }, { r[1], r[2], r[3], r[4] })
    local quick = loom.blocking_tasklet(function(x) return x end)
    assert.equal("at once", quick("at once"))
  end)

  it("runs fn in a new tasklet", function()
    local outer = loom.current()
    local inner = loom.blocking_tasklet(function() return loom.current() end)()
    assert.is_not_nil(inner)
    assert.are_not.equal(outer, inner)
  end)

  it("re-raises fn's error: strings unchanged, tables with the tasklet's traceback", function()
    local function failing_here(e)
      loom.sleep(0)
      error(e, 0)
    end
    local ok, err = pcall(loom.blocking_tasklet(failing_here), "as is")
    assert.is_false(ok)
    assert.equal("as is", err)
    local t = { reason = "table" }
    ok, err = pcall(loom.blocking_tasklet(failing_here), t)
    assert.equal(t, err)
    assert.matches("31%-decorators_spec.lua:%d+", t.traceback)
    local own = { traceback = "my own" }
    ok, err = pcall(loom.blocking_tasklet(failing_here), own)
    assert.equal("my own", err.traceback)
  end)

  it("does not report fn's error as unhandled", function()
    local reports = capture_reports(function()
      pcall(loom.blocking_tasklet(function() error("raised to the caller") end))
      pcall(loom.blocking_tasklet(function()
        loom.sleep(0)
        error("raised to the caller")
      end))
    end)
    assert.same({}, reports)
  end)

  it("raises 'cannot block in the reactor' in reactor context, without starting fn", function()
    local started = false
    local w = loom.blocking_tasklet(function() started = true end)
    local ok, err = in_reactor(w)
    assert.is_false(ok)
    assert.matches("cannot block in the reactor", err)
    assert.is_false(started)
  end)

  it("kills fn's tasklet when the caller is killed", function()
    local closed = false
    local w = loom.blocking_tasklet(function()
      local guard <close> = closer(function() closed = true end)
      loom.sleep(10)
    end)
    local caller = loom.spawn(w)
    loom.sleep(0.01)
    caller:kill()
    loom.sleep(0.01)
    assert.is_true(closed)
    assert.is_false(caller:alive())
  end)

  it("is interrupted by loom.timeout, which kills fn's tasklet", function()
    local closed = false
    local w = loom.blocking_tasklet(function()
      local guard <close> = closer(function() closed = true end)
      loom.sleep(10)
    end)
    local r, msg, code = loom.timeout(0.01, w)
    assert.is_nil(r)
    assert.equal("ETIMEDOUT", code)
    assert.matches("ETIMEDOUT", msg)
    loom.sleep(0)
    assert.is_true(closed)
  end)

  it("raises TaskletExit in the caller when fn's tasklet is killed", function()
    local w = loom.blocking_tasklet(function()
      loom.current():kill("from inside")
    end)
    local ok, err = pcall(w)
    assert.is_false(ok)
    assert.is_true(loom.TaskletExit:is(err))
  end)

  it("works in the main thread of a plain lua5.4", function()
    local out = run_lua5_4([[
      local loom = require "loom"
      local w = loom.blocking_tasklet(function(x) loom.sleep(0.01) return x + 1 end)
      print("result", w(41), loom.current())]])
    assert.matches("result\t42\tnil", out)
    assert.matches("exit=0", out)
  end)

  it("checks its argument", function()
    assert.error_matches(function() loom.blocking_tasklet("f") end,
      "bad argument #1 to 'blocking_tasklet' %(function expected, got string%)")
  end)
end)

describe("loom.block_on()", function()
  setup(function()
    baseline = #loom.tasklets()
  end)

  after_each(function()
    assert.equal(baseline, #loom.tasklets())
  end)

  it("returns the result of a fired Deferred at once, consuming it", function()
    local d = loom.succeed("ready")
    assert.equal("ready", loom.block_on(d))
    assert.is_nil(result_of(d))
  end)

  it("waits until the Deferred fires", function()
    local d = loom.deferred()
    loom.call_later(0.01, function() d:callback("later") end)
    assert.equal("later", loom.block_on(d))
    assert.is_nil(result_of(d))
  end)

  it("waits through a chain", function()
    local inner = loom.deferred()
    local outer = loom.succeed(nil):add_callback(function() return inner end)
    loom.call_later(0.005, function() inner:callback("inner value") end)
    assert.equal("inner value", loom.block_on(outer))
  end)

  it("raises the failure's error and so handles it", function()
    local reports = capture_reports(function()
      local d = loom.fail("failed value")
      local ok, err = pcall(loom.block_on, d)
      assert.is_false(ok)
      assert.equal("failed value", err)
      local t = {}
      local e = loom.deferred()
      loom.call_later(0.001, function() e:errback(t) end)
      ok, err = pcall(loom.block_on, e)
      assert.equal(t, err)
      assert.is_string(t.traceback)
      full_gc()
    end)
    assert.same({}, reports)
  end)

  it("returns a fired Deferred's result in reactor context, but refuses to wait there", function()
    local ok, v = in_reactor(function() return loom.block_on(loom.succeed("fine")) end)
    assert.is_true(ok)
    assert.equal("fine", v)
    local d = loom.deferred()
    local err
    ok, err = in_reactor(function() return loom.block_on(d) end)
    assert.is_false(ok)
    assert.matches("cannot block in the reactor", err)
    d:callback("kept")
    assert.equal("kept", result_of(d))
  end)

  it("is interrupted by loom.timeout and leaves later results on the Deferred", function()
    local d = loom.deferred()
    local r, msg, code = loom.timeout(0.01, loom.block_on, d)
    assert.is_nil(r)
    assert.equal("ETIMEDOUT", code)
    assert.matches("ETIMEDOUT", msg)
    d:callback("after the timeout")
    assert.equal("after the timeout", result_of(d))
  end)

  it("does not swallow a failure that arrives after the waiter gave up", function()
    local reports = capture_reports(function()
      do
        local d = loom.deferred()
        loom.timeout(0.01, loom.block_on, d)
        d:errback("nobody waits now")
      end
      full_gc()
    end)
    assert.equal(1, #reports)
    assert.equal("nobody waits now", reports[1].err.value)
  end)

  it("ends with the tasklet that waits in it when that one is killed", function()
    local d = loom.deferred()
    local t = loom.spawn(loom.block_on, d)
    loom.sleep(0.005)
    assert.equal("blocked", t.status)
    t:kill()
    loom.sleep(0)
    assert.is_false(t:alive())
    d:callback("still fine")
    assert.equal("still fine", result_of(d))
  end)

  it("drives the loop in the main thread of a plain lua5.4, and detects deadlock", function()
    local out = run_lua5_4([[
      local loom = require "loom"
      local d = loom.deferred()
      loom.call_later(0.01, function() d:callback("from a timer") end)
      print("got", loom.block_on(d))
      local ok, err = pcall(loom.block_on, loom.deferred())
      print("deadlock", ok, loom.Deadlock:is(err))]])
    assert.matches("got\tfrom a timer", out)
    assert.matches("deadlock\tfalse\ttrue", out)
    assert.matches("exit=0", out)
  end)

  it("checks its argument", function()
    assert.error_matches(function() loom.block_on({}) end,
      "bad argument #1 to 'block_on' %(loom.deferred expected, got table%)")
  end)
end)

describe("loom.looping_call()", function()
  setup(function()
    baseline = #loom.tasklets()
  end)

  after_each(function()
    assert.equal(baseline, #loom.tasklets())
  end)

  it("calls fn with its arguments every s seconds until stopped", function()
    local seen = {}
    local lc = loom.looping_call(0.005, function(a, b) seen[#seen + 1] = a .. b end, "x", "y")
    assert.is_true(lc.running)
    assert.same({}, seen) -- the first call comes after s, not at once
    loom.sleep(0.028)
    lc:stop()
    assert.is_false(lc.running)
    local n = #seen
    assert.is_true(n >= 3 and n <= 6, "calls: " .. n)
    assert.equal("xy", seen[1])
    assert.equal(n, lc.calls)
    loom.sleep(0.02)
    assert.equal(n, #seen)
    lc:stop() -- a second stop is harmless
  end)

  it("can be stopped from inside fn", function()
    local n = 0
    local lc
    lc = loom.looping_call(0.001, function()
      n = n + 1
      if n == 3 then lc:stop() end
    end)
    loom.sleep(0.03)
    assert.equal(3, n)
    assert.is_false(lc.running)
  end)

  it("keeps to its grid: never early, and a missed beat is skipped, not caught up", function()
    local start = loom.now()
    local times = {}
    local lc = loom.looping_call(0.01, function()
      times[#times + 1] = loom.now() - start
      if #times == 2 then
        local t = loom.now()
        repeat until loom.now() - t > 0.015 -- a slow call, over the beat at 0.03
      end
    end)
    loom.sleep(0.065)
    lc:stop()
    assert.is_true(#times >= 3)
    assert.is_true(times[1] >= 0.01 - 0.002, "first call at " .. times[1])
    assert.is_true(times[2] >= 0.02 - 0.002, "second call at " .. times[2])
    for k = 3, #times do
      assert.is_true(times[k] >= 0.04 + (k - 3) * 0.01 - 0.002, "call " .. k .. " at " .. times[k])
    end
  end)

  it("stops at an error in fn and reports it", function()
    local n = 0
    local lc
    local reports = capture_reports(function()
      lc = loom.looping_call(0.001, function()
        n = n + 1
        if n == 2 then error("loop broke") end
      end)
      loom.sleep(0.02)
    end)
    assert.equal(2, n)
    assert.is_false(lc.running)
    assert.equal(1, #reports)
    assert.equal("Unhandled error in looping_call", reports[1].where)
    assert.matches("loop broke", tostring(reports[1].err))
    assert.matches("31%-decorators_spec.lua", reports[1].tb)
  end)

  it("waits for a Deferred that fn returns, and stops if it fails", function()
    local calls, pending = 0, nil
    local lc
    local reports = capture_reports(function()
      lc = loom.looping_call(0.001, function()
        calls = calls + 1
        pending = loom.deferred()
        return pending
      end)
      loom.sleep(0.01)
      assert.equal(1, calls)
      pending:callback(nil)
      loom.sleep(0.01)
      assert.equal(2, calls)
      pending:errback("async failure")
      loom.sleep(0.01)
    end)
    assert.equal(2, calls)
    assert.is_false(lc.running)
    assert.equal(1, #reports)
    assert.equal("async failure", reports[1].err.value)
  end)

  it("leaves a failure that comes after stop() on its Deferred", function()
    local pending
    local lc
    local reports = capture_reports(function()
      lc = loom.looping_call(0.001, function()
        pending = loom.deferred()
        return pending
      end)
      loom.sleep(0.01)
      lc:stop()
      pending:errback("after stop")
      assert.equal("after stop", failure_of(pending).value)
    end)
    assert.same({}, reports)
  end)

  it("checks its arguments", function()
    assert.error_matches(function() loom.looping_call("1", print) end,
      "bad argument #1 to 'looping_call' %(number expected, got string%)")
    assert.error_matches(function() loom.looping_call(-1, print) end,
      "bad argument #1 to 'looping_call' %(non%-negative number expected")
    assert.error_matches(function() loom.looping_call(1, nil) end,
      "bad argument #2 to 'looping_call' %(function expected, got nil%)")
  end)

  it("describes itself", function()
    local lc = loom.looping_call(1, print)
    assert.matches("^loom.looping_call: 0x%x+ %(every 1 s, running, 0 calls%)$", tostring(lc))
    lc:stop()
  end)
end)

describe("the three styles together", function()
  setup(function()
    baseline = #loom.tasklets()
  end)

  after_each(function()
    assert.equal(baseline, #loom.tasklets())
  end)

  it("gathers deferred_tasklets that run concurrently", function()
    local work = loom.deferred_tasklet(function(i)
      loom.sleep(0.02)
      return i * i
    end)
    local t0 = loom.now()
    local r = loom.block_on(loom.gather({ work(1), work(2), work(3) }))
    assert.same({ 1, 4, 9, n = 3 }, r)
    assert.is_true(loom.now() - t0 < 0.05)
  end)

  it("lets a deferred_tasklet block on callback-style Deferreds", function()
    local function fetch(v)
      local d = loom.deferred()
      loom.call_later(0.001, function() d:callback(v) end)
      return d
    end
    local both = loom.deferred_tasklet(function()
      return loom.block_on(fetch("a")) .. loom.block_on(fetch("b"))
    end)
    assert.equal("ab", loom.block_on(both()))
  end)

  it("lets blocking code call a deferred_tasklet and wait for it", function()
    local inner = loom.deferred_tasklet(function(x)
      loom.sleep(0.001)
      return x + 1
    end)
    local outer = loom.blocking_tasklet(function(x) return loom.block_on(inner(x)) * 2 end)
    assert.equal(22, outer(10))
  end)

  it("runs callbacks where the Deferred fires: in the reactor they cannot block", function()
    local d = loom.deferred()
    local err
    d:add_callback(function() return loom.block_on(loom.deferred()) end)
    d:add_errback(function(f) err = f.value end)
    loom.call_later(0, function() d:callback(nil) end)
    loom.sleep(0.005)
    assert.matches("cannot block in the reactor", err)
  end)
end)
