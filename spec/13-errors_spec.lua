-- Specs for the error model (SPEC section 2, design rules E, T7): fail
-- triples, error classes, misuse messages, and the report of an error that
-- escapes a tasklet nobody joins (loom.on_error replaces it).
-- Run: build/loom /usr/bin/busted spec/13-errors_spec.lua
-- What goes to stderr and the exit status are checked in child processes
-- (LOOM_BIN, default build/loom).
local loom = require "loom"
local H = require "spec.helper"

local clean = H.clean
local pack = table.pack

local CLASSES = {
  { "TaskletExit", "EKILLED" },
  { "Cancelled", "ECANCELED" },
  { "Timeout", "ETIMEDOUT" },
  { "AlreadyCalled", "EALREADY" },
  { "Deadlock", "EDEADLK" },
}

local function count(haystack, needle)
  local n, i = 0, 1
  while true do
    local s, e = haystack:find(needle, i, true)
    if not s then return n end
    n, i = n + 1, e + 1
  end
end

describe("the fail triple", function()
  local function check(code, ...)
    local r = pack(...)
    assert.are.equal(3, r.n, "a fail triple has exactly three values")
    assert.is_nil(r[1])
    assert.are.equal("string", type(r[2]))
    assert.matches("^" .. code .. ": .+", r[2])
    assert.are.equal(code, r[3])
  end

  it("is nil, 'CODE: message', 'CODE' for every operational failure", clean(function()
    local ch = loom.channel()
    check("ETIMEDOUT", ch:receive(0))
    check("ETIMEDOUT", ch:receive(0.001))
    check("ETIMEDOUT", ch:send(1, 0))
    check("ETIMEDOUT", loom.event():wait(0.001))
    check("ETIMEDOUT", loom.semaphore(0):acquire(0.001))
    check("ETIMEDOUT", loom.select({ { "receive", ch } }, 0.001))
    check("ETIMEDOUT", loom.timeout(0.001, loom.sleep, 1))
    local t = loom.spawn(loom.sleep, 0.05)
    check("ETIMEDOUT", t:join(0.001))
    t:join()
    ch:close()
    check("ECLOSED", ch:receive())
    check("ECLOSED", ch:send(1))
    local g = loom.group()
    g:spawn(loom.sleep, 0.05)
    check("ETIMEDOUT", g:wait(0.001))
    g:wait()
  end))
end)

describe("misuse", function()
  it("raises 'bad argument #N to 'name' (X expected, got Y)'", clean(function()
    local cases = {
      { function() loom.channel("x") end, "bad argument #1 to '[%w%.]*channel' %(number expected, got string%)" },
      { function() loom.spawn(nil) end, "bad argument #1 to '[%w%.]*spawn' %(function expected, got nil%)" },
      { function() loom.sleep({}) end, "bad argument #1 to '[%w%.]*sleep' %(number expected, got table%)" },
      { function() loom.channel().receive(nil) end,
        "bad argument #1 to '[%w%.]*receive' %(loom%.channel expected, got nil%)" },
      { function() loom.event().wait(5) end, "bad argument #1 to '[%w%.]*wait' %(loom%.event expected, got number%)" },
      { function() loom.spawn(function() end).join({}) end,
        "bad argument #1 to '[%w%.]*join' %(loom%.tasklet expected, got table%)" },
      { function() loom.select(nil) end, "bad argument #1 to '[%w%.]*select' %(table expected, got nil%)" },
      { function() loom.on_error(1) end, "bad argument #1 to '[%w%.]*on_error' %(function expected, got number%)" },
    }
    for _, c in ipairs(cases) do
      local ok, err = pcall(c[1])
      assert.is_false(ok)
      assert.matches(c[2], err)
    end
    loom.yield() -- the tasklet spawned above ends
  end))
end)

describe("error classes", function()
  for _, c in ipairs(CLASSES) do
    local name, code = c[1], c[2]
    it(("loom.%s has code %s, :new() and :is()"):format(name, code), clean(function()
      local C = loom[name]
      assert.are.equal("table", type(C))
      assert.are.equal(code, C.code)
      assert.are.equal(name, C.name)
      local e = C:new("it broke")
      assert.are.equal("table", type(e))
      assert.are.equal(code, e.code)
      assert.are.equal("it broke", e.message)
      assert.are.equal(code .. ": it broke", tostring(e))
      assert.are.equal("string", type(e.traceback))
      assert.is_true(H.has(e.traceback, "13-errors_spec.lua"), e.traceback)
      assert.is_true(C:is(e))
      for _, other in ipairs(CLASSES) do
        if other[1] ~= name then
          assert.is_false(loom[other[1]]:is(e))
          assert.is_false(C:is(loom[other[1]]:new("x")))
        end
      end
    end))
  end

  it("Class:is() is false for anything but its own instances", clean(function()
    for _, v in ipairs({ "EKILLED: x", 1, true, {}, { code = "EKILLED", message = "x" },
                         print, loom.channel() }) do
      assert.is_false(loom.TaskletExit:is(v))
    end
    assert.is_false(loom.TaskletExit:is(nil))
    assert.is_false(loom.TaskletExit:is())
  end))

  it("Class:new() without a message uses the class name", clean(function()
    local ok, e = pcall(function() return loom.Timeout:new() end)
    assert.is_true(ok, tostring(e))
    assert.are.equal("ETIMEDOUT", e.code)
    assert.are.equal("Timeout", e.message)
    assert.are.equal("ETIMEDOUT: Timeout", tostring(e))
  end))

  it("Class:new(message, fields) adds the fields", clean(function()
    local e = loom.Cancelled:new("stopped", { by = "user", attempt = 3 })
    assert.are.equal("user", e.by)
    assert.are.equal(3, e.attempt)
    assert.are.equal("ECANCELED", e.code)
    assert.are.equal("stopped", e.message)
  end))

  it("an error object keeps its identity through error() and pcall", clean(function()
    local e = loom.AlreadyCalled:new("twice")
    local ok, got = pcall(error, e)
    assert.is_false(ok)
    assert.are.equal(e, got)
    local t = loom.spawn(function() error(e) end)
    local _, err = t:join()
    assert.are.equal(e, err)
  end))

  it("errors loom raises carry code, message and traceback (a kill)", clean(function()
    local t = loom.spawn(function()
      local _, err = pcall(loom.sleep, 10)
      return err
    end)
    loom.yield()
    t:kill("reason")
    local _, err = t:join()
    assert.is_true(loom.TaskletExit:is(err))
    assert.are.equal("EKILLED", err.code)
    assert.are.equal("reason", err.message)
    assert.are.equal("string", type(err.traceback), "a TaskletExit without a traceback")
  end))

  it("errors loom raises carry code, message and traceback (a deadlock)", clean(function()
    local code, out, err = H.run_stock([[
local loom = require "loom"
local ok, e = pcall(loom.run, function() loom.channel():receive() end)
print(loom.Deadlock:is(e), e.code, type(e.message), type(e.traceback))
]])
    assert.are.equal(0, code, err)
    assert.are.equal("true\tEDEADLK\tstring\tstring\n", out)
  end))
end)

describe("an error that escapes a tasklet", function()
  it("is reported once on stderr: id, name, message, traceback, spawn site", clean(function()
    local code, out, err = H.run_loom([[
local function start_worker()
  return loom.spawn(function()
    loom.sleep(0.01)
    local x = nil
    return x.field
  end)
end
local t = start_worker()
t.name = "worker"
loom.spawn(function() loom.sleep(0.03) print("others keep running") end)
loom.sleep(0.05)
print("main done", t.id)
]])
    assert.are.equal(1, code, err)
    assert.is_true(H.has(out, "others keep running"), out)
    local id = out:match("main done\t(%d+)")
    assert.is_not_nil(id, out)
    assert.are.equal(1, count(err, "attempt to index a nil value"), err)
    assert.is_true(H.has(err, "tasklet #" .. id), err)
    assert.is_true(H.has(err, "'worker'"), "the report does not name the tasklet:\n" .. err)
    assert.is_true(H.has(err, "stack traceback"), err)
    assert.is_true(H.has(err, ".lua:5:"), err) -- where it failed
    assert.is_true(H.has(err, "spawned at "), err)
    assert.matches("spawned at [^\n]*%.lua:2", err) -- the loom.spawn line
  end))

  it("is reported once even when someone joins it later", clean(function()
    local code, out, err = H.run_loom([[
local t = loom.spawn(function() error("late join") end)
loom.sleep(0.01)
print(t:join())
]])
    assert.are.equal(1, code)
    assert.are.equal(1, count(err, "late join"), err)
    assert.is_true(H.has(out, "false"), out)
  end))

  it("is not reported when the tasklet is joined, and the CLI exits 0", clean(function()
    local code, out, err = H.run_loom([[
local t = loom.spawn(function() loom.sleep(0.01) error("joined") end)
print(t:join())
]])
    assert.are.equal(0, code, err)
    assert.are.equal("", err)
    assert.is_true(H.has(out, "joined"), out)
  end))

  it("a kill is not reported, and the CLI exits 0", clean(function()
    local code, _, err = H.run_loom([[
local a = loom.spawn(function() loom.sleep(10) end)
local b = loom.spawn(function() end)
loom.yield()
a:kill()
b:kill()
]])
    assert.are.equal(0, code, err)
    assert.are.equal("", err)
  end))

  it("tables, nil, and objects whose __tostring fails are reported without crashing",
    clean(function()
      local code, out, err = H.run_loom([[
loom.spawn(function() error({ code = "X" }) end)
loom.spawn(function() error(nil) end)
loom.spawn(function() error(setmetatable({}, { __tostring = function() error("ts fails") end })) end)
loom.spawn(function() error(setmetatable({}, { __tostring = function() return 42 end })) end)
loom.spawn(function() error(setmetatable({}, { __tostring = function() return "custom text" end })) end)
loom.spawn(function() error(loom.Cancelled:new("cc")) end)
loom.spawn(function() error(print) end)
loom.sleep(0.01)
print("survived")
]])
      assert.are.equal(1, code, err)
      assert.is_true(H.has(out, "survived"), out)
      assert.are.equal(7, count(err, "loom: error in "), err)
      assert.is_true(H.has(err, "custom text"), err)
      assert.is_true(H.has(err, "ECANCELED: cc"), err)
      assert.is_false(H.has(err, "ts fails\nstack"), err)
    end))

  it("loom.on_error(fn) replaces the report; on_error(nil) restores it", clean(function()
    local code, out, err = H.run_loom([[
local e = { "handled error" }
local seen = {}
loom.on_error(function(err, where, tb) seen[#seen + 1] = { err, where, tb } end)
loom.spawn(function() error(e) end)
loom.sleep(0.01)
print("count", #seen)
print("same", seen[1][1] == e)
print("where", type(seen[1][2]))
print("tb", type(seen[1][3]) == "string" and seen[1][3]:find("spawned at", 1, true) ~= nil)
loom.on_error(nil)
loom.spawn(function() error("restored report") end)
loom.sleep(0.01)
]])
    assert.are.equal(1, code, err) -- the second one went unreported to a handler
    assert.is_true(H.has(out, "count\t1"), out)
    assert.is_true(H.has(out, "same\ttrue"), out)
    assert.is_true(H.has(out, "where\tstring"), out)
    assert.is_true(H.has(out, "tb\ttrue"), out)
    assert.is_false(H.has(err, "handled error"), err)
    assert.are.equal(1, count(err, "restored report"), err)
  end))

  it("errors handled by on_error leave the CLI's exit status at 0", clean(function()
    local code, _, err = H.run_loom([[
loom.on_error(function() end)
loom.spawn(function() error("swallowed") end)
loom.sleep(0.01)
]])
    assert.are.equal(0, code, err)
    assert.are.equal("", err)
  end))

  it("a failing on_error handler falls back to the report", clean(function()
    local code, _, err = H.run_loom([[
loom.on_error(function() error("handler broke") end)
loom.spawn(function() error("original") end)
loom.sleep(0.01)
print("alive")
]])
    assert.are.equal(1, code)
    assert.is_true(H.has(err, "handler broke"), err)
    assert.is_true(H.has(err, "original"), err)
  end))

  it("in-process: on_error receives the error value, a where and a traceback", clean(function()
    local seen = {}
    loom.on_error(function(err, where, tb) seen[#seen + 1] = { err, where, tb } end)
    local e = loom.Cancelled:new("boom")
    local t = loom.spawn(function()
      loom.sleep(0.001)
      error(e)
    end)
    H.wait_until(function() return not t:alive() end)
    loom.on_error(nil)
    assert.are.equal(1, #seen)
    assert.are.equal(e, seen[1][1])
    assert.is_true(H.has(seen[1][2], "#" .. t.id), tostring(seen[1][2]))
    assert.are.equal("string", type(seen[1][3]))
    assert.is_true(H.has(seen[1][3], "13-errors_spec.lua"), seen[1][3])
  end))
end)

describe("the CLI's exit status", function()
  it("is 1 after an unreported tasklet error, though the script succeeded", clean(function()
    local code, out = H.run_loom([[
loom.spawn(function() error("unreported") end)
print("script finished")
]])
    assert.are.equal(1, code)
    assert.is_true(H.has(out, "script finished"), out)
  end))

  it("is 0 when nothing went wrong", clean(function()
    local code, _, err = H.run_loom([[loom.spawn(function() loom.sleep(0.001) end)]])
    assert.are.equal(0, code, err)
  end))
end)
