-- Specs for preemption (SPEC section 3 "Preemption", design rule D2):
-- loom.config{ slice = s } requeues a tasklet that runs too long without
-- waiting; loom.config{ cpu_limit = s } kills it with a TaskletExit.
-- Run: build/loom /usr/bin/busted spec/14-preempt_spec.lua
-- Every example restores the configuration it found.
local loom = require "loom"
local H = require "spec.helper"

local clean = H.clean

describe("loom.config()", function()
  local saved
  before_each(function() saved = loom.config() end)
  after_each(function() loom.config({ slice = saved.slice, cpu_limit = saved.cpu_limit }) end)

  it("returns the current settings without changing them", clean(function()
    local c = loom.config()
    assert.are.equal("number", type(c.slice))
    assert.are.equal("number", type(c.cpu_limit))
    local again = loom.config()
    assert.are.equal(c.slice, again.slice)
    assert.are.equal(c.cpu_limit, again.cpu_limit)
  end))

  it("returns the previous settings when it changes them", clean(function()
    loom.config({ slice = 0, cpu_limit = 0 })
    local prev = loom.config({ slice = 0.02 })
    assert.are.equal(0, prev.slice)
    assert.are.equal(0, prev.cpu_limit)
    prev = loom.config({ cpu_limit = 1 })
    assert.are.equal(0.02, prev.slice)
    assert.are.equal(0, prev.cpu_limit)
    local now = loom.config()
    assert.are.equal(0.02, now.slice)
    assert.are.equal(1, now.cpu_limit)
  end))

  it("is off by default for the module (not started through the CLI)", clean(function()
    local code, out, err = H.run_stock([[
local c = require("loom").config()
print(c.slice, c.cpu_limit)
]])
    assert.are.equal(0, code, err)
    assert.matches("^0%.?0?\t0%.?0?\n$", out)
  end))

  it("rejects negative, NaN and non-number values", clean(function()
    for _, bad in ipairs({ { slice = -1 }, { slice = 0 / 0 }, { cpu_limit = -0.5 },
                           { cpu_limit = "x" }, { slice = {} } }) do
      local ok, err = pcall(loom.config, bad)
      assert.is_false(ok)
      assert.matches("bad argument", err)
    end
    assert.has_error(function() loom.config(5) end)
    local c = loom.config()
    assert.are.equal(saved.slice, c.slice)
    assert.are.equal(saved.cpu_limit, c.cpu_limit)
  end))
end)

describe("preemption with a slice", function()
  local saved
  before_each(function() saved = loom.config() end)
  after_each(function() loom.config({ slice = saved.slice, cpu_limit = saved.cpu_limit }) end)

  it("lets a ticker tick while another tasklet spins", clean(function()
    loom.config({ slice = 0.01, cpu_limit = 0 })
    local stop = false
    local ticks = 0
    local ticker = loom.spawn(function()
      while not stop do
        loom.sleep(0.005)
        ticks = ticks + 1
      end
    end)
    local spinner = loom.spawn(function()
      -- bounded, so that a broken preemption fails the example instead of
      -- hanging the suite
      local t0 = loom.now()
      while not stop and loom.now() - t0 < 1.5 do end
      return "spun"
    end)
    local t0 = loom.now()
    loom.sleep(0.2)
    local slept = loom.now() - t0
    stop = true
    assert.are.same({ true, "spun" }, { spinner:join() })
    ticker:join()
    assert.is_true(slept < 0.5, ("a 0.2 s sleep took %.3f s beside a spinner"):format(slept))
    assert.is_true(ticks >= 5, ("the ticker ticked %d times in %.3f s"):format(ticks, slept))
  end))

  it("counts preemptions in stats()", clean(function()
    loom.config({ slice = 0.005, cpu_limit = 0 })
    local p0 = loom.stats().preemptions
    local t = loom.spawn(function() H.spin(0.05) end)
    t:join()
    assert.is_true(loom.stats().preemptions > p0)
  end))

  it("requeues the spinner: tasklets that are ready run in between", clean(function()
    loom.config({ slice = 0.005, cpu_limit = 0 })
    local log = {}
    local spinner = loom.spawn(function()
      H.spin(0.05)
      log[#log + 1] = "spinner done"
    end)
    local other = loom.spawn(function() log[#log + 1] = "other" end)
    spinner:join()
    other:join()
    assert.are.same({ "other", "spinner done" }, log)
  end))

  it("a slice of 0 turns preemption off", clean(function()
    loom.config({ slice = 0.005 })
    loom.config({ slice = 0 })
    local p0 = loom.stats().preemptions
    local t = loom.spawn(function() H.spin(0.03) end)
    t:join()
    assert.are.equal(p0, loom.stats().preemptions)
  end))
end)

describe("cpu_limit", function()
  local saved
  before_each(function() saved = loom.config() end)
  after_each(function() loom.config({ slice = saved.slice, cpu_limit = saved.cpu_limit }) end)

  it("a spinner caught by pcall sees the TaskletExit", clean(function()
    loom.config({ cpu_limit = 0.02, slice = 0 })
    local t = loom.spawn(function()
      local ok, err = pcall(H.spin, 1.5)
      return ok, err
    end)
    local ok, pok, perr = t:join()
    assert.is_true(ok)
    assert.is_false(pok)
    assert.is_true(loom.TaskletExit:is(perr))
  end))

  it("counts continuous running only: a tasklet that waits now and then lives",
    clean(function()
      loom.config({ cpu_limit = 0.03, slice = 0 })
      local t = loom.spawn(function()
        for _ = 1, 8 do
          H.spin(0.01)
          loom.sleep(0)
        end
        return "survived"
      end)
      assert.are.same({ true, "survived" }, { t:join() })
    end))

  it("kills a spinner with TaskletExit; its <close> variables run", clean(function()
    loom.config({ cpu_limit = 0.05, slice = 0 })
    local log = {}
    local t0 = loom.now()
    local t = loom.spawn(function()
      local _ <close> = H.closer(log, "closed")
      H.spin(1.5) -- bounded: a missed kill fails instead of hanging
      return "not killed"
    end)
    local ok, err = t:join()
    assert.is_false(ok)
    assert.is_true(loom.TaskletExit:is(err))
    assert.matches("cpu_limit", tostring(err))
    assert.are.same({ "closed" }, log)
    assert.is_true(loom.now() - t0 < 1)
  end))

  it("is not reported as an error", clean(function()
    loom.config({ cpu_limit = 0.02, slice = 0 })
    local reports = {}
    loom.on_error(function(e) reports[#reports + 1] = e end)
    local t = loom.spawn(function() H.spin(1.5) end)
    H.wait_until(function() return not t:alive() end, 5)
    loom.on_error(nil)
    assert.are.equal(0, #reports)
  end))

  it("still kills a spinner that is preempted in between", clean(function()
    loom.config({ cpu_limit = 0.05, slice = 0.005 })
    local t0 = loom.now()
    local t = loom.spawn(function() H.spin(1.5) return "not killed" end)
    local ok, err = t:join()
    assert.is_false(ok)
    assert.is_true(loom.TaskletExit:is(err))
    assert.is_true(loom.now() - t0 < 1)
  end))
end)

-- An uncaught error raised from the preemption hook (a cpu_limit kill, or a
-- kill/throw delivered at the hook) must not leave the thread, which goes
-- back to the pool, without its hook. These run last: when the bug is
-- there, every later uncaught kill would inherit a thread without hook.
describe("threads reused after a kill in the hook", function()
  local saved
  before_each(function() saved = loom.config() end)
  after_each(function() loom.config({ slice = saved.slice, cpu_limit = saved.cpu_limit }) end)

  it("kills the next spinner too (a thread reused after a cpu_limit kill)", clean(function()
    loom.config({ cpu_limit = 0.03, slice = 0 })
    for i = 1, 3 do
      local t0 = loom.now()
      local t = loom.spawn(function() H.spin(1.5) return "not killed" end)
      local ok, err = t:join()
      assert.is_false(ok, ("spinner %d was not killed"):format(i))
      assert.is_true(loom.TaskletExit:is(err))
      assert.is_true(loom.now() - t0 < 1, ("spinner %d ran %.3f s"):format(i, loom.now() - t0))
    end
  end))

  it("still preempts after a tasklet was killed while preempted (thread reuse)",
    clean(function()
      loom.config({ slice = 0.005, cpu_limit = 0 })
      local victim = loom.spawn(function() H.spin(1) end)
      loom.yield() -- the victim runs and is preempted: main runs again
      victim:kill() -- raised at the victim's next hook
      assert.is_false((victim:join()))
      -- the next spinner may reuse the victim's thread
      local log = {}
      local spinner = loom.spawn(function()
        H.spin(0.1)
        log[#log + 1] = "spinner"
      end)
      local other = loom.spawn(function() log[#log + 1] = "other" end)
      spinner:join()
      other:join()
      assert.are.same({ "other", "spinner" }, log)
    end))
end)
