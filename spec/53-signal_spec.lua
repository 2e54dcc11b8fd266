-- Specs for loom.signal (SPEC section 6): wait(), on() handlers in reactor
-- context, raise(), and the dispositions loom leaves behind. Signals go to
-- this very process (raise(), or kill(1) with the pid from /proc).
-- Every example ends with no live tasklet, no active handle and no extra
-- descriptor.
-- Run: build/loom /usr/bin/busted spec/53-signal_spec.lua
local loom = require "loom"
local lfs = require "lfs"

local signal = loom.signal
local SIGUSR2, SIGPIPE = 12, 13 -- Linux numbers, for /proc/self/status masks

local function fd_count()
  local n = 0
  for _ in lfs.dir("/proc/self/fd") do
    n = n + 1
  end
  return n
end

local function is_fail(code, a, b, c)
  assert.is_nil(a)
  assert.is_string(b)
  assert.equal(code, c)
  assert.equal(code, b:match("^([%u_]+):"))
end

local function raises(pattern, fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok)
  assert.matches(pattern, tostring(err), 1, true)
end

local function pid()
  return assert(loom.fs.read_file("/proc/self/stat")):match("^(%d+)")
end

-- Is signal `sig` caught (SigCgt) or ignored (SigIgn) by this process?
local function mask_has(field, sig)
  local status = assert(loom.fs.read_file("/proc/self/status"))
  local mask = tonumber(status:match(field .. ":%s*(%x+)"), 16)
  return (mask >> (sig - 1)) & 1 == 1
end

-- Runs a snippet under this very loom binary; returns its exit status.
local function run_loom(code)
  local exe = assert(loom.fs.realpath("/proc/self/exe"))
  local ok, _, status = os.execute(("timeout 10 %s -e %q >/dev/null 2>&1"):format(exe, code))
  return ok and 0 or status
end

-- Runs a snippet under a stock lua5.4 with loom.core from the CLI's build
-- directory (loom in the main thread); returns its output, or nil when
-- there is no such module.
local function run_lua54(code)
  local exe = assert(loom.fs.realpath("/proc/self/exe"))
  local dir = exe:gsub("[^/]+$", "")
  if not loom.fs.exists(dir .. "lib/loom/core.so") then
    return nil
  end
  -- A sanitizer build's module needs its runtime loaded first.
  local maps = assert(loom.fs.read_file("/proc/self/maps"))
  local asan = maps:match("(/%S+/libasan%.so[%.%d]*)")
  local script = os.tmpname()
  assert(loom.fs.write_file(script, ("package.cpath = %q .. package.cpath\n"):format(
    dir .. "lib/?/core.so;") .. code))
  local pipe = assert(io.popen((asan and ("LD_PRELOAD=" .. asan .. " ") or "")
    .. "timeout 10 lua5.4 " .. script .. " 2>&1"))
  local out = pipe:read("a")
  pipe:close()
  os.remove(script)
  return out
end

local base
before_each(function()
  base = { tasklets = #loom.tasklets(), handles = loom.stats().handles, fds = fd_count() }
end)

after_each(function()
  for _ = 1, 200 do
    if #loom.tasklets() == base.tasklets and loom.stats().handles == base.handles
        and fd_count() == base.fds then
      break
    end
    collectgarbage() -- files dropped without close() are closed by the collector
    loom.sleep(0.005)
  end
  assert.equal(base.tasklets, #loom.tasklets(), loom.dump())
  assert.equal(base.handles, loom.stats().handles)
  assert.equal(base.fds, fd_count())
end)

describe("loom.signal", function()
  describe("wait()", function()
    it("returns the name when the signal comes", function()
      loom.call_later(0.02, function() signal.raise("SIGUSR1") end)
      assert.equal("SIGUSR1", signal.wait("SIGUSR1", 5))
    end)

    it("sees a signal sent by another process", function()
      local got
      local t = loom.spawn(function() got = signal.wait("SIGUSR2", 5) end)
      loom.sleep(0.01)
      assert(os.execute("kill -USR2 " .. pid()))
      assert.is_true((t:join(5)))
      assert.equal("SIGUSR2", got)
    end)

    it("wakes every waiter", function()
      local got = {}
      local ts = {}
      for i = 1, 3 do
        ts[i] = loom.spawn(function() got[i] = signal.wait("SIGUSR1", 5) end)
      end
      loom.sleep(0.01)
      signal.raise("SIGUSR1")
      for _, t in ipairs(ts) do assert.is_true((t:join(5))) end
      assert.same({ "SIGUSR1", "SIGUSR1", "SIGUSR1" }, got)
    end)

    it("times out with ETIMEDOUT", function()
      local t0 = loom.now()
      is_fail("ETIMEDOUT", signal.wait("SIGUSR1", 0.03))
      assert.is_true(loom.now() - t0 >= 0.03)
      is_fail("ETIMEDOUT", signal.wait("SIGUSR1", 0))
    end)

    it("keeps the loop alive only while it waits", function()
      local t = loom.spawn(function() return signal.wait("SIGUSR1") end)
      loom.sleep(0.01)
      assert.equal(base.handles + 1, loom.stats().handles)
      signal.raise("SIGUSR1")
      assert.is_true((t:join(5)))
      assert.equal(base.handles, loom.stats().handles)
    end)

    it("stops watching when its tasklet is killed or times out", function()
      local t = loom.spawn(function() return signal.wait("SIGUSR2") end)
      loom.sleep(0.01)
      assert.is_true(mask_has("SigCgt", SIGUSR2))
      t:kill()
      assert.is_false((t:join(1)))
      assert.equal(base.handles, loom.stats().handles)
      assert.is_false(mask_has("SigCgt", SIGUSR2))
      local r, _, code = loom.timeout(0.02, signal.wait, "SIGUSR2")
      assert.is_nil(r)
      assert.equal("ETIMEDOUT", code)
      assert.is_false(mask_has("SigCgt", SIGUSR2))
    end)

    it("cannot block in the reactor", function()
      local r
      loom.call_later(0, function() r = table.pack(pcall(signal.wait, "SIGUSR1")) end)
      loom.sleep(0.02)
      assert.is_false(r[1])
      assert.matches("cannot block in the reactor", r[2], 1, true)
    end)

    it("rejects unknown names and bad timeouts", function()
      raises("unknown signal name 'SIGFOO'", signal.wait, "SIGFOO")
      raises("unknown signal name 'USR1'", signal.wait, "USR1")
      raises("unknown signal name 'sigusr1'", signal.wait, "sigusr1")
      raises("bad argument #1", signal.wait, nil)
      raises("bad argument #1", signal.wait, {})
      raises("SIGKILL cannot be caught", signal.wait, "SIGKILL")
      raises("SIGSTOP cannot be caught", signal.wait, "SIGSTOP")
      raises("bad argument #2", signal.wait, "SIGUSR1", -1)
      raises("bad argument #2", signal.wait, "SIGUSR1", 0 / 0)
      raises("bad argument #2", signal.wait, "SIGUSR1", "soon")
    end)
  end)

  describe("on()", function()
    it("calls the handler with the name at every delivery", function()
      local got = {}
      local h = signal.on("SIGUSR1", function(name) got[#got + 1] = name end)
      signal.raise("SIGUSR1")
      loom.sleep(0.02)
      signal.raise("SIGUSR1")
      loom.sleep(0.02)
      assert.same({ "SIGUSR1", "SIGUSR1" }, got)
      assert.is_true(h:stop())
    end)

    it("runs the handler in reactor context, where it may spawn", function()
      local can, why, spawned
      local h = signal.on("SIGUSR1", function()
        can, why = loom.can_block()
        loom.spawn(function() loom.sleep(0.001) spawned = true end)
      end)
      signal.raise("SIGUSR1")
      loom.sleep(0.05)
      h:stop()
      assert.is_false(can)
      assert.matches("reactor", why, 1, true)
      assert.is_true(spawned)
    end)

    it("reports handler errors and stays active", function()
      local reports, calls = {}, 0
      loom.on_error(function(err, where) reports[#reports + 1] = { err = err, where = where } end)
      local h = signal.on("SIGUSR1", function()
        calls = calls + 1
        error("boom")
      end)
      signal.raise("SIGUSR1")
      loom.sleep(0.02)
      signal.raise("SIGUSR1")
      loom.sleep(0.02)
      h:stop()
      loom.on_error(nil)
      assert.equal(2, calls)
      assert.equal(2, #reports)
      assert.matches("boom", tostring(reports[1].err), 1, true)
      assert.matches("SIGUSR1", reports[1].where, 1, true)
    end)

    it("stop() ends the calls and is harmless twice", function()
      local calls = 0
      local h = signal.on("SIGUSR2", function() calls = calls + 1 end)
      assert.is_true(h:active())
      assert.equal(base.handles + 1, loom.stats().handles)
      assert.is_true(h:stop())
      assert.is_true(h:stop())
      assert.is_false(h:active())
      assert.equal(base.handles, loom.stats().handles)
      assert.matches("stopped", tostring(h))
      -- Nobody watches SIGUSR2 now: keep one waiter so the raise is harmless.
      local t = loom.spawn(function() return signal.wait("SIGUSR2", 5) end)
      loom.sleep(0.01)
      signal.raise("SIGUSR2")
      t:join(5)
      assert.equal(0, calls)
    end)

    it("unref() lets the loop end, ref() undoes it", function()
      local h = signal.on("SIGUSR1", function() end)
      assert.equal(h, h:unref())
      assert.equal(base.handles, loom.stats().handles)
      assert.equal(h, h:ref())
      assert.equal(base.handles + 1, loom.stats().handles)
      h:stop()
      assert.equal(h, h:unref()) -- harmless once stopped
    end)

    it("stops at the end of a <close> scope", function()
      do
        local h <close> = signal.on("SIGUSR1", function() end)
        assert.is_true(h:active())
      end
      assert.equal(base.handles, loom.stats().handles)
    end)

    it("keeps an active handler that nobody references", function()
      local calls = 0
      local weak = setmetatable({}, { __mode = "v" })
      weak[1] = signal.on("SIGUSR1", function() calls = calls + 1 end)
      collectgarbage()
      collectgarbage()
      assert.is_not_nil(weak[1])
      signal.raise("SIGUSR1")
      loom.sleep(0.02)
      assert.equal(1, calls)
      weak[1]:stop()
    end)

    it("shares a delivery with a waiter", function()
      local seen
      local h = signal.on("SIGUSR1", function(name) seen = name end)
      loom.call_later(0.01, function() signal.raise("SIGUSR1") end)
      assert.equal("SIGUSR1", signal.wait("SIGUSR1", 5))
      loom.sleep(0.01)
      assert.equal("SIGUSR1", seen)
      h:stop()
    end)

    it("rejects bad arguments", function()
      raises("bad argument #2", signal.on, "SIGUSR1")
      raises("bad argument #2", signal.on, "SIGUSR1", "not a function")
      raises("unknown signal name 'SIGNOPE'", signal.on, "SIGNOPE", print)
      raises("SIGKILL cannot be caught", signal.on, "SIGKILL", print)
      local h = signal.on("SIGUSR1", print)
      raises("loom.signal_handler expected", h.stop, {})
      h:stop()
    end)
  end)

  describe("raise()", function()
    it("returns true and rejects unknown names", function()
      local t = loom.spawn(function() return signal.wait("SIGUSR1", 5) end)
      loom.sleep(0.01)
      assert.is_true(signal.raise("SIGUSR1"))
      assert.is_true((t:join(5)))
      raises("unknown signal name 'SIGFOO'", signal.raise, "SIGFOO")
      raises("bad argument #1", signal.raise, 10)
    end)
  end)

  describe("dispositions", function()
    it("are restored when loom stops watching", function()
      assert.is_false(mask_has("SigCgt", SIGUSR2))
      local h = signal.on("SIGUSR2", function() end)
      assert.is_true(mask_has("SigCgt", SIGUSR2))
      h:stop()
      assert.is_false(mask_has("SigCgt", SIGUSR2))
    end)

    it("keep an ignored SIGPIPE ignored", function()
      local ignored = mask_has("SigIgn", SIGPIPE)
      local h = signal.on("SIGPIPE", function() end)
      h:stop()
      assert.equal(ignored, mask_has("SigIgn", SIGPIPE))
    end)
  end)

  describe("the main thread of a plain lua5.4", function()
    it("waits for a signal", function()
      local out = run_lua54([[
        local loom = require "loom"
        loom.call_later(0.02, function() loom.signal.raise("SIGUSR1") end)
        print(loom.signal.wait("SIGUSR1", 5), select(3, loom.signal.wait("SIGUSR2", 0.01)))
      ]])
      if out then assert.equal("SIGUSR1\tETIMEDOUT\n", out) end
    end)
  end)

  describe("the process", function()
    it("waiting for a signal is not a deadlock", function()
      assert.equal(0, run_loom([[
        local loom = require "loom"
        loom.call_later(0.05, function() loom.signal.raise("SIGUSR1") end)
        assert(loom.signal.wait("SIGUSR1") == "SIGUSR1")
      ]]))
    end)

    it("an active handler keeps it alive until stopped", function()
      assert.equal(0, run_loom([[
        local loom = require "loom"
        local h
        h = loom.signal.on("SIGUSR1", function() h:stop() end)
        loom.call_later(0.05, function() loom.signal.raise("SIGUSR1") end)
      ]]))
    end)

    it("an unreferenced handler does not", function()
      assert.equal(0, run_loom([[
        local loom = require "loom"
        loom.signal.on("SIGUSR1", function() end):unref()
      ]]))
    end)
  end)
end)
