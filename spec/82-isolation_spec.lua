-- spec/82-isolation_spec.lua - failure isolation (issue 7): a tasklet that
-- raises never disturbs the others, and each error that nobody handles is
-- reported exactly once, whatever the error value is (a table, nil, an
-- object whose __tostring fails, ...), through loom.on_error or, without a
-- handler, on stderr.
-- Run: build-rel/loom /usr/bin/busted spec/82-isolation_spec.lua
local loom = require "loom"
local clean = require "spec.support.clean"

local BIN = os.getenv("LOOM_BIN") or (arg and arg[-1]) or "build/loom"

-- Runs fn(reports) with an on_error handler that records every report;
-- the default report is restored afterwards, also when fn fails.
local function with_reports(fn)
  local reports = {}
  loom.on_error(function(err, where, tb)
    reports[#reports + 1] = { err = err, where = where, tb = tb }
  end)
  local ok, e = pcall(fn, reports)
  loom.on_error(nil)
  if not ok then error(e, 0) end
  return reports
end

local function wait_for(pred, s)
  local deadline = loom.now() + (s or 2)
  while not pred() and loom.now() < deadline do loom.sleep(0.001) end
  return pred()
end

-- Runs `code` with the loom CLI in a child; returns ok, status, stdout, stderr.
local function child(code)
  local script, outf, errf = os.tmpname(), os.tmpname(), os.tmpname()
  local f = assert(io.open(script, "w"))
  f:write(code)
  f:close()
  local ok, _, status = os.execute(("timeout -k 5 60 %s %s </dev/null >%s 2>%s")
    :format(BIN, script, outf, errf))
  local function slurp(p)
    local h = io.open(p)
    local s = h and h:read("a") or ""
    if h then h:close() end
    os.remove(p)
    return s
  end
  os.remove(script)
  return ok, status, slurp(outf), slurp(errf)
end

-- Error values that are hard to print or inspect: a name, and the body of
-- a function that makes one (the same source runs here and in children;
-- `loom` is in scope).
local HOSTILE = {
  { "a plain table", "return { 1, 2, 3 }" },
  { "nil", "return nil" },
  { "false", "return false" },
  { "a number", "return 42" },
  { "a function", "return print" },
  { "a coroutine", "return coroutine.create(print)" },
  { "a userdata", "return io.stdout" },
  { "a 1 MB string", "return string.rep('e', 1 << 20)" },
  { "a string with NULs", [[return 'a\0b\0c']] },
  { "a table whose __tostring raises",
    "return setmetatable({}, { __tostring = function() error('__tostring fails') end })" },
  { "a table whose __tostring raises a table",
    "return setmetatable({}, { __tostring = function() error({}) end })" },
  { "a table whose __tostring returns a table",
    "return setmetatable({}, { __tostring = function() return {} end })" },
  { "a table whose __tostring returns nil",
    "return setmetatable({}, { __tostring = function() return nil end })" },
  { "a table whose __tostring blocks",
    "return setmetatable({}, { __tostring = function() loom.sleep(0.01) return 'slept' end })" },
  { "a table whose __index raises",
    "return setmetatable({}, { __index = function() error('no fields here') end })" },
  { "a table whose __newindex raises",
    "return setmetatable({}, { __newindex = function() error('read-only') end })" },
  { "a table whose __index blocks",
    "return setmetatable({}, { __index = function() loom.sleep(0.01) end })" },
  { "a table whose __name is not a string",
    "return setmetatable({}, { __name = {}, __tostring = function() error('x') end })" },
  { "a table with a protected metatable",
    "return setmetatable({}, { __metatable = false, __tostring = function() error('x') end })" },
  { "a table with a bogus code/message/traceback",
    "return { code = {}, message = print, traceback = 12 }" },
  { "a loom error object", "return loom.Timeout:new('custom')" },
  { "a self-referencing table",
    "local t = {}; t.traceback = t; t.message = t; t.code = t; return t" },
  { "a table whose __gc raises",
    "return setmetatable({}, { __gc = function() error('gc') end })" },
}

local function maker(src)
  return assert(load("return function() " .. src .. " end", "=hostile", "t",
    setmetatable({ loom = loom }, { __index = _G })))()
end

-- The child script for one hostile value: a tasklet, a call_later callback
-- and an unhandled Deferred raise it while an on_error handler counts;
-- another tasklet must run on; a join gets the value back. One RESULT line.
local CHILD_WITH_HANDLER = [=[
local loom = require "loom"
local make = assert(load("return function() " .. %q .. " end", "=hostile", "t",
  setmetatable({ loom = loom }, { __index = _G })))()
local counts = { tasklet = 0, reactor = 0, deferred = 0, other = 0 }
loom.on_error(function(err, where)
  where = tostring(where)
  local k = where:match("tasklet") and "tasklet" or where:match("call_later") and "reactor"
    or where:match("Deferred") and "deferred" or "other"
  counts[k] = counts[k] + 1
end)
local survivor = false
loom.spawn(function() error(make(), 0) end)
loom.spawn(function() loom.sleep(0.005) survivor = true end)
loom.sleep(0.03)
loom.call_later(0, function() error(make(), 0) end)
loom.sleep(0.03)
do local d = loom.deferred(); d:errback(make()) end
collectgarbage(); collectgarbage()
loom.sleep(0.03)
collectgarbage()
local v = make()
local t2 = loom.spawn(function() error(v, 0) end)
local ok, err = t2:join()
print(("RESULT tasklet=%%d reactor=%%d deferred=%%d other=%%d survivor=%%s joined=%%s same=%%s")
  :format(counts.tasklet, counts.reactor, counts.deferred, counts.other, tostring(survivor),
    tostring(ok), tostring(rawequal(err, v) or v ~= v)))
]=]

-- Without a handler: the default report on stderr, the CLI exits 1.
local CHILD_DEFAULT = [=[
local loom = require "loom"
local make = assert(load("return function() " .. %q .. " end", "=hostile", "t",
  setmetatable({ loom = loom }, { __index = _G })))()
loom.spawn(function() error(make(), 0) end)
loom.spawn(function() loom.sleep(0.01) print("SURVIVOR") end)
]=]

describe("isolation", function()
  local snap
  before_each(function() snap = clean.snapshot() end)
  after_each(function() clean.assert_clean(snap, nil, 2) end)

  it("of 1,000 tasklets 10% raise at random points: the rest complete, each error is reported once",
    function()
      math.randomseed(7)
      local N, completed = 1000, 0
      local doomed, ndoomed = {}, 0
      while ndoomed < N // 10 do
        local i = math.random(N)
        if not doomed[i] then
          doomed[i] = true
          ndoomed = ndoomed + 1
        end
      end
      local ch = loom.channel(16)
      local ev = loom.event()
      local reports = with_reports(function(reports)
        for i = 1, N do
          local steps = math.random(0, 6)
          local fail_at = doomed[i] and math.random(0, steps) or -1
          loom.spawn(function()
            for step = 0, steps do
              if step == fail_at then error("boom #" .. i, 0) end
              local k = (i + step) % 4
              if k == 0 then loom.yield()
              elseif k == 1 then loom.sleep(0.001 * math.random(0, 3))
              elseif k == 2 then ch:send(i); ch:receive()
              else ev:wait(0.001) end
            end
            completed = completed + 1
          end)
        end
        assert(wait_for(function() return completed + #reports >= N end, 20))
        loom.sleep(0.05) -- a second report would come now
      end)
      assert.equal(N - N // 10, completed)
      local seen = {}
      for _, r in ipairs(reports) do
        local i = tonumber(tostring(r.err):match("^boom #(%d+)$"))
        assert(i, "unexpected report: " .. tostring(r.err))
        assert(doomed[i], "tasklet " .. i .. " was not meant to fail")
        assert(not seen[i], "error of tasklet " .. i .. " reported twice")
        seen[i] = true
      end
      assert.equal(N // 10, #reports)
    end)

  it("errors that are joined, grouped or watched are not reported", function()
    local reports = with_reports(function()
      local t = loom.spawn(function() error("joined") end)
      local ok, err = t:join()
      assert.is_false(ok)
      assert.matches("joined", tostring(err))
      local g = loom.group()
      g:spawn(function() error("grouped") end)
      assert.is_false((g:wait()))
      local got
      loom.spawn_with(function(ok2, e) got = { ok2, e } end, function() error("watched") end)
      assert(wait_for(function() return got end))
      loom.sleep(0.01)
    end)
    assert.equal(0, #reports)
  end)

  -- Each hostile value runs in a child: one that takes the runtime down
  -- fails its own test, not the whole run.
  for _, case in ipairs(HOSTILE) do
    it("reports " .. case[1] .. " once (tasklet, call_later, Deferred) and runs on", function()
      local ok, status, out, err = child(CHILD_WITH_HANDLER:format(case[2]))
      local r = out:match("RESULT [^\n]*")
      assert(ok and r, ("the child died (exit %s):\n%s"):format(tostring(status), err:sub(1, 1500)))
      assert.equal("RESULT tasklet=1 reactor=1 deferred=1 other=0 survivor=true joined=false"
        .. " same=true", r)
      assert.is_nil(err:match("Sanitizer"), err:sub(1, 2000))
    end)

    it("reports " .. case[1] .. " on stderr without a handler; the CLI exits 1", function()
      local ok, status, out, err = child(CHILD_DEFAULT:format(case[2]))
      assert.is_falsy(ok)
      assert.equal(1, status, err:sub(1, 1500))
      assert(out:find("SURVIVOR", 1, true), "the other tasklet did not run; stderr:\n"
        .. err:sub(1, 1500))
      local n = 0
      for _ in err:gmatch("error in tasklet #%d+") do n = n + 1 end
      assert.equal(1, n, err:sub(1, 1500))
      assert.is_nil(err:match("Sanitizer"), err:sub(1, 2000))
    end)
  end

  it("loom.report_error with hostile values", function()
    local safe = {}
    for _, case in ipairs(HOSTILE) do
      -- the values that take the runtime down are covered by the children
      if not case[1]:match("__index") and not case[1]:match("__newindex") then
        safe[#safe + 1] = case
      end
    end
    local reports = with_reports(function()
      for _, case in ipairs(safe) do
        loom.report_error(maker(case[2])(), "a hostile report")
      end
    end)
    assert.equal(#safe, #reports)
  end)

  -- In a child: the errors a failing handler could not take fall back to
  -- stderr and make the CLI exit 1, as documented; that must not be the
  -- exit status of this run.
  it("an on_error handler that raises or blocks does not take loom down", function()
    local ok, status, out, err = child([[
      local loom = require "loom"
      local calls = 0
      loom.on_error(function()
        calls = calls + 1
        if calls % 2 == 0 then loom.sleep(0.01) end
        error(setmetatable({}, { __tostring = function() error("handler value") end }))
      end)
      for i = 1, 10 do loom.spawn(function() error("e" .. i) end) end
      loom.sleep(0.05)
      local t = loom.spawn(function() return 1 end)
      local a, b = t:join()
      print(("RESULT calls=%d join=%s,%s"):format(calls, tostring(a), tostring(b)))
    ]])
    assert(out:find("RESULT calls=10 join=true,1", 1, true),
      ("status %s, stdout %q, stderr:\n%s"):format(tostring(status), out, err:sub(1, 1500)))
    assert.is_nil(err:match("Sanitizer"), err:sub(1, 2000))
    local _ = ok
  end)
end)
