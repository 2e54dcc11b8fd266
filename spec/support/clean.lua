-- spec/support/clean.lua - the cleanliness check of the reliability specs
-- (80-82): a spec ends with the live tasklets, the active libuv handles
-- (loom.stats().handles) and the open file descriptors it started with.
--
--   local clean = require "spec.support.clean"
--   local snap = clean.snapshot()
--   ... the test ...
--   clean.assert_clean(snap)          -- raises with a readable diff
--   clean.around_each(before_each, after_each)  -- around every `it`
--
-- Closing is asynchronous in libuv (a handle is freed in its close
-- callback) and some objects close only when collected, so the check
-- collects garbage and lets the loop turn for up to `settle` seconds before
-- it decides that something leaked.
local loom = require "loom"

local M = {}

local pid
local function self_pid()
  if not pid then
    local f = assert(io.open("/proc/self/stat", "r"))
    pid = tonumber(f:read("l"):match("^(%d+)"))
    f:close()
  end
  return pid
end

--- The open file descriptors of this process: a set fd -> target.
-- The listing runs in a child (os.execute) that writes to a file opened
-- only afterwards, so nothing of the listing itself shows up in it.
local listing
function M.fds()
  listing = listing or os.tmpname()
  os.execute("ls -l /proc/" .. self_pid() .. "/fd >" .. listing .. " 2>/dev/null")
  local f = assert(io.open(listing, "r"))
  local out = f:read("a")
  f:close()
  local set = {}
  for fd, target in out:gmatch("%s(%d+) %-> ([^\n]*)") do
    set[tonumber(fd)] = target
  end
  return set
end

function M.fd_count()
  local n = 0
  for _ in pairs(M.fds()) do n = n + 1 end
  return n
end

local function live_tasklets()
  local list, cur = loom.tasklets(), loom.current()
  local out = {}
  for _, t in ipairs(list) do
    if t ~= cur then out[#out + 1] = t end
  end
  return out
end

--- What a spec starts with.
function M.snapshot()
  collectgarbage()
  collectgarbage()
  local set = {}
  for _, t in ipairs(live_tasklets()) do set[t] = true end
  return { tasklets = set, ntasklets = #live_tasklets(), handles = loom.stats().handles,
           fds = M.fds() }
end

local function settle(seconds)
  collectgarbage()
  collectgarbage()
  if loom.can_block() then
    loom.sleep(seconds)
  end
end

-- Differences between a snapshot and now, as a list of lines.
local function diff(snap)
  local lines = {}
  local extra = {}
  for _, t in ipairs(live_tasklets()) do
    if not snap.tasklets[t] then extra[#extra + 1] = t end
  end
  if #extra > 0 then
    local names = {}
    for i, t in ipairs(extra) do
      if i > 10 then names[#names + 1] = "..."; break end
      names[#names + 1] = tostring(t)
    end
    lines[#lines + 1] = ("%d tasklet(s) left alive: %s"):format(#extra, table.concat(names, ", "))
  end
  local h = loom.stats().handles
  if h > snap.handles then
    lines[#lines + 1] = ("active handles: %d at the start, %d now"):format(snap.handles, h)
  end
  local now = M.fds()
  local leaked = {}
  for fd, target in pairs(now) do
    -- libuv opens /dev/null once per loop at the first listen() (its
    -- reserve fd for EMFILE in accept): not a leak.
    if snap.fds[fd] == nil and target ~= "/dev/null" then leaked[#leaked + 1] = fd .. " -> " .. target end
  end
  table.sort(leaked)
  if #leaked > 0 then
    lines[#lines + 1] = ("%d fd(s) left open: %s"):format(#leaked, table.concat(leaked, ", "))
  end
  return lines, extra
end

--- ok, message: whether the runtime is back to the snapshot, waiting up to
-- `wait` seconds (default 1) for closes and collections to complete.
-- Tasklets left alive are killed (so the next spec starts clean) after
-- they have been listed.
function M.check(snap, wait)
  wait = wait or 1
  local deadline = loom.now() + wait
  local lines, extra
  local step = 0.005
  repeat
    settle(step)
    lines, extra = diff(snap)
    step = math.min(step * 2, 0.1)
  until #lines == 0 or loom.now() >= deadline
  if #lines == 0 then
    return true
  end
  if #extra > 0 then
    lines[#lines + 1] = loom.dump()
    for _, t in ipairs(extra) do
      pcall(t.kill, t, "left alive by a spec")
    end
    settle(0.01)
  end
  return false, table.concat(lines, "\n")
end

--- Raises (an assertion failure) unless the runtime is back to the snapshot.
function M.assert_clean(snap, what, wait)
  local ok, msg = M.check(snap, wait)
  if not ok then
    error((what and (what .. ": ") or "") .. "not clean:\n" .. msg, 2)
  end
end

--- Installs the check around every test of the current describe block:
--   clean.around_each(before_each, after_each [, wait])
-- (busted's functions live in the spec file's environment, so the spec
-- hands them over).
function M.around_each(before, after, wait)
  local snap
  before(function() snap = M.snapshot() end)
  after(function() M.assert_clean(snap, nil, wait) end)
end

return M
