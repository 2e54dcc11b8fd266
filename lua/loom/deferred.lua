-- loom.deferred: Twisted-style Deferreds and Failures, the combinators built
-- on them, and the decorators that bridge callback code and tasklets
-- (SPEC section 5). Policy only: every primitive comes from loom.core.

local core = require "loom.core"

local getmetatable, setmetatable, type, select = getmetatable, setmetatable, type, select
local xpcall, pcall, error, rawget, rawequal = xpcall, pcall, error, rawget, rawequal
local tostring, pairs, tonumber = tostring, pairs, tonumber
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
  if getmetatable(self) ~= Failure then argerror(0, "check", "loom.Failure", self) end
  return check(self, "check", ...)
end

-- f:raise() raises f.value itself (level 0: no position is prepended).
function Failure:raise()
  if getmetatable(self) ~= Failure then argerror(0, "raise", "loom.Failure", self) end
  raising = self
  error(self.value, 0)
end

-- f:trap(Class...) -> like check, but re-raises the failure when nothing
-- matches, so an errback passes on failures it was not written for.
function Failure:trap(...)
  if getmetatable(self) ~= Failure then argerror(0, "trap", "loom.Failure", self) end
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
  if f.quiet then return end
  local s = d.sentinel
  if s == nil then
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

local Deferred = { __name = "loom.deferred" }
Deferred.__index = Deferred

-- The callback list is stored flat in the Deferred's own integer keys,
-- three slots per entry: callback, errback, packed extra arguments. `pos`
-- is the first unconsumed slot, `n` the last used one. An entry whose two
-- functions are CONT is a continuation: its third slot is a Deferred that
-- waits for this one's result (Twisted's _CONTINUE).
local CONT = {}

-- `paused` counts everything that keeps the chain from advancing: user
-- pauses, a wait for another Deferred, and callbacks of this Deferred
-- running right now (Twisted's _runningCallbacks).
local function new_deferred(canceller)
  return setmetatable({ called = false, paused = 0, n = 0, pos = 1, result = false,
    canceller = canceller or false }, Deferred)
end

-- Makes d wait for r: pause d and append a continuation to r. r is not
-- running its callbacks into d right now, so appending directly is safe;
-- if r is mid-chain its running loop will reach the continuation.
local function wait_on(d, r)
  d.paused = d.paused + 1
  d.result = r
  local n = r.n
  r[n + 1], r[n + 2], r[n + 3] = CONT, CONT, d
  r.n = n + 3
end

-- Takes r's final result for someone else: r keeps nil, and its failure,
-- now owned by the taker, is no longer r's to report.
local function steal(r)
  local v = r.result
  r.result = nil
  local s = r.sentinel
  if s then s.failure = nil end
  return v
end

-- Runs the callback chain of d, and of every Deferred waiting on it, with
-- an explicit stack instead of recursion (Twisted's _runCallbacks), so that
-- 100,000 chained Deferreds need no C or Lua stack depth.
local function run(d, failed)
  if d.paused ~= 0 then return end
  local cur, stack, depth = d, nil, 0
  while true do
    local result = cur.result
    local pos = cur.pos
    local moved = false
    cur.paused = 1
    while pos <= cur.n do
      local cb, eb, args = cur[pos], cur[pos + 1], cur[pos + 2]
      -- Only slots that exist are cleared: storing nil into a missing key
      -- takes the VM's slow path.
      if cb ~= nil then cur[pos] = nil end
      if eb ~= nil then cur[pos + 1] = nil end
      if args ~= nil then cur[pos + 2] = nil end
      pos = pos + 3
      if cb == CONT then
        -- Hand the result to the waiting Deferred and come back to cur
        -- (with nil) once that one is done.
        cur.pos = pos
        cur.result = nil
        cur.paused = cur.paused - 1
        local s = cur.sentinel
        if s then s.failure = nil end
        args.result = result
        args.paused = args.paused - 1
        depth = depth + 1
        if stack == nil then stack = {} end
        stack[depth] = cur
        cur = args
        failed = getmetatable(result) == Failure
        moved = true
        break
      end
      local fn
      if failed then fn = eb else fn = cb end
      if fn ~= nil then
        local ok
        if args == nil then
          ok, result = xpcall(fn, on_error, result)
        else
          ok, result = xpcall(fn, on_error, result, unpack(args, 1, args.n))
        end
        if ok then
          local mt = getmetatable(result)
          if mt == Deferred then
            if result == cur then
              failed = true
              result = new_failure("a callback returned the Deferred it was added to",
                traceback and traceback(nil, 1))
            elseif result.called and result.paused == 0 then
              result = steal(result)
              failed = getmetatable(result) == Failure
            else
              wait_on(cur, result)
              failed = false
              break
            end
          else
            failed = mt == Failure
          end
        else
          failed = true
          if getmetatable(result) ~= Failure then result = as_failure(result) end
        end
        cur.result = result
      end
    end
    if not moved then
      cur.pos = pos
      cur.paused = cur.paused - 1
      if failed then
        track(cur, result)
      else
        local s = cur.sentinel
        if s then s.failure = nil end
      end
      if depth == 0 then return end
      -- Back to a Deferred that handed its result on: finish its chain.
      cur = stack[depth]
      stack[depth] = nil
      depth = depth - 1
      failed = getmetatable(cur.result) == Failure
    end
    -- A paused Deferred holds everything waiting on it (Twisted returns
    -- here too; whatever stays queued runs at its unpause).
    if cur.paused ~= 0 then return end
  end
end

local function cancelled_failure()
  local err = Cancelled:new("the Deferred was cancelled")
  return new_failure(err, err.traceback)
end

local function already_called()
  error(AlreadyCalled:new("the Deferred has already been fired"), 3)
end

-- Fires d with v, which may be a Failure (errback chain) or, for internal
-- callers only, a Deferred to chain on.
local function fire(d, v)
  if d.called then
    if d.suppress then
      d.suppress = nil
      return
    end
    already_called()
  end
  d.called = true
  local mt = getmetatable(v)
  if mt == Deferred then
    if v.called and v.paused == 0 then
      v = steal(v)
      mt = getmetatable(v)
    else
      wait_on(d, v)
      return
    end
  end
  d.result = v
  run(d, mt == Failure)
end

-- d:callback(v): fire the callback chain with v.
function Deferred:callback(v)
  if self.called then
    if self.suppress then
      self.suppress = nil
      return
    end
    already_called()
  end
  local mt = getmetatable(v)
  if mt == Deferred then
    argerror(1, "callback", "non-Deferred value (return a Deferred from a callback to chain)", v)
  end
  self.called = true
  self.result = v
  run(self, mt == Failure)
end

-- d:errback(err): fire the errback chain with err, wrapped in a Failure
-- (with the caller's traceback) unless it is one.
function Deferred:errback(err)
  if self.called then
    if self.suppress then
      self.suppress = nil
      return
    end
    already_called()
  end
  if getmetatable(err) ~= Failure then err = new_failure(err, traceback_of(err, 2)) end
  self.called = true
  self.result = err
  run(self, true)
end

function Deferred:add_callback(fn, ...)
  if type(fn) ~= "function" and not callable(fn) then argerror(1, "add_callback", "function", fn) end
  local n = self.n
  self[n + 1] = fn
  if select("#", ...) ~= 0 then self[n + 3] = pack(...) end
  self.n = n + 3
  if self.called then run(self, getmetatable(self.result) == Failure) end
  return self
end

function Deferred:add_errback(fn, ...)
  if type(fn) ~= "function" and not callable(fn) then argerror(1, "add_errback", "function", fn) end
  local n = self.n
  self[n + 2] = fn
  if select("#", ...) ~= 0 then self[n + 3] = pack(...) end
  self.n = n + 3
  if self.called then run(self, getmetatable(self.result) == Failure) end
  return self
end

function Deferred:add_both(fn, ...)
  if type(fn) ~= "function" and not callable(fn) then argerror(1, "add_both", "function", fn) end
  local n = self.n
  self[n + 1], self[n + 2] = fn, fn
  if select("#", ...) ~= 0 then self[n + 3] = pack(...) end
  self.n = n + 3
  if self.called then run(self, getmetatable(self.result) == Failure) end
  return self
end

-- d:add_callbacks(cb, eb, ...): one step with both paths; either may be nil.
-- Extra arguments go to whichever of the two runs.
function Deferred:add_callbacks(cb, eb, ...)
  if cb ~= nil and not callable(cb) then argerror(1, "add_callbacks", "function or nil", cb) end
  if eb ~= nil and not callable(eb) then argerror(2, "add_callbacks", "function or nil", eb) end
  local n = self.n
  if cb ~= nil then self[n + 1] = cb end
  if eb ~= nil then self[n + 2] = eb end
  if select("#", ...) ~= 0 then self[n + 3] = pack(...) end
  self.n = n + 3
  if self.called then run(self, getmetatable(self.result) == Failure) end
  return self
end

local function chain_callback(r, other) other:callback(r) end
local function chain_errback(f, other) other:errback(f) end

-- d:chain_deferred(other): other fires with d's result; d continues with nil.
function Deferred:chain_deferred(other)
  if getmetatable(other) ~= Deferred then argerror(1, "chain_deferred", "loom.deferred", other) end
  return self:add_callbacks(chain_callback, chain_errback, other)
end

function Deferred:pause()
  self.paused = self.paused + 1
  return self
end

function Deferred:unpause()
  local p = self.paused
  if p == 0 then return self end
  self.paused = p - 1
  if p == 1 and self.called then run(self, getmetatable(self.result) == Failure) end
  return self
end

-- d:cancel(): see docs/deferreds.md. Unlike Twisted, the first late fire is
-- swallowed also when a canceller ran but did not fire d: a canceller that
-- cannot stop the operation should not turn its late completion into an
-- AlreadyCalled error.
function Deferred:cancel()
  if not self.called then
    local canceller = self.canceller
    if canceller then canceller(self) end
    if not self.called then
      self.suppress = true
      self.called = true
      self.result = cancelled_failure()
      run(self, true)
    end
  elseif getmetatable(self.result) == Deferred then
    -- Waiting on another Deferred: cancelling that one unblocks this one.
    self.result:cancel()
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
function Deferred:add_timeout(s)
  check_seconds(1, "add_timeout", s)
  local state = { timed_out = false }
  local h = core.call_later(s, timeout_fired, self, state)
  return self:add_both(after_timeout, h, state, s)
end

function Deferred:__tostring()
  local addr = format("%p", self)
  if not self.called then return "loom.deferred: " .. addr .. " (pending)" end
  local r = self.result
  if getmetatable(r) == Deferred then
    return "loom.deferred: " .. addr .. " (waiting on loom.deferred: " .. format("%p", r) .. ")"
  end
  local ok, s = pcall(tostring, r)
  if not ok then s = typename(r) end
  return "loom.deferred: " .. addr .. " (current result: " .. s .. ")"
end

------------------------------------------------------------------ constructors

function M.deferred(canceller)
  if canceller ~= nil and not callable(canceller) then
    argerror(1, "deferred", "function or nil", canceller)
  end
  return setmetatable({ called = false, paused = 0, n = 0, pos = 1, result = false,
    canceller = canceller or false }, Deferred)
end

function M.is_deferred(v)
  return getmetatable(v) == Deferred
end

function M.succeed(v)
  if getmetatable(v) == Deferred then argerror(1, "succeed", "non-Deferred value", v) end
  local d = new_deferred()
  d.called = true
  d.result = v
  run(d, getmetatable(v) == Failure)
  return d
end

function M.fail(err)
  local d = new_deferred()
  if getmetatable(err) ~= Failure then err = new_failure(err, traceback_of(err, 2)) end
  d.called = true
  d.result = err
  run(d, true)
  return d
end

-- maybe_deferred(fn, ...): fn's first result as a Deferred; a Deferred result
-- is returned as it is, a raise becomes a failed Deferred.
function M.maybe_deferred(fn, ...)
  check_callable(1, "maybe_deferred", fn)
  local ok, r = xpcall(fn, on_error, ...)
  if not ok then r = as_failure(r) end
  if getmetatable(r) == Deferred then return r end
  local d = new_deferred()
  d.called = true
  d.result = r
  run(d, getmetatable(r) == Failure)
  return d
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
    if getmetatable(d) ~= Deferred then
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

local function settle(d, t, ok, ...)
  d.tasklet_done = true
  if d.tasklet_cancelled then return end
  if ok then
    fire(d, (...))
  else
    fire(d, tasklet_failure(t, (...)))
  end
end

-- The canceller of a deferred_tasklet's Deferred: fire first (Cancelled),
-- then kill, since killing the current tasklet raises at once.
local function tasklet_canceller(d)
  local t = d.tasklet
  if t == nil or d.tasklet_done then return end
  d.tasklet_cancelled = true
  d:errback(cancelled_failure())
  t:kill("the Deferred was cancelled")
end

function M.deferred_tasklet(fn)
  check_callable(1, "deferred_tasklet", fn)
  return function(...)
    local d = new_deferred(tasklet_canceller)
    local t, early
    t = spawn_now(function(...)
      -- on_done may run inside spawn_now, before t is known.
      if t == nil then early = pack(...) else settle(d, t, ...) end
    end, fn, ...)
    d.tasklet = t
    if early then settle(d, t, unpack(early, 1, early.n)) end
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

local WAITING, GOT, GONE = 0, 1, 2

local function deliver(r, w)
  if w.state == WAITING then
    w.state = GOT
    w.result = r
    w.ev:set()
    return nil
  end
  -- Nobody waits any more: leave the result (and any failure) to d.
  return r
end

local Waiter = {
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
  if getmetatable(d) ~= Deferred then argerror(1, "block_on", "loom.deferred", d) end
  if d.called and d.paused == 0 and d.pos > d.n then
    return raise_result(steal(d))
  end
  local ok, why = can_block()
  if not ok then error(why, 2) end
  local w <close> = setmetatable({ state = WAITING, ev = core.event() }, Waiter)
  d:add_both(deliver, w)
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
  if lc.running then stop_with(lc, f) end
end

function tick(lc)
  lc.handle = nil
  if not lc.running then return end
  lc.calls = lc.calls + 1
  local args = lc.args
  local ok, r = xpcall(lc.fn, on_error, unpack(args, 1, args.n))
  if not ok then return stop_with(lc, as_failure(r)) end
  if not lc.running then return end
  local mt = getmetatable(r)
  if mt == Failure then return stop_with(lc, r) end
  if mt == Deferred then
    -- Wait for it before the next beat; its failure stops the loop.
    r:add_callbacks(resumed, failed_async, lc)
    return
  end
  schedule(lc)
end

function LoopingCall:stop()
  if getmetatable(self) ~= LoopingCall then argerror(0, "stop", "loom.looping_call", self) end
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
M.deferred_class = Deferred

return M
