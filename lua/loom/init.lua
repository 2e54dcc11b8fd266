-- loom: the Lua facade over the C core (loom.core).
-- The core holds the mechanism (scheduler, channels, timers, I/O); this
-- file adds the policy that reads best in Lua: loom.timeout, loom.group.
local core = require "loom.core"

local loom = {}
for k, v in pairs(core) do
  if type(k) == "string" and k:sub(1, 1) ~= "_" then
    loom[k] = v
  end
end

local pack, unpack = table.pack, table.unpack
local deadline_push, deadline_pop = core._deadline_push, core._deadline_pop

local function check_function(fn, n, name)
  if type(fn) ~= "function" then
    error(("bad argument #%d to '%s' (function expected, got %s)"):format(n, name, type(fn)), 3)
  end
end

local function check_seconds(s, n, name)
  if type(s) ~= "number" then
    error(("bad argument #%d to '%s' (number expected, got %s)"):format(n, name, type(s)), 3)
  end
  if s ~= s or s < 0 then
    error(("bad argument #%d to '%s' (seconds must be a number >= 0)"):format(n, name), 3)
  end
end

--- loom.timeout(s, fn, ...) -> fn's results, or nil, "ETIMEDOUT: ...", "ETIMEDOUT".
-- The deadline is raised as a private token at the waiting point of the
-- blocking call in progress, so that call is interrupted and unwound; any
-- other error passes through unchanged.
function loom.timeout(s, fn, ...)
  check_seconds(s, 1, "timeout")
  check_function(fn, 2, "timeout")
  local token = deadline_push(s)
  local r = pack(pcall(fn, ...))
  deadline_pop(token)
  if r[1] then
    return unpack(r, 2, r.n)
  end
  if rawequal(r[2], token) then
    return nil, "ETIMEDOUT: timed out after " .. s .. " s", "ETIMEDOUT"
  end
  error(r[2], 0)
end

-- loom.group(): structured concurrency. Members run as tasklets; wait()
-- returns true when all ended well, or false, err for the first error, after
-- killing the other members.
local Group = {}
Group.__index = Group
Group.__name = "loom.group"

function loom.group()
  return setmetatable({ members = {}, live = 0, err = nil, failed = false,
                        done = core.event() }, Group)
end

local function check_group(g, name)
  if getmetatable(g) ~= Group then
    error(("bad argument #1 to '%s' (loom.group expected, got %s)"):format(name, type(g)), 3)
  end
end

function Group:spawn(fn, ...)
  check_group(self, "spawn")
  check_function(fn, 2, "spawn")
  if self.cancelled then
    error("the group was cancelled", 2)
  end
  local t
  t = core.spawn_with(function(ok, err)
    self.members[t] = nil
    self.live = self.live - 1
    if not ok and not self.failed and not core.TaskletExit:is(err) then
      self.failed, self.err = true, err
      self:_kill_all()
    end
    if self.live == 0 then
      self.done:set()
    end
  end, fn, ...)
  self.members[t] = true
  self.live = self.live + 1
  self.done:clear()
  return t
end

function Group:_kill_all()
  check_group(self, "_kill_all")
  for t in pairs(self.members) do
    t:kill("group member killed: another member failed or the group was cancelled")
  end
end

--- g:wait([s]) -> true | false, err | nil, "ETIMEDOUT: ...", "ETIMEDOUT"
function Group:wait(s)
  check_group(self, "wait")
  if s ~= nil then check_seconds(s, 2, "wait") end
  if self.live > 0 then
    local ok, msg, code = self.done:wait(s)
    if not ok then
      return nil, msg, code
    end
  end
  if self.failed then
    return false, self.err
  end
  return true
end

function Group:cancel()
  check_group(self, "cancel")
  self.cancelled = true
  self:_kill_all()
end

-- Lua-side policy of the I/O modules: each extends the core table that
-- loom shares (loom.tcp.serve, loom.process.run).
require "loom.tcp"
require "loom.process"

-- The Deferred layer: loom.deferred, loom.Failure, the decorators...
for k, v in pairs(require "loom.deferred") do
  loom[k] = v
end

-- loom.stdin/stdout/stderr are made by the core on first access (src/stdio.c).
setmetatable(loom, { __index = function(_, k)
  if k == "stdin" or k == "stdout" or k == "stderr" then
    return core[k]
  end
end })

return loom
