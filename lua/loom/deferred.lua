-- loom.deferred: Twisted-style Deferreds and Failures, the combinators built
-- on them, and the decorators that bridge callback code and tasklets
-- (SPEC section 5). Policy only: every primitive comes from loom.core.

local core = require "loom.core"

local getmetatable, setmetatable, type, select = getmetatable, setmetatable, type, select
local xpcall, pcall, error, rawget, rawequal = xpcall, pcall, error, rawget, rawequal
local tostring, pairs = tostring, pairs
local pack, unpack, sort = table.pack, table.unpack, table.sort
local find, format = string.find, string.format
local floor = math.floor
-- A sandboxed runtime has no debug library; Failures then carry no traceback.
local traceback = debug and debug.traceback

local Cancelled, Timeout = core.Cancelled, core.Timeout
local AlreadyCalled, TaskletExit = core.AlreadyCalled, core.TaskletExit

local M = {}

------------------------------------------------------------------ checks

local function typename(v)
  local mt = getmetatable(v)
  if type(mt) == "table" then
    local name = rawget(mt, "__name")
    if type(name) == "string" then return name end
  end
  return type(v)
end

-- Raises the usual "bad argument" message. `level` counts from argerror's
-- caller (1 = the public function itself, so the position shown is its
-- caller's): helpers pass 2.
local function argerror(i, fname, expected, v, level)
  error(format("bad argument #%d to '%s' (%s expected, got %s)", i, fname, expected,
    typename(v)), (level or 1) + 2)
end

-- For a method called on something that is not its object, as Lua words it.
local function selferror(fname, expected, v)
  error(format("calling '%s' on bad self (%s expected, got %s)", fname, expected, typename(v)), 3)
end

local function callable(v)
  if type(v) == "function" then return true end
  local mt = getmetatable(v)
  return type(mt) == "table" and rawget(mt, "__call") ~= nil
end

local function check_callable(i, fname, v)
  if type(v) ~= "function" and not callable(v) then argerror(i, fname, "function", v, 2) end
end

local function check_seconds(i, fname, s)
  if type(s) ~= "number" then argerror(i, fname, "number", s, 2) end
  if s < 0 or s ~= s then
    error(format("bad argument #%d to '%s' (non-negative number expected, got %s)",
      i, fname, tostring(s)), 3)
  end
end

------------------------------------------------------------------ Failure

local Failure = { __name = "loom.Failure" }
Failure.__index = Failure

-- The traceback of an error: a loom error object carries the one taken where
-- it was made; anything else gets the stack at `level` (of our caller).
local function traceback_of(err, level)
  if type(err) == "table" then
    local tb = rawget(err, "traceback")
    if type(tb) == "string" then return tb end
  end
  if traceback then return traceback(nil, level + 1) end
  return nil
end

local function new_failure(value, tb)
  return setmetatable({ value = value, traceback = tb }, Failure)
end

-- Failure:raise() re-raises the bare value so that pcall sees the original
-- error; this remembers which Failure it came from, so that the message
-- handler below can hand the same Failure (same traceback) to the next
-- errback instead of wrapping the value again.
local raising = nil

-- The message handler of every protected callback call: runs at the point
-- of the error, before the stack unwinds, so the traceback shows the raise.
local function on_error(e)
  local f = raising
  raising = nil
  if f ~= nil and rawequal(f.value, e) then return f end
  if getmetatable(e) == Failure then return e end
  return setmetatable({ value = e, traceback = traceback_of(e, 2) }, Failure)
end

-- xpcall's second result when the handler itself failed (out of memory,
-- C stack overflow) is not a Failure yet.
local function as_failure(r)
  if getmetatable(r) == Failure then return r end
  return new_failure(r, nil)
end

-- Text a string pattern is matched against: the error itself when it is a
-- string or number, else its __tostring when it has one.
local function error_text(v)
  local tv = type(v)
  if tv == "string" then return v end
  if tv == "number" then return tostring(v) end
  local mt = getmetatable(v)
  if type(mt) == "table" and rawget(mt, "__tostring") ~= nil then
    local ok, s = pcall(tostring, v)
    if ok and type(s) == "string" then return s end
  end
  return nil
end

local function matches(fname, i, c, v)
  local tc = type(c)
  if tc == "table" then
    local is = c.is
    if type(is) == "function" then return is(c, v) and true or false end
    -- A plain class table: instances carry it as their metatable.
    return getmetatable(v) == c
  elseif tc == "string" then
    if type(v) == "table" and rawget(v, "code") == c then return true end
    local text = error_text(v)
    return text ~= nil and find(text, c) ~= nil
  end
  argerror(i, fname, "error class or string", c, 3)
end

local function check(self, fname, ...)
  local v = self.value
  for i = 1, select("#", ...) do
    local c = select(i, ...)
    if matches(fname, i, c, v) then return c end
  end
  return nil
end

-- f:check(Class...) -> the first argument that matches f.value, or nil.
function Failure:check(...)
  if getmetatable(self) ~= Failure then selferror("check", "loom.Failure", self) end
  return check(self, "check", ...)
end

-- f:raise() raises f.value itself (level 0: no position is prepended).
function Failure:raise()
  if getmetatable(self) ~= Failure then selferror("raise", "loom.Failure", self) end
  raising = self
  error(self.value, 0)
end

-- f:trap(Class...) -> like check, but re-raises the failure when nothing
-- matches, so an errback passes on failures it was not written for.
function Failure:trap(...)
  if getmetatable(self) ~= Failure then selferror("trap", "loom.Failure", self) end
  local c = check(self, "trap", ...)
  if c == nil then
    raising = self
    error(self.value, 0)
  end
  return c
end

function Failure.__tostring(f)
  local ok, s = pcall(tostring, f.value)
  if ok and type(s) == "string" then return s end
  return "(error object is a " .. typename(f.value) .. " value)"
end

-- Failure:is(v): whether v is a Failure.
function Failure.is(_, v)
  return getmetatable(v) == Failure
end

-- loom.Failure(value [, traceback]) wraps any error value; without a
-- traceback it takes the caller's stack (or the value's own, if it has one).
setmetatable(Failure, {
  __call = function(_, value, tb)
    if tb ~= nil and type(tb) ~= "string" then argerror(2, "Failure", "string", tb) end
    if getmetatable(value) == Failure and tb == nil then return value end
    return new_failure(value, tb or traceback_of(value, 2))
  end,
})

------------------------------------------------------------------ reporting

-- A Deferred whose chain ends in a failure holds a sentinel with __gc (the
-- Deferred itself has none: a finalizer on every Deferred would cost the
-- hot path a lot). The sentinel dies with its Deferred and reports the
-- failure it still holds; clearing `failure` marks it handled.
local pending = setmetatable({}, { __mode = "k" })
local serial = 0

local function report(f)
  local ok = pcall(core.report_error, f, "Unhandled error in Deferred")
  if not ok and io and io.stderr then
    pcall(io.stderr.write, io.stderr, "Unhandled error in Deferred: ", tostring(f), "\n",
      tostring(f.traceback), "\n")
  end
end

local Sentinel = {
  __gc = function(s)
    local f = s.failure
    if f ~= nil then
      s.failure = nil
      pending[s] = nil
      report(f)
    end
  end,
}

local function track(d, f)
  local s = d.sentinel
  if f.quiet then
    -- A kill is not an error; whatever d held before was handled.
    if s then s.failure = nil end
    return
  end
  if not s then
    serial = serial + 1
    s = setmetatable({ serial = serial }, Sentinel)
    d.sentinel = s
    pending[s] = true
  end
  s.failure = f
end

-- Whatever a runtime still holds at shutdown is reported in creation order.
if core.on_shutdown then
  core.on_shutdown(function()
    local list = {}
    for s in pairs(pending) do
      if s.failure ~= nil then list[#list + 1] = s end
    end
    sort(list, function(a, b) return a.serial < b.serial end)
    for i = 1, #list do
      local s = list[i]
      local f = s.failure
      s.failure = nil
      pending[s] = nil
      if f ~= nil then report(f) end
    end
  end)
end

------------------------------------------------------------------ Deferred

-- A Deferred keeps its state in the array part of its table, which Lua
-- allocates in one piece and far more cheaply than named fields:
--   [1] the current result (UNFIRED until fired; the awaited Deferred while
--       waiting on one; nil once handed to a Deferred waiting on this one)
--   [2] hold: how many things keep the chain from advancing (user pauses,
--       the wait for another Deferred, its own callbacks running now:
--       Twisted's paused and _runningCallbacks in one counter)
--   [3] the last used slot of the callback list
--   [4...] the callback list, two slots an entry, always starting at [4]:
--       (fn, CB | EB | BOTH), (false, {cb=, eb=, args=}) with extra
--       arguments or two functions, or (waiting Deferred, CONT).
-- Unused preallocated slots hold false, not nil: storing into an array slot
-- that holds nil takes the VM's slow path.
-- Named fields (canceller, suppress, sentinel, tasklet...) exist only when
-- used; the class tables hold their defaults. `called` is public, so it is
-- a class field too: firing swaps the metatable from Pending to Fired.
-- (One declaration each: Lua folds only the last name of a list.)
local RESULT <const> = 1
local HOLD <const> = 2
local LAST <const> = 3
local FIRST <const> = 4
local CONT <const> = 0
local CB <const> = 1
local EB <const> = 2
local BOTH <const> = 3
-- An outcome computed outside the loop (by callback()'s fast path), to be
-- treated as if a callback had just returned (OK) or raised (ERR) it.
local OUTCOME_OK <const> = 4
local OUTCOME_ERR <const> = 5

local UNFIRED = setmetatable({}, { __name = "loom.unfired" })

local D = {}    -- the methods, copied into both classes below
local Pending = { __name = "loom.deferred", called = false, canceller = false,
  suppress = false, sentinel = false, pauses = 0 }
local Fired = { __name = "loom.deferred", called = true, canceller = false,
  suppress = false, sentinel = false, pauses = 0 }

local function is_deferred(v)
  local mt = getmetatable(v)
  return mt == Pending or mt == Fired
end

local function self_failure()
  return new_failure("a callback returned the Deferred it was added to",
    traceback and traceback(nil, 2))
end

-- Moves the entries still queued at pos... down to FIRST, so that a chain
-- that stops part-way (waiting, paused) needs no separate read position.
local function compact(d, pos)
  local last = d[LAST]
  local j = FIRST
  for i = pos, last do
    d[j] = d[i]
    j = j + 1
  end
  for i = j, last do d[i] = nil end
  d[LAST] = j - 1
end

-- Appends a continuation: when r's chain reaches it, d continues with r's
-- result. d is paused until then.
local function wait_on(d, r)
  d[HOLD] = d[HOLD] + 1
  d[RESULT] = r
  local n = r[LAST]
  r[n + 1], r[n + 2] = d, CONT
  r[LAST] = n + 2
end

-- Takes r's final result for someone else: r keeps nil, and its failure,
-- now owned by the taker, is no longer r's to report.
local function steal(r)
  local v = r[RESULT]
  r[RESULT] = nil
  local s = r.sentinel
  if s then s.failure = nil end
  return v
end

-- Runs the callback chain of d, and of every Deferred waiting on it, with
-- an explicit stack instead of recursion (Twisted's _runCallbacks), so that
-- 100,000 chained Deferreds need no C or Lua stack depth. `failed` tells
-- whether d's current result is a Failure.
local function run(d, failed)
  if d[HOLD] ~= 0 then return end
  -- Only d can hold a reported failure at the start: a Deferred that waited
  -- (or handed its result on) had no failure at rest.
  local started_failed = failed
  local cur, stack, depth = d, nil, 0
  while true do
    local result = cur[RESULT]
    local pos = FIRST
    local waiter = nil
    cur[HOLD] = cur[HOLD] + 1
    while pos <= cur[LAST] do
      local a, b = cur[pos], cur[pos + 1]
      cur[pos], cur[pos + 1] = nil, nil
      pos = pos + 2
      local ok
      if b == CB then
        if failed then goto continue end
        ok, result = xpcall(a, on_error, result)
      elseif b == EB then
        if not failed then goto continue end
        ok, result = xpcall(a, on_error, result)
      elseif b == BOTH then
        ok, result = xpcall(a, on_error, result)
      elseif b == CONT then
        waiter = a
        break
      elseif b == OUTCOME_OK then
        ok, result = true, a
      elseif b == OUTCOME_ERR then
        ok, result = false, a
      else
        local fn
        if failed then fn = b.eb else fn = b.cb end
        if not fn then goto continue end
        local args = b.args
        if args == nil then
          ok, result = xpcall(fn, on_error, result)
        else
          ok, result = xpcall(fn, on_error, result, unpack(args, 1, args.n))
        end
      end
      if ok then
        local mt = getmetatable(result)
        if mt == Failure then
          failed = true
        elseif mt == Fired or mt == Pending then
          if result == cur then
            failed = true
            result = self_failure()
          elseif mt == Fired and result[HOLD] == 0 then
            result = steal(result)
            failed = getmetatable(result) == Failure
          else
            -- Not ready: the rest of cur's chain runs when it fires.
            wait_on(cur, result)
            failed = false
            break
          end
        else
          failed = false
        end
      else
        failed = true
        if getmetatable(result) ~= Failure then result = as_failure(result) end
      end
      ::continue::
    end
    if pos > cur[LAST] then cur[LAST] = FIRST - 1 else compact(cur, pos) end
    cur[HOLD] = cur[HOLD] - 1
    if waiter then
      -- Hand the result to the Deferred waiting on cur; cur finishes its
      -- own chain (with nil) after that one is done.
      cur[RESULT] = nil
      local s = cur.sentinel
      if s then s.failure = nil end
      waiter[RESULT] = result
      waiter[HOLD] = waiter[HOLD] - 1
      depth = depth + 1
      if stack == nil then stack = {} end
      stack[depth] = cur
      cur = waiter
      failed = getmetatable(result) == Failure
    else
      cur[RESULT] = result
      if failed then
        track(cur, result)
      elseif started_failed and cur == d then
        local s = cur.sentinel
        if s then s.failure = nil end
      end
      if depth == 0 then return end
      cur = stack[depth]
      stack[depth] = nil
      depth = depth - 1
      failed = false
    end
    -- A held Deferred holds everything waiting on it (as in Twisted);
    -- whatever stays queued runs at its unpause.
    if cur[HOLD] ~= 0 then return end
  end
end

local function cancelled_failure()
  local err = Cancelled:new("the Deferred was cancelled")
  return new_failure(err, err.traceback)
end

-- A fire after the first: swallowed once after cancel(), else an error.
local function late_fire(d)
  if d.suppress then
    d.suppress = false
    return
  end
  error(AlreadyCalled:new("the Deferred has already been fired"), 3)
end

-- Fires d with v, which may be a Failure (errback chain) or, for internal
-- callers only, a Deferred to chain on.
local function fire(d, v)
  if d[RESULT] ~= UNFIRED then return late_fire(d) end
  setmetatable(d, Fired)
  local mt = getmetatable(v)
  if mt == Pending or mt == Fired then
    if mt == Fired and v[HOLD] == 0 then
      v = steal(v)
      mt = getmetatable(v)
    else
      wait_on(d, v)
      return
    end
  end
  d[RESULT] = v
  run(d, mt == Failure)
end

-- d:callback(v): fire the callback chain with v.
function D:callback(v)
  if self[RESULT] ~= UNFIRED then return late_fire(self) end
  local mt = getmetatable(v)
  setmetatable(self, Fired)
  if mt ~= nil then
    if mt == Pending or mt == Fired then
      setmetatable(self, Pending)
      argerror(1, "callback", "non-Deferred value (return a Deferred from a callback to chain)", v)
    end
    self[RESULT] = v
    return run(self, mt == Failure)
  end
  self[RESULT] = v
  if self[LAST] ~= FIRST + 1 or self[FIRST + 1] ~= CB or self[HOLD] ~= 0 then
    return run(self, false)
  end
  -- The common shape (one plain callback, nothing held) without the
  -- general loop; any other outcome is left at the head of the chain for
  -- run() to take up exactly where the loop would have been.
  self[HOLD] = 1
  local ok, r = xpcall(self[FIRST], on_error, v)
  local h = self[HOLD] - 1
  self[HOLD] = h
  if ok and h == 0 and self[LAST] == FIRST + 1 and getmetatable(r) == nil then
    self[FIRST], self[FIRST + 1] = false, false
    self[LAST] = FIRST - 1
    self[RESULT] = r
    return
  end
  self[FIRST] = r
  if ok then self[FIRST + 1] = OUTCOME_OK else self[FIRST + 1] = OUTCOME_ERR end
  if h == 0 then run(self, false) end
end

-- d:errback(err): fire the errback chain with err, wrapped in a Failure
-- (with the caller's traceback) unless it is one.
function D:errback(err)
  if self[RESULT] ~= UNFIRED then return late_fire(self) end
  if getmetatable(err) ~= Failure then err = new_failure(err, traceback_of(err, 2)) end
  setmetatable(self, Fired)
  self[RESULT] = err
  run(self, true)
end

-- The last function that passed add_callback's type check: named callbacks
-- are added again and again, and a C call per add is a fifth of W7's cost.
-- Weak, so it never keeps a closure alive.
local last_checked = setmetatable({ false }, { __mode = "v" })

-- The add_* methods: append an entry; on a fired Deferred it runs at once
-- (unless the chain is held).
function D:add_callback(fn, ...)
  if fn == nil or fn ~= last_checked[1] then
    if type(fn) ~= "function" and not callable(fn) then argerror(1, "add_callback", "function", fn) end
    last_checked[1] = fn
  end
  local n = self[LAST]
  if select("#", ...) == 0 then
    self[n + 1], self[n + 2] = fn, CB
  else
    self[n + 1], self[n + 2] = false, { cb = fn, args = pack(...) }
  end
  self[LAST] = n + 2
  local r = self[RESULT]
  if r ~= UNFIRED then run(self, getmetatable(r) == Failure) end
  return self
end

function D:add_errback(fn, ...)
  if fn == nil or fn ~= last_checked[1] then
    if type(fn) ~= "function" and not callable(fn) then argerror(1, "add_errback", "function", fn) end
    last_checked[1] = fn
  end
  local n = self[LAST]
  if select("#", ...) == 0 then
    self[n + 1], self[n + 2] = fn, EB
  else
    self[n + 1], self[n + 2] = false, { eb = fn, args = pack(...) }
  end
  self[LAST] = n + 2
  local r = self[RESULT]
  if r ~= UNFIRED then run(self, getmetatable(r) == Failure) end
  return self
end

function D:add_both(fn, ...)
  if fn == nil or fn ~= last_checked[1] then
    if type(fn) ~= "function" and not callable(fn) then argerror(1, "add_both", "function", fn) end
    last_checked[1] = fn
  end
  local n = self[LAST]
  if select("#", ...) == 0 then
    self[n + 1], self[n + 2] = fn, BOTH
  else
    self[n + 1], self[n + 2] = false, { cb = fn, eb = fn, args = pack(...) }
  end
  self[LAST] = n + 2
  local r = self[RESULT]
  if r ~= UNFIRED then run(self, getmetatable(r) == Failure) end
  return self
end

-- d:add_callbacks(cb, eb, ...): one step with both paths; either may be nil.
-- Extra arguments go to whichever of the two runs.
function D:add_callbacks(cb, eb, ...)
  if cb ~= nil and not callable(cb) then argerror(1, "add_callbacks", "function or nil", cb) end
  if eb ~= nil and not callable(eb) then argerror(2, "add_callbacks", "function or nil", eb) end
  local n = self[LAST]
  local args = nil
  if select("#", ...) ~= 0 then args = pack(...) end
  self[n + 1], self[n + 2] = false, { cb = cb, eb = eb, args = args }
  self[LAST] = n + 2
  local r = self[RESULT]
  if r ~= UNFIRED then run(self, getmetatable(r) == Failure) end
  return self
end

local function chain_callback(r, other) other:callback(r) end
local function chain_errback(f, other) other:errback(f) end

-- d:chain_deferred(other): other fires with d's result; d continues with nil.
function D:chain_deferred(other)
  if not is_deferred(other) then argerror(1, "chain_deferred", "loom.deferred", other) end
  return self:add_callbacks(chain_callback, chain_errback, other)
end

-- User pauses are also counted apart (`pauses`), so that an unpause
-- without its pause cannot release the hold of a wait or a running chain.
function D:pause()
  self.pauses = self.pauses + 1
  self[HOLD] = self[HOLD] + 1
  return self
end

function D:unpause()
  local p = self.pauses
  if p == 0 then return self end
  self.pauses = p - 1
  local h = self[HOLD]
  self[HOLD] = h - 1
  local r = self[RESULT]
  if h == 1 and r ~= UNFIRED then run(self, getmetatable(r) == Failure) end
  return self
end

-- d:cancel(): see docs/deferreds.md. Unlike Twisted, the first late fire is
-- swallowed also when a canceller ran but did not fire d: a canceller that
-- cannot stop the operation should not turn its late completion into an
-- AlreadyCalled error.
function D:cancel()
  local r = self[RESULT]
  if r == UNFIRED then
    local canceller = self.canceller
    if canceller then canceller(self) end
    if self[RESULT] == UNFIRED then
      self.suppress = true
      setmetatable(self, Fired)
      self[RESULT] = cancelled_failure()
      run(self, true)
    end
  elseif is_deferred(r) then
    -- Waiting on another Deferred: cancelling that one unblocks this one.
    r:cancel()
  end
end

local function timeout_fired(d, state)
  state.timed_out = true
  d:cancel()
end

local function after_timeout(r, h, state, s)
  if h:active() then h:cancel() end
  if state.timed_out and getmetatable(r) == Failure and Cancelled:is(r.value) then
    local err = Timeout:new(format("the Deferred timed out after %g s", s))
    return new_failure(err, err.traceback)
  end
  return r
end

-- d:add_timeout(s): cancel d after s seconds; a cancellation caused by the
-- timeout reaches the chain as a loom.Timeout failure. The timer stops as
-- soon as d fires.
function D:add_timeout(s)
  if not is_deferred(self) then
    error(("bad argument #1 to 'add_timeout' (loom.deferred expected, got %s)"):format(type(self)), 2)
  end
  check_seconds(1, "add_timeout", s)
  local state = { timed_out = false }
  local h = core.call_later(s, timeout_fired, self, state)
  return self:add_both(after_timeout, h, state, s)
end

local function deferred_tostring(d)
  local addr = format("%p", d)
  local r = d[RESULT]
  if r == UNFIRED then return "loom.deferred: " .. addr .. " (pending)" end
  if is_deferred(r) then
    return "loom.deferred: " .. addr .. " (waiting on loom.deferred: " .. format("%p", r) .. ")"
  end
  local ok, s = pcall(tostring, r)
  if not ok then s = typename(r) end
  return "loom.deferred: " .. addr .. " (current result: " .. s .. ")"
end

-- Every method checks its self first: a method called on something that is
-- not a Deferred raises "bad argument", never "attempt to index". Methods
-- call each other through D's originals, so the check runs once per call.
for k, f in pairs(D) do
  D[k] = function(self, ...)
    if not is_deferred(self) then
      error(("bad argument #1 to '%s' (loom.deferred expected, got %s)"):format(k, typename(self)), 2)
    end
    return f(self, ...)
  end
end

for k, v in pairs(D) do
  Pending[k] = v
  Fired[k] = v
end
Pending.__index, Fired.__index = Pending, Fired
Pending.__tostring, Fired.__tostring = deferred_tostring, deferred_tostring

local function new_deferred(canceller)
  local d = setmetatable({ UNFIRED, 0, FIRST - 1, false, false }, Pending)
  if canceller then d.canceller = canceller end
  return d
end

------------------------------------------------------------------ constructors

-- loom.deferred([canceller]). The constructor presizes the array part for
-- the first callback entry, so W7's create/add/fire never rehashes.
function M.deferred(canceller)
  if canceller == nil then
    return setmetatable({ UNFIRED, 0, FIRST - 1, false, false }, Pending)
  end
  if not callable(canceller) then argerror(1, "deferred", "function or nil", canceller) end
  return new_deferred(canceller)
end

M.is_deferred = is_deferred

local function fired_with(v, failed)
  local d = setmetatable({ v, 0, FIRST - 1, false, false }, Fired)
  run(d, failed)
  return d
end

function M.succeed(v)
  if is_deferred(v) then argerror(1, "succeed", "non-Deferred value", v) end
  return fired_with(v, getmetatable(v) == Failure)
end

function M.fail(err)
  if getmetatable(err) ~= Failure then err = new_failure(err, traceback_of(err, 2)) end
  return fired_with(err, true)
end

-- maybe_deferred(fn, ...): fn's first result as a Deferred; a Deferred result
-- is returned as it is, a raise becomes a failed Deferred.
function M.maybe_deferred(fn, ...)
  check_callable(1, "maybe_deferred", fn)
  local ok, r = xpcall(fn, on_error, ...)
  if not ok then r = as_failure(r) end
  if is_deferred(r) then return r end
  return fired_with(r, getmetatable(r) == Failure)
end

------------------------------------------------------------------ lists

-- The failure a list fires with on its first failing input: the same value
-- and traceback, plus which input failed (Twisted's FirstError, flattened
-- so that f:check(loom.Timeout) still sees the original error).
local function first_failure(f, i)
  local ff = new_failure(f.value, f.traceback)
  ff.index = i
  ff.sub_failure = f
  ff.quiet = f.quiet
  return ff
end

local function list_callback(r, st, i)
  st.results[i] = { true, r }
  st.finished = st.finished + 1
  local list = st.list
  if not list.called then
    if st.fire_on_one_callback then
      list:callback({ r, i })
    elseif st.finished == st.count then
      list:callback(st.results)
    end
  end
  return r
end

local function list_errback(f, st, i)
  st.results[i] = { false, f }
  st.finished = st.finished + 1
  local list = st.list
  if not list.called then
    if st.fire_on_one_errback then
      list:errback(first_failure(f, i))
    elseif st.finished == st.count then
      list:callback(st.results)
    end
  end
  if st.consume_errors then return nil end
  return f
end

-- Cancelling a list cancels every input; one canceller raising does not
-- stop the others (the error is reported).
local function list_canceller(list)
  local inputs = list.inputs
  for i = 1, #inputs do
    local ok, err = xpcall(inputs[i].cancel, on_error, inputs[i])
    if not ok then
      pcall(core.report_error, as_failure(err), "Error cancelling a Deferred of a deferred_list")
    end
  end
end

local function check_list(fname, ds, opts)
  if type(ds) ~= "table" then argerror(1, fname, "table", ds, 2) end
  if opts ~= nil and type(opts) ~= "table" then argerror(2, fname, "table or nil", opts, 2) end
  local n = #ds
  local inputs = {}
  for i = 1, n do
    local d = ds[i]
    if not is_deferred(d) then
      error(format("bad argument #1 to '%s' (array of loom.deferred expected, got %s at index %d)",
        fname, typename(d), i), 3)
    end
    inputs[i] = d
  end
  return inputs, n
end

local function make_list(inputs, n, foc, foe, consume)
  local list = new_deferred(list_canceller)
  list.inputs = inputs
  local st = { list = list, results = {}, count = n, finished = 0,
    fire_on_one_callback = foc, fire_on_one_errback = foe, consume_errors = consume }
  if n == 0 and not foc then list:callback(st.results) end
  for i = 1, n do
    inputs[i]:add_callbacks(list_callback, list_errback, st, i)
  end
  return list
end

function M.deferred_list(ds, opts)
  local inputs, n = check_list("deferred_list", ds, opts)
  opts = opts or {}
  return make_list(inputs, n, opts.fire_on_one_callback and true or false,
    opts.fire_on_one_errback and true or false, opts.consume_errors and true or false)
end

local function gathered(results)
  local out = { n = #results }
  for i = 1, #results do out[i] = results[i][2] end
  return out
end

-- gather(ds [, opts]): the results array (with its n), or the first failure.
-- Unlike Twisted, consume_errors defaults to true: the first failure goes on
-- in the gathered Deferred, so leaving it on its input too would report it
-- twice.
function M.gather(ds, opts)
  local inputs, n = check_list("gather", ds, opts)
  local consume = true
  if opts and opts.consume_errors == false then consume = false end
  return make_list(inputs, n, false, true, consume):add_callback(gathered)
end

------------------------------------------------------------------ decorators

local spawn_now, can_block = core.spawn_now, core.can_block

-- A tasklet that raised or was killed: the Failure carries the tasklet's
-- death traceback unless the error brought its own.
local function tasklet_failure(t, err)
  local f
  if getmetatable(err) == Failure then
    f = err
  elseif raising ~= nil and rawequal(raising.value, err) then
    f = raising
    raising = nil
  else
    local tb
    if type(err) == "table" then tb = rawget(err, "traceback") end
    if type(tb) ~= "string" and t ~= nil then tb = t:traceback() end
    f = new_failure(err, tb)
  end
  if TaskletExit:is(err) then f.quiet = true end
  return f
end

-- The tasklet ended: fire d with fn's first result (or failure).
local function settle(d, t, ok, v)
  d.tasklet_done = true
  if d.tasklet_cancelled then return end
  if ok then
    fire(d, v)
  else
    fire(d, tasklet_failure(t, v))
  end
end

-- The canceller of a deferred_tasklet's Deferred: fire first (Cancelled),
-- then kill, since killing the current tasklet raises at once.
local function tasklet_canceller(d)
  local t = d.tasklet
  if not t or d.tasklet_done then return end
  d.tasklet_cancelled = true
  d:errback(cancelled_failure())
  t:kill("the Deferred was cancelled")
end

function M.deferred_tasklet(fn)
  check_callable(1, "deferred_tasklet", fn)
  return function(...)
    -- Its named fields presized in one go: three separate insertions would
    -- each grow the hash part.
    local d = setmetatable({ UNFIRED, 0, FIRST - 1, false, false, canceller = tasklet_canceller,
      tasklet = false, tasklet_done = false, tasklet_cancelled = false }, Pending)
    local t, early, early_ok, early_v
    t = spawn_now(function(ok, v)
      -- on_done may run inside spawn_now, before t is known.
      if t == nil then
        early, early_ok, early_v = true, ok, v
      else
        settle(d, t, ok, v)
      end
    end, fn, ...)
    d.tasklet = t
    if early then settle(d, t, early_ok, early_v) end
    return d
  end
end

local function noop() end

-- Ends an abandoned wait: kills the child when the caller unwinds (killed,
-- timed out by loom.timeout, deadlocked) before the child finished.
local KillOnClose = {
  __close = function(g)
    local t = g.t
    if t:alive() then t:kill("the caller of a blocking_tasklet stopped waiting") end
  end,
}

local function finish(t, ok, ...)
  if ok then return ... end
  local err = ...
  if type(err) == "table" and getmetatable(err) ~= Failure and rawget(err, "traceback") == nil then
    err.traceback = t:traceback()
  end
  error(err, 0)
end

function M.blocking_tasklet(fn)
  check_callable(1, "blocking_tasklet", fn)
  return function(...)
    local ok, why = can_block()
    if not ok then error(why, 2) end
    -- noop as on_done: the error goes to us through join, never to the
    -- unhandled-error report.
    local t = spawn_now(noop, fn, ...)
    if t:alive() then
      local guard <close> = setmetatable({ t = t }, KillOnClose)
      return finish(t, t:join())
    end
    return finish(t, t:join())
  end
end

local WAITING <const> = 0
local GOT <const> = 1
local GONE <const> = 2

-- A block_on waiter is itself the callback it adds (callable, so no
-- packed arguments), and a to-be-closed variable that marks the wait
-- abandoned when the waiting tasklet unwinds.
local Waiter = {
  __call = function(w, r)
    if w.state == WAITING then
      w.state = GOT
      w.result = r
      w.ev:set()
      return nil
    end
    -- Nobody waits any more: leave the result (and any failure) to d.
    return r
  end,
  __close = function(w)
    if w.state == WAITING then w.state = GONE end
  end,
}

local function raise_result(r)
  if getmetatable(r) == Failure then
    local v = r.value
    if type(v) == "table" and getmetatable(v) ~= Failure and rawget(v, "traceback") == nil then
      v.traceback = r.traceback
    end
    raising = r
    error(v, 0)
  end
  return r
end

-- block_on(d): d's result, or its failure's error raised. Consumes the
-- result: d continues with nil (as after Twisted's inlineCallbacks).
function M.block_on(d)
  if not is_deferred(d) then argerror(1, "block_on", "loom.deferred", d) end
  -- Fired, not held, nothing queued: the result is final, take it now.
  if d[RESULT] ~= UNFIRED and d[HOLD] == 0 and d[LAST] < FIRST then
    return raise_result(steal(d))
  end
  local ok, why = can_block()
  if not ok then error(why, 2) end
  local w <close> = setmetatable({ state = WAITING, ev = core.event(), result = false }, Waiter)
  local n = d[LAST]
  d[n + 1], d[n + 2] = w, BOTH
  d[LAST] = n + 2
  local r = d[RESULT]
  if r ~= UNFIRED then run(d, getmetatable(r) == Failure) end
  if w.state == WAITING then
    local r, msg = w.ev:wait()
    if r == nil or w.state ~= GOT then
      error(msg or "block_on: the wait ended without a result", 2)
    end
  end
  return raise_result(w.result)
end

------------------------------------------------------------------ looping_call

local LoopingCall = { __name = "loom.looping_call" }
LoopingCall.__index = LoopingCall

local tick

local function schedule(lc)
  local s = lc.interval
  local delay = 0
  if s > 0 then
    -- Keep to the grid start + k*s, skipping beats that a slow fn missed.
    local now = core.now()
    local k = floor((now - lc.start) / s) + 1
    delay = lc.start + k * s - now
  end
  lc.handle = core.call_later(delay, tick, lc)
end

local function stop_with(lc, f)
  lc.running = false
  lc.handle = nil
  pcall(core.report_error, f, "Unhandled error in looping_call")
end

local function resumed(_, lc)
  if lc.running then schedule(lc) end
end

local function failed_async(f, lc)
  -- Stopped meanwhile: the failure stays on the Deferred (reported if
  -- nobody handles it) rather than vanish here.
  if not lc.running then return f end
  stop_with(lc, f)
end

function tick(lc)
  lc.handle = nil
  if not lc.running then return end
  lc.calls = lc.calls + 1
  local args = lc.args
  local ok, r = xpcall(lc.fn, on_error, unpack(args, 1, args.n))
  if not ok then return stop_with(lc, as_failure(r)) end
  if not lc.running then return end
  if getmetatable(r) == Failure then return stop_with(lc, r) end
  if is_deferred(r) then
    -- Wait for it before the next beat; its failure stops the loop.
    r:add_callbacks(resumed, failed_async, lc)
    return
  end
  schedule(lc)
end

function LoopingCall:stop()
  if getmetatable(self) ~= LoopingCall then selferror("stop", "loom.looping_call", self) end
  self.running = false
  local h = self.handle
  self.handle = nil
  if h then h:cancel() end
end

function LoopingCall:__tostring()
  return format("loom.looping_call: %p (every %g s, %s, %d calls)", self, self.interval,
    self.running and "running" or "stopped", self.calls)
end

function M.looping_call(s, fn, ...)
  check_seconds(1, "looping_call", s)
  check_callable(2, "looping_call", fn)
  local lc = setmetatable({ interval = s, fn = fn, args = pack(...), running = true,
    calls = 0, start = core.now() }, LoopingCall)
  schedule(lc)
  return lc
end

M.Failure = Failure

return M
