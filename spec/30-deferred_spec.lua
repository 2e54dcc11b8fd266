-- Specs for loom.deferred, loom.Failure and the combinators (SPEC section 5),
-- including the edge cases of Twisted's own Deferred tests.
-- Run: build/loom /usr/bin/busted spec/30-deferred_spec.lua
local loom = require "loom"

local unpack = table.unpack

-- A handler that records unhandled-error reports while fn runs.
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

-- The current result of a fired Deferred, passed through unchanged.
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

-- The current failure of a fired Deferred, handled (d continues with nil).
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

local function no_result(d)
  local state = "none"
  d:add_both(function(v)
    state = "fired"
    return v
  end)
  return state == "none"
end

local baseline

describe("loom.deferred", function()
  setup(function()
    baseline = #loom.tasklets()
  end)

  after_each(function()
    assert.equal(baseline, #loom.tasklets())
  end)

  it("starts unfired", function()
    local d = loom.deferred()
    assert.is_false(d.called)
    assert.is_true(loom.is_deferred(d))
    assert.is_false(loom.is_deferred({}))
    assert.matches("^loom.deferred: 0x%x+ %(pending%)$", tostring(d))
  end)

  it("rejects a canceller that is not a function", function()
    assert.error_matches(function() loom.deferred(42) end,
      "bad argument #1 to 'deferred' %(function or nil expected, got number%)")
  end)

  describe("callback()", function()
    it("runs the callbacks in order, each result feeding the next", function()
      local seen = {}
      local d = loom.deferred()
      d:add_callback(function(v)
        seen[#seen + 1] = v
        return v + 1
      end):add_callback(function(v)
        seen[#seen + 1] = v
        return v * 10
      end)
      d:callback(1)
      assert.same({ 1, 2 }, seen)
      assert.equal(20, result_of(d))
      assert.is_true(d.called)
    end)

    it("passes extra arguments after the result, nils included", function()
      local got
      local d = loom.deferred()
      d:add_callback(function(...)
        got = table.pack(...)
      end, "a", nil, "c", nil)
      d:callback("r")
      assert.equal(5, got.n)
      assert.same({ "r", "a", nil, "c", nil }, { unpack(got, 1, 5) })
    end)

    it("carries nil and false results", function()
      local d = loom.deferred()
      d:callback(nil)
      assert.is_nil(result_of(d))
      local e = loom.succeed(false)
      assert.is_false(result_of(e))
    end)

    it("raises loom.AlreadyCalled when fired a second time", function()
      local d = loom.deferred()
      d:callback(1)
      local ok, err = pcall(d.callback, d, 2)
      assert.is_false(ok)
      assert.is_true(loom.AlreadyCalled:is(err))
      assert.equal("EALREADY", err.code)
      ok, err = pcall(d.errback, d, "x")
      assert.is_true(loom.AlreadyCalled:is(err))
      local e = loom.deferred()
      e:errback("first")
      failure_of(e)
      ok, err = pcall(e.callback, e, 1)
      assert.is_true(loom.AlreadyCalled:is(err))
    end)

    it("refuses a Deferred as the result", function()
      local d = loom.deferred()
      assert.error_matches(function() d:callback(loom.deferred()) end,
        "bad argument #1 to 'callback' %(non%-Deferred value")
      assert.is_false(d.called)
    end)

    it("sends a Failure given to callback() down the errback chain", function()
      local f = loom.Failure("as a value")
      local d = loom.deferred()
      local path
      d:add_callbacks(function() path = "callback" end, function(g)
        path = g
      end)
      d:callback(f)
      assert.equal(f, path)
    end)
  end)

  describe("add_callback() and friends", function()
    it("return the Deferred", function()
      local d = loom.deferred()
      local function id(v) return v end
      assert.equal(d, d:add_callback(id))
      assert.equal(d, d:add_errback(id))
      assert.equal(d, d:add_both(id))
      assert.equal(d, d:add_callbacks(id, id))
      assert.equal(d, d:add_callbacks(nil, id))
    end)

    it("raise on arguments that are not functions", function()
      local d = loom.deferred()
      assert.error_matches(function() d:add_callback() end,
        "bad argument #1 to 'add_callback' %(function expected, got nil%)")
      assert.error_matches(function() d:add_errback(1) end,
        "bad argument #1 to 'add_errback' %(function expected, got number%)")
      assert.error_matches(function() d:add_both("x") end,
        "bad argument #1 to 'add_both' %(function expected, got string%)")
      assert.error_matches(function() d:add_callbacks(1) end,
        "bad argument #1 to 'add_callbacks' %(function or nil expected, got number%)")
      assert.error_matches(function() d:add_callbacks(nil, {}) end,
        "bad argument #2 to 'add_callbacks' %(function or nil expected, got table%)")
    end)

    it("accept callable tables", function()
      local calls = 0
      local callable = setmetatable({}, { __call = function(_, v)
        calls = calls + 1
        return v
      end })
      local d = loom.deferred():add_callback(callable):add_both(callable)
      d:callback(7)
      assert.equal(2, calls)
      assert.equal(7, result_of(d))
    end)

    it("run at once on a Deferred that has fired", function()
      local d = loom.succeed("now")
      local got
      d:add_callback(function(v) got = v end)
      assert.equal("now", got)
      assert.is_nil(result_of(d))
    end)

    it("take only the path of the current result", function()
      local log = {}
      local d = loom.deferred()
      d:add_errback(function() log[#log + 1] = "eb1" end)
      d:add_callback(function(v)
        log[#log + 1] = "cb1"
        error("turn")
        return v
      end)
      d:add_callback(function() log[#log + 1] = "cb2" end)
      d:add_both(function(f)
        log[#log + 1] = "both:" .. tostring(loom.Failure:is(f))
        return f
      end)
      d:add_callbacks(function() log[#log + 1] = "cb3" end, function()
        log[#log + 1] = "eb3"
        return "back"
      end)
      d:add_callback(function(v) log[#log + 1] = v end)
      d:callback(0)
      assert.same({ "cb1", "both:true", "eb3", "back" }, log)
    end)

    it("give extra arguments to whichever path of add_callbacks runs", function()
      local got = {}
      local d = loom.deferred()
      d:add_callbacks(function(_, x) got[#got + 1] = "cb" .. x end,
        function(_, x) got[#got + 1] = "eb" .. x end, "!")
      d:errback("e")
      assert.same({ "eb!" }, got)
    end)

    it("run a callback added by a running callback after it returns", function()
      local called = {}
      local d = loom.deferred()
      d:add_callback(function()
        called[#called + 1] = 1
        d:add_callback(function() called[#called + 1] = 3 end)
        assert.same({ 1 }, called)
      end)
      d:add_callback(function() called[#called + 1] = 2 end)
      d:callback(nil)
      assert.same({ 1, 2, 3 }, called)
    end)

    it("pass a raise of a callback added by a callback to the next errback", function()
      local d = loom.deferred()
      d:add_callback(function()
        d:add_callback(function() error("raised late", 0) end)
      end)
      d:callback(nil)
      assert.equal("raised late", failure_of(d).value)
    end)
  end)

  describe("errors", function()
    it("switch to the errback chain with a Failure from where they were raised", function()
      local d = loom.deferred()
      local function explode() error("kaboom") end
      d:add_callback(function() explode() end)
      d:callback(1)
      local f = failure_of(d)
      assert.is_true(loom.Failure:is(f))
      assert.matches("30%-deferred_spec.lua:%d+: kaboom$", f.value)
      assert.matches("in %a* ?%a* ?'?explode'?", f.traceback)
    end)

    it("switch to the errback chain when a callback returns a Failure", function()
      local d = loom.deferred()
      local f = loom.Failure("returned")
      d:add_callback(function() return f end)
      d:callback(1)
      assert.equal(f, failure_of(d))
    end)

    it("switch back when an errback returns normally", function()
      local d = loom.deferred()
      d:add_errback(function(f) return "recovered from " .. f.value end)
      d:errback("oops")
      assert.equal("recovered from oops", result_of(d))
    end)

    it("keep the same Failure when an errback re-raises it", function()
      local d = loom.deferred()
      local first
      d:add_errback(function(f)
        first = f
        f:raise()
      end)
      d:add_errback(function(f)
        f:trap(loom.Timeout)
      end)
      d:errback({ reason = "keep me" })
      local last = failure_of(d)
      assert.equal(first, last)
      assert.equal("keep me", last.value.reason)
    end)

    it("carry errors of any Lua type unchanged", function()
      local tbl = { 1 }
      local obj = loom.Timeout:new("slow")
      local co = coroutine.create(function() end)
      for _, v in ipairs({ "s", 42, true, tbl, obj, co, print }) do
        local d = loom.deferred()
        d:add_callback(function() error(v, 0) end)
        d:callback(nil)
        assert.equal(v, failure_of(d).value)
      end
      local d = loom.deferred()
      d:add_callback(function() error(nil) end)
      d:callback(1)
      local f = failure_of(d)
      assert.is_true(loom.Failure:is(f))
      assert.is_nil(f.value)
    end)

    it("wrap an errback value in a Failure with the caller's traceback", function()
      local d = loom.deferred()
      local function fire_it() d:errback("plain") end
      fire_it()
      local f = failure_of(d)
      assert.equal("plain", f.value)
      assert.matches("fire_it", f.traceback)
      local g = loom.Failure("given")
      local e = loom.deferred()
      e:errback(g)
      assert.equal(g, failure_of(e))
    end)

    it("keep the traceback that a loom error object carries", function()
      local err = loom.Cancelled:new("made here")
      local f = failure_of(loom.fail(err))
      assert.equal(err.traceback, f.traceback)
    end)
  end)

  describe("chaining", function()
    it("pauses on an unfired Deferred until it fires, then continues with its result", function()
      local first, second = loom.deferred(), loom.deferred()
      second:add_callback(function() return first end)
      second:callback(nil)
      assert.is_true(second.called)
      assert.matches("waiting on loom.deferred", tostring(second))
      local first_result, second_result = { n = 0 }, {}
      first:add_callback(function(v)
        first_result.n = first_result.n + 1
        first_result[first_result.n] = v
      end)
      second:add_callback(function(v) second_result[#second_result + 1] = v end)
      assert.same({}, second_result)
      first:callback("value")
      assert.same({ "value" }, second_result)
      -- The inner Deferred gave its result away: it continues with nil.
      assert.equal(1, first_result.n)
      assert.is_nil(first_result[1])
    end)

    it("takes the result of a Deferred that has fired at once", function()
      local first = loom.succeed("early")
      local second = loom.deferred()
      second:add_callback(function() return first end)
      second:callback(nil)
      assert.equal("early", result_of(second))
      assert.is_nil(result_of(first))
    end)

    it("takes a failure over without reporting it on the inner Deferred", function()
      local reports = capture_reports(function()
        local second = loom.deferred()
        do
          local first = loom.fail("inner failure")
          second:add_callback(function() return first end)
        end
        second:callback(nil)
        assert.equal("inner failure", failure_of(second).value)
        full_gc()
      end)
      assert.same({}, reports)
    end)

    it("passes a later failure of the inner Deferred on", function()
      local first, second = loom.deferred(), loom.deferred()
      second:add_callback(function() return first end)
      second:callback(nil)
      local errs = {}
      second:add_errback(function(f) errs[#errs + 1] = f.value end)
      first:errback("late")
      assert.same({ "late" }, errs)
      assert.is_nil(result_of(first))
    end)

    it("is transitive", function()
      local a, b, c = loom.deferred(), loom.deferred(), loom.deferred()
      b:add_callback(function() return a end)
      c:add_callback(function() return b end)
      local got = {}
      c:add_callback(function(v) got[#got + 1] = v end)
      b:callback(nil)
      c:callback(nil)
      assert.same({}, got)
      a:callback("through")
      assert.same({ "through" }, got)
    end)

    it("runs the inner Deferred's own callbacks before the outer ones", function()
      local results = {}
      local inner = loom.deferred()
      local outer = loom.succeed("outer")
      outer:add_callback(function(r)
        results[#results + 1] = "start " .. r
        local d = loom.succeed("inner")
        d:add_callback(function()
          results[#results + 1] = "first"
          return inner:add_callback(function(x) return { x } end)
        end)
        d:add_callback(function(x)
          results[#results + 1] = "second " .. x[1]
          return x[1] .. x[1]
        end)
        return d
      end)
      outer:add_callback(function(v) results[#results + 1] = v end)
      assert.same({ "start outer", "first" }, results)
      inner:callback("withers")
      assert.same({ "start outer", "first", "second withers", "witherswithers" }, results)
    end)

    it("keeps callback order when the inner chain waits on a gather", function()
      local results = {}
      local a = loom.deferred()
      local outer = loom.deferred()
      outer:add_callback(function()
        local d = loom.deferred()
        d:add_callback(function() return loom.gather({ a }) end)
        d:add_callback(function(r) results[#results + 1] = r[1] end)
        d:callback(nil)
        return d
      end)
      outer:add_callback(function() results[#results + 1] = "final" end)
      outer:callback(nil)
      assert.same({}, results)
      a:callback("withers")
      assert.same({ "withers", "final" }, results)
    end)

    it("turns a callback that returns its own Deferred into a failure", function()
      local d = loom.deferred()
      d:add_callback(function() return d end)
      d:callback(1)
      assert.matches("returned the Deferred it was added to", failure_of(d).value)
    end)

    it("waits for a paused Deferred that already has a result", function()
      local paused = loom.succeed("expected")
      paused:pause()
      local chained = loom.deferred()
      chained:add_callback(function() return paused end)
      chained:callback(nil)
      local got = {}
      chained:add_callback(function(v) got[#got + 1] = v end)
      assert.same({}, got)
      paused:unpause()
      assert.same({ "expected" }, got)
    end)

    it("lets an inner Deferred run its callbacks while the outer one is paused", function()
      local first, second = loom.deferred(), loom.deferred()
      first:add_callback(function() return second end)
      first:callback(nil)
      first:pause()
      second:callback(nil)
      local got = {}
      second:add_callback(function(v) got[#got + 1] = tostring(v) end)
      assert.same({ "nil" }, got)
      first:unpause()
      assert.is_nil(result_of(first))
    end)

    it("runs callbacks added to the middle of a chain once the last fires", function()
      local first, second, third = loom.deferred(), loom.deferred(), loom.deferred()
      first:add_callback(function() return second end)
      second:add_callback(function() return third end)
      second:callback(nil)
      first:callback(nil)
      third:callback(nil)
      local got = {}
      second:add_callback(function(v) got[#got + 1] = tostring(v) end)
      assert.same({ "nil" }, got)
    end)

    it("runs 100,000 callbacks on one Deferred", function()
      local d = loom.deferred()
      local function inc(v) return v + 1 end
      for _ = 1, 100000 do d:add_callback(inc) end
      d:callback(0)
      assert.equal(100000, result_of(d))
    end)

    it("resolves 100,000 nested Deferreds without recursion", function()
      local n = 100000
      local ds = {}
      for i = 1, n do ds[i] = loom.deferred() end
      for i = 1, n - 1 do
        ds[i]:add_callback(function() return ds[i + 1] end)
      end
      local got
      ds[1]:add_callback(function(v) got = v end)
      for i = 1, n - 1 do ds[i]:callback(i) end
      assert.is_nil(got)
      ds[n]:callback("deep")
      assert.equal("deep", got)
    end)

    it("runs callbacks at the same stack depth however deep the chain", function()
      local function depth_for(n)
        local depth
        local top = loom.deferred()
        local inners = {}
        for i = 1, n do inners[i] = loom.deferred() end
        local last = loom.deferred()
        top:add_callback(function() return inners[1] end)
        top:add_callback(function()
          depth = select(2, debug.traceback():gsub("\n", "\n"))
        end)
        for i = 1, n - 1 do
          inners[i]:add_callback(function() return inners[i + 1] end)
        end
        inners[n]:add_callback(function() return last end)
        top:callback(nil)
        for i = 1, n do inners[i]:callback(nil) end
        assert.is_nil(depth)
        last:callback(nil)
        return depth
      end
      assert.equal(depth_for(1), depth_for(200))
    end)

    it("fires another Deferred with chain_deferred()", function()
      local a, b = loom.deferred(), loom.deferred()
      a:chain_deferred(b)
      a:callback("both")
      assert.equal("both", result_of(b))
      assert.is_nil(result_of(a))
      local c, e = loom.deferred(), loom.deferred()
      c:chain_deferred(e)
      c:errback("bad")
      assert.equal("bad", failure_of(e).value)
      assert.is_nil(result_of(c))
      assert.error_matches(function() c:chain_deferred(42) end,
        "bad argument #1 to 'chain_deferred' %(loom.deferred expected, got number%)")
    end)
  end)

  describe("with a single callback (callback()'s fast path)", function()
    it("hands every kind of outcome on like the general loop", function()
      local inner = loom.deferred()
      local d1 = loom.deferred():add_callback(function() return inner end)
      d1:callback(1)
      assert.is_true(no_result(d1))
      inner:callback("inner")
      assert.equal("inner", result_of(d1))

      local d2 = loom.deferred():add_callback(function() return loom.succeed("stolen") end)
      d2:callback(1)
      assert.equal("stolen", result_of(d2))

      local d3 = loom.deferred():add_callback(function() error("raised", 0) end)
      d3:callback(1)
      assert.equal("raised", failure_of(d3).value)

      local d4 = loom.deferred():add_callback(function() return "text" end)
      d4:callback(1)
      assert.equal("text", result_of(d4))

      local t = {}
      local d5 = loom.deferred():add_callback(function() return t end)
      d5:callback(1)
      assert.equal(t, result_of(d5))
    end)

    it("runs callbacks that the callback added, after it", function()
      local log = {}
      local d = loom.deferred()
      d:add_callback(function(v)
        d:add_callback(function(w) log[#log + 1] = "added got " .. w end)
        log[#log + 1] = "first"
        return v + 1
      end)
      d:callback(1)
      assert.same({ "first", "added got 2" }, log)
    end)

    it("raises AlreadyCalled inside the callback when it fires its own Deferred", function()
      local d = loom.deferred()
      d:add_callback(function(v) d:callback(v) end)
      d:callback(1)
      assert.is_true(loom.AlreadyCalled:is(failure_of(d).value))
    end)
  end)

  describe("pause() and unpause()", function()
    it("hold the callbacks until the last unpause", function()
      local d = loom.deferred()
      local got = {}
      d:pause()
      d:pause()
      d:add_callback(function(v) got[#got + 1] = v end)
      d:callback(1)
      assert.same({}, got)
      d:unpause()
      assert.same({}, got)
      d:unpause()
      assert.same({ 1 }, got)
      d:unpause() -- one too many is harmless
    end)

    it("ignore an unpause without its pause, also on a waiting Deferred", function()
      local inner = loom.deferred()
      local outer = loom.deferred():add_callback(function() return inner end)
      outer:callback(nil)
      outer:unpause()
      local got = {}
      outer:add_callback(function(v) got[#got + 1] = v end)
      assert.same({}, got)
      inner:callback("in order")
      assert.same({ "in order" }, got)
    end)

    it("hold a failure too", function()
      local d = loom.fail("paused failure")
      d:pause()
      local got = {}
      d:add_errback(function(f) got[#got + 1] = f.value end)
      assert.same({}, got)
      d:unpause()
      assert.same({ "paused failure" }, got)
    end)

    it("hold the rest of the chain when a callback pauses its Deferred", function()
      local d = loom.deferred()
      local got = {}
      d:add_callback(function(v)
        d:pause()
        return v + 1
      end)
      d:callback(1)
      d:add_callback(function(v) got[#got + 1] = v end)
      assert.same({}, got)
      d:unpause()
      assert.same({ 2 }, got)
    end)
  end)

  describe("cancel()", function()
    it("errbacks with loom.Cancelled and ignores the first late fire", function()
      local d = loom.deferred()
      d:cancel()
      assert.is_true(d.called)
      local f = failure_of(d)
      assert.is_true(loom.Cancelled:is(f.value))
      assert.equal("ECANCELED", f.value.code)
      assert.is_string(f.traceback)
      d:callback("late") -- the operation finishing late: swallowed
      local ok, err = pcall(d.callback, d, "later")
      assert.is_false(ok)
      assert.is_true(loom.AlreadyCalled:is(err))
    end)

    it("runs the canceller with the Deferred", function()
      local seen
      local d = loom.deferred(function(x) seen = x end)
      d:cancel()
      assert.equal(d, seen)
      assert.is_true(loom.Cancelled:is(failure_of(d).value))
      d:errback("late") -- swallowed once here too (a difference from Twisted)
      assert.is_true(loom.AlreadyCalled:is(select(2, pcall(d.callback, d, 1))))
    end)

    it("keeps the result of a canceller that fires the Deferred", function()
      local d = loom.deferred(function(x) x:callback("Callback Result") end)
      d:cancel()
      assert.equal("Callback Result", result_of(d))
      assert.is_true(loom.AlreadyCalled:is(select(2, pcall(d.callback, d, 1))))
    end)

    it("lets an error of the canceller reach the caller", function()
      local d = loom.deferred(function() error("canceller broke", 0) end)
      assert.error_matches(function() d:cancel() end, "canceller broke")
      assert.is_false(d.called)
    end)

    it("does nothing on a fired Deferred", function()
      local d = loom.succeed(1)
      d:cancel()
      d:cancel()
      assert.equal(1, result_of(d))
    end)

    it("cancels the Deferred that a chain waits on", function()
      local inner_cancelled = false
      local inner = loom.deferred(function() inner_cancelled = true end)
      local outer = loom.deferred()
      outer:add_callback(function() return inner end)
      outer:callback(nil)
      outer:cancel()
      assert.is_true(inner_cancelled)
      assert.is_true(loom.Cancelled:is(failure_of(outer).value))
      assert.is_nil(result_of(inner))
    end)
  end)

  describe("add_timeout()", function()
    it("errbacks with loom.Timeout when the Deferred does not fire in time", function()
      local d = loom.deferred()
      assert.equal(d, d:add_timeout(0.01))
      loom.sleep(0.05)
      local f = failure_of(d)
      assert.is_true(loom.Timeout:is(f.value))
      assert.equal("ETIMEDOUT", f.value.code)
      assert.matches("timed out after 0.01 s", f.value.message)
    end)

    it("stops its timer when the Deferred fires first", function()
      local d = loom.deferred()
      d:add_timeout(0.02)
      d:callback("in time")
      loom.sleep(0.05)
      assert.equal("in time", result_of(d))
    end)

    it("runs the canceller, whose result wins", function()
      local d = loom.deferred(function(x) x:callback("from canceller") end)
      d:add_timeout(0.01)
      loom.sleep(0.03)
      assert.equal("from canceller", result_of(d))
    end)

    it("leaves a cancel() that came first as Cancelled", function()
      local d = loom.deferred()
      d:add_timeout(0.01)
      d:cancel()
      loom.sleep(0.03)
      assert.is_true(loom.Cancelled:is(failure_of(d).value))
    end)

    it("cancels what the Deferred waits on", function()
      local inner = loom.deferred()
      local outer = loom.deferred():add_callback(function() return inner end)
      outer:callback(nil)
      outer:add_timeout(0.01)
      loom.sleep(0.03)
      assert.is_true(loom.Timeout:is(failure_of(outer).value))
      assert.is_true(inner.called)
    end)

    it("checks its argument", function()
      local d = loom.deferred()
      assert.error_matches(function() d:add_timeout("1") end,
        "bad argument #1 to 'add_timeout' %(number expected, got string%)")
      assert.error_matches(function() d:add_timeout(-1) end,
        "bad argument #1 to 'add_timeout' %(non%-negative number expected")
    end)
  end)
end)

describe("loom.Failure", function()
  it("holds the value and a traceback", function()
    local f = loom.Failure("v")
    assert.equal("v", f.value)
    assert.matches("^stack traceback:", f.traceback)
    assert.is_true(loom.Failure:is(f))
    assert.is_false(loom.Failure:is("v"))
    assert.equal(f, loom.Failure(f))
    assert.equal("given", loom.Failure("x", "given").traceback)
  end)

  it("converts with tostring() to its value's text", function()
    assert.equal("plain", tostring(loom.Failure("plain")))
    assert.equal("ETIMEDOUT: slow", tostring(loom.Failure(loom.Timeout:new("slow"))))
    assert.equal("nil", tostring(loom.Failure(nil)))
    assert.equal("42", tostring(loom.Failure(42)))
  end)

  describe("check()", function()
    it("returns the first loom error class that matches, else nil", function()
      local f = loom.Failure(loom.Timeout:new("t"))
      assert.equal(loom.Timeout, f:check(loom.Cancelled, loom.Timeout))
      assert.is_nil(f:check(loom.Cancelled, loom.TaskletExit))
      assert.is_nil(f:check())
    end)

    it("matches plain class tables by metatable", function()
      local MyError = {}
      MyError.__index = MyError
      local f = loom.Failure(setmetatable({}, MyError))
      assert.equal(MyError, f:check(MyError))
      assert.is_nil(loom.Failure("s"):check(MyError))
    end)

    it("matches a string against the error text (a Lua pattern) or an error code", function()
      local f = loom.Failure("file.lua:3: connection refused")
      assert.equal("refused$", f:check("timeout", "refused$"))
      assert.is_nil(f:check("^refused"))
      local g = loom.Failure(loom.Timeout:new("slow"))
      assert.equal("ETIMEDOUT", g:check("ETIMEDOUT"))
      assert.equal("slow", g:check("slow"))
      assert.equal("ECODE", loom.Failure({ code = "ECODE" }):check("ECODE"))
      assert.is_nil(loom.Failure({}):check("anything"))
    end)

    it("refuses other kinds of argument", function()
      assert.error_matches(function() loom.Failure("x"):check(42) end,
        "bad argument #1 to 'check' %(error class or string expected, got number%)")
    end)
  end)

  describe("trap()", function()
    it("returns the matching class", function()
      local f = loom.Failure(loom.Cancelled:new("c"))
      assert.equal(loom.Cancelled, f:trap(loom.Timeout, loom.Cancelled))
    end)

    it("re-raises the failure when nothing matches", function()
      local f = loom.Failure("other")
      local ok, err = pcall(f.trap, f, loom.Timeout)
      assert.is_false(ok)
      assert.equal("other", err)
      local d = loom.deferred()
      d:add_errback(function(g) g:trap(loom.Timeout) end)
      d:errback(f)
      assert.equal(f, failure_of(d))
    end)
  end)

  describe("raise()", function()
    it("raises the value itself, with no position added", function()
      local t = {}
      assert.equal(t, select(2, pcall(loom.Failure(t).raise, loom.Failure(t))))
      local f = loom.Failure("exact")
      local ok, err = pcall(f.raise, f)
      assert.is_false(ok)
      assert.equal("exact", err)
    end)
  end)
  it("say so when a method is called on something else", function()
    assert.error_matches(function() loom.Failure.check({}, loom.Timeout) end,
      "calling 'check' on bad self %(loom.Failure expected, got table%)")
  end)
end)

describe("loom.succeed() and loom.fail()", function()
  it("return fired Deferreds", function()
    local d = loom.succeed("yes")
    assert.is_true(d.called)
    assert.equal("yes", result_of(d))
    local e = loom.fail("no")
    assert.is_true(e.called)
    assert.equal("no", failure_of(e).value)
    local f = loom.Failure("kept")
    assert.equal(f, failure_of(loom.fail(f)))
  end)

  it("refuse a Deferred", function()
    assert.error_matches(function() loom.succeed(loom.deferred()) end,
      "bad argument #1 to 'succeed'")
  end)
end)

describe("loom.maybe_deferred()", function()
  it("wraps a plain result", function()
    assert.equal(15, result_of(loom.maybe_deferred(function(x) return x + 5 end, 10)))
  end)

  it("turns a raise into a failure with its traceback", function()
    local d = loom.maybe_deferred(function(x) return x + 5 end, "ten")
    local f = failure_of(d)
    assert.matches("attempt to add", f.value)
    assert.is_string(f.traceback)
  end)

  it("returns a Deferred result as it is", function()
    local d = loom.deferred()
    assert.equal(d, loom.maybe_deferred(function() return d end))
  end)

  it("turns a returned Failure into a failed Deferred", function()
    local f = loom.Failure("returned")
    assert.equal(f, failure_of(loom.maybe_deferred(function() return f end)))
  end)

  it("checks its argument", function()
    assert.error_matches(function() loom.maybe_deferred(nil) end,
      "bad argument #1 to 'maybe_deferred' %(function expected, got nil%)")
  end)
end)

describe("loom.deferred_list()", function()
  it("fires with {ok, value or failure} for each input once all have fired", function()
    local d1, d2, d3 = loom.deferred(), loom.deferred(), loom.deferred()
    local dl = loom.deferred_list({ d1, d2, d3 })
    local result
    dl:add_callback(function(r) result = r end)
    d1:callback("1")
    d2:add_errback(function() end) -- handled after the list has seen it
    d2:errback("2")
    assert.is_nil(result)
    d3:callback("3")
    assert.equal(3, #result)
    assert.same({ true, "1" }, result[1])
    assert.is_false(result[2][1])
    assert.equal("2", result[2][2].value)
    assert.same({ true, "3" }, result[3])
  end)

  it("fires at once for an empty list, unless fire_on_one_callback", function()
    assert.same({}, result_of(loom.deferred_list({})))
    assert.is_true(no_result(loom.deferred_list({}, { fire_on_one_callback = true })))
  end)

  it("fires with {value, index} on the first success with fire_on_one_callback", function()
    local d1, d2 = loom.deferred(), loom.deferred()
    local dl = loom.deferred_list({ d1, d2 }, { fire_on_one_callback = true })
    d2:callback("two")
    assert.same({ "two", 2 }, result_of(dl))
    d1:callback("one")
  end)

  it("errbacks on the first failure with fire_on_one_errback", function()
    local d1, d2, d3 = loom.deferred(), loom.deferred(), loom.deferred()
    local dl = loom.deferred_list({ d1, d2, d3 }, { fire_on_one_errback = true })
    d2:add_errback(function() end)
    d1:callback("1")
    assert.is_true(no_result(dl))
    d2:errback(loom.Timeout:new("from d2"))
    local f = failure_of(dl)
    assert.equal(2, f.index)
    assert.equal(loom.Timeout, f:check(loom.Timeout))
    assert.equal("from d2", f.sub_failure.value.message)
    d3:callback("3")
  end)

  it("leaves failures on the inputs unless consume_errors", function()
    local d1 = loom.deferred()
    local dl = loom.deferred_list({ d1 })
    local trapped = {}
    d1:add_errback(function(f) trapped[#trapped + 1] = f.value end)
    d1:errback("Bang")
    assert.same({ "Bang" }, trapped)
    assert.equal("Bang", result_of(dl)[1][2].value)

    local e1 = loom.deferred()
    local el = loom.deferred_list({ e1 }, { consume_errors = true })
    local etrapped = {}
    e1:add_errback(function(f) etrapped[#etrapped + 1] = f end)
    e1:errback("Bang")
    assert.same({}, etrapped)
    assert.equal("Bang", result_of(el)[1][2].value)
  end)

  it("takes inputs that have fired already", function()
    local d1, d2 = loom.fail("Bang"), loom.succeed(2)
    local dl = loom.deferred_list({ d1, d2 })
    local r = result_of(dl)
    assert.equal("Bang", r[1][2].value)
    assert.same({ true, 2 }, r[2])
    failure_of(d1)
    local e1 = loom.fail("Bang")
    local el = loom.deferred_list({ e1, loom.deferred() }, { fire_on_one_errback = true })
    assert.equal("Bang", failure_of(el).value)
    failure_of(e1)
  end)

  it("cancels every input when cancelled", function()
    local d1, d2 = loom.deferred(), loom.deferred()
    local inputs = { d1, d2 }
    local dl = loom.deferred_list(inputs)
    local d3 = loom.deferred()
    inputs[3] = d3 -- added later: not part of the list
    dl:cancel()
    assert.is_true(loom.Cancelled:is(failure_of(d1).value))
    assert.is_true(loom.Cancelled:is(failure_of(d2).value))
    assert.is_true(no_result(d3))
    local r = result_of(dl)
    assert.is_false(r[1][1])
    assert.is_true(r[2][2]:check(loom.Cancelled) ~= nil)
  end)

  it("keeps results that cancellers gave", function()
    local d1 = loom.deferred(function(d) d:callback("Callback Result") end)
    local d2 = loom.deferred()
    local dl = loom.deferred_list({ d1, d2 }, { fire_on_one_callback = true })
    dl:cancel()
    assert.is_true(loom.Cancelled:is(failure_of(d2).value))
    assert.same({ "Callback Result", 1 }, result_of(dl))
  end)

  it("errbacks with the first Cancelled with fire_on_one_errback", function()
    local d1, d2 = loom.deferred(), loom.deferred()
    local dl = loom.deferred_list({ d1, d2 }, { fire_on_one_errback = true })
    dl:cancel()
    failure_of(d1)
    failure_of(d2)
    local f = failure_of(dl)
    assert.equal(1, f.index)
    assert.is_true(f.sub_failure:check(loom.Cancelled) ~= nil)
  end)

  it("cancels the other inputs when one canceller raises, and reports that error", function()
    local reports = capture_reports(function()
      local d1 = loom.deferred(function() error("canceller raised", 0) end)
      local d2 = loom.deferred()
      local dl = loom.deferred_list({ d1, d2 })
      dl:cancel()
      assert.is_true(loom.Cancelled:is(failure_of(d2).value))
      assert.is_true(no_result(d1))
      -- The list did not fire from its inputs, so it errbacks itself.
      assert.is_true(loom.Cancelled:is(failure_of(dl).value))
      d1:callback("done")
    end)
    assert.equal(1, #reports)
    assert.equal("canceller raised", reports[1].err.value)
  end)

  it("does not cancel the inputs once it has fired", function()
    local d1, d2 = loom.deferred(), loom.deferred()
    local dl = loom.deferred_list({ d1, d2 }, { fire_on_one_callback = true })
    d1:callback(nil)
    dl:cancel()
    assert.is_true(no_result(d2))
    result_of(dl)
  end)

  it("checks its arguments", function()
    assert.error_matches(function() loom.deferred_list(nil) end,
      "bad argument #1 to 'deferred_list' %(table expected, got nil%)")
    assert.error_matches(function() loom.deferred_list({ loom.deferred(), 3 }) end,
      "bad argument #1 to 'deferred_list' %(array of loom.deferred expected, got number at index 2%)")
    assert.error_matches(function() loom.deferred_list({}, 1) end,
      "bad argument #2 to 'deferred_list' %(table or nil expected, got number%)")
  end)
end)

describe("loom.gather()", function()
  it("fires with the array of results", function()
    local r = result_of(loom.gather({ loom.succeed(1), loom.succeed(2) }))
    assert.equal(1, r[1])
    assert.equal(2, r[2])
    assert.equal(2, r.n)
    local n = result_of(loom.gather({ loom.succeed(nil), loom.succeed(3) }))
    assert.equal(2, n.n)
    assert.is_nil(n[1])
    assert.equal(0, result_of(loom.gather({})).n)
  end)

  it("errbacks with the first failure and consumes the inputs' failures", function()
    local bad = loom.fail("oh noes")
    local d = loom.gather({ loom.succeed(1), bad })
    local f = failure_of(d)
    assert.equal("oh noes", f.value)
    assert.equal(2, f.index)
    assert.is_nil(result_of(bad))
  end)

  it("leaves the inputs' failures with consume_errors = false", function()
    local bad = loom.fail("kept")
    local d = loom.gather({ bad }, { consume_errors = false })
    assert.equal("kept", failure_of(d).value)
    assert.equal("kept", failure_of(bad).value)
  end)

  it("cancels every input when cancelled", function()
    local d1, d2 = loom.deferred(), loom.deferred()
    local g = loom.gather({ d1, d2 })
    g:cancel()
    assert.is_true(loom.Cancelled:is(failure_of(g).value))
    assert.is_nil(result_of(d1))
    assert.is_nil(result_of(d2))
    local c1 = loom.deferred(function(d) d:callback("R") end)
    local c2 = loom.deferred(function(d) d:callback("R") end)
    local g2 = loom.gather({ c1, c2 })
    g2:cancel()
    local r = result_of(g2)
    assert.same({ "R", "R", n = 2 }, r)
  end)
end)

describe("unhandled failures", function()
  it("are reported once when the Deferred is collected", function()
    local reports = capture_reports(function()
      do
        local d = loom.deferred()
        d:add_callback(function() error("never handled") end)
        d:callback(1)
      end
      full_gc()
      full_gc()
    end)
    assert.equal(1, #reports)
    assert.equal("Unhandled error in Deferred", reports[1].where)
    assert.is_true(loom.Failure:is(reports[1].err))
    assert.matches("never handled", reports[1].err.value)
    assert.matches("30%-deferred_spec.lua", reports[1].tb)
  end)

  it("are not reported when an errback handled them", function()
    local reports = capture_reports(function()
      do
        local d = loom.fail("handled later")
        d:add_errback(function() end)
        local e = loom.fail("handled by a list")
        loom.deferred_list({ e }, { consume_errors = true })
        local f = loom.fail("handled by a chain")
        loom.succeed(nil):add_callback(function() return f end):add_errback(function() end)
      end
      full_gc()
    end)
    assert.same({}, reports)
  end)

  it("are reported again when an errback raises a new error", function()
    local reports = capture_reports(function()
      do
        local d = loom.fail("first")
        d:add_errback(function() error("second", 0) end)
      end
      full_gc()
    end)
    assert.equal(1, #reports)
    assert.equal("second", reports[1].err.value)
  end)

  it("are reported at shutdown when still held", function()
    local loom_bin = (arg and arg[-1]) or "build/loom"
    if not loom_bin:find("loom") then loom_bin = "build/loom" end
    local p = io.popen(loom_bin .. [[ -e "kept = require('loom').fail('left over')" 2>&1; echo "exit=$?"]])
    local out = p:read("a")
    p:close()
    assert.matches("Unhandled error in Deferred", out)
    assert.matches("left over", out)
    assert.matches("stack traceback", out)
    assert.matches("exit=1", out)
    local _, count = out:gsub("left over", "")
    assert.equal(1, count)
  end)
end)
