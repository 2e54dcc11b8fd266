-- spec/helper.lua - shared helpers for the core specs (10-15, 20).
--
-- Load with `local H = require "spec.helper"` (the specs run from the
-- repository root, so ./?.lua finds it).
--
-- The rule every example keeps (STYLE rule 10): it ends with no live
-- tasklet, no pending timer, no active handle and no extra descriptor of its
-- own. `H.clean(fn)` wraps an example body: it takes a snapshot first, runs
-- the body and then proves the runtime is back where it was. When the body
-- fails, or leaves work behind, the leftovers are killed and joined so that
-- one broken example cannot break the ones after it.
local loom = require "loom"

local H = {}

-- The loom binary under test (the CLI specs and child-process scenarios).
H.bin = os.getenv("LOOM_BIN") or "build/loom"

-- The directory of the build that holds lib/loom/core.so, for a stock
-- lua5.4 child that does `require "loom"`.
H.build_dir = H.bin:match("^(.*)/[^/]*$") or "."

------------------------------------------------------------------ counting

-- Our pipes and sockets: other descriptors (files busted leaves to the
-- garbage collector) would make a plain count flicker.
function H.fd_count()
  local ok, lfs = pcall(require, "lfs")
  if not ok then
    return 0
  end
  local n = 0
  for f in lfs.dir("/proc/self/fd") do
    local target = lfs.symlinkattributes("/proc/self/fd/" .. f, "target")
    if target and (target:match("^socket:") or target:match("^pipe:")) then
      n = n + 1
    end
  end
  return n
end

function H.snapshot()
  local live = {}
  for _, t in ipairs(loom.tasklets()) do
    live[t] = true
  end
  local s = loom.stats()
  return { live = live, handles = s.handles, timers = s.timers, fds = H.fd_count() }
end

-- Tasklets alive now that were not in the snapshot.
function H.new_tasklets(snap)
  local extra = {}
  for _, t in ipairs(loom.tasklets()) do
    if not snap.live[t] then
      extra[#extra + 1] = t
    end
  end
  return extra
end

-- Describes what is left over since snap, or returns nil when clean.
function H.leftovers(snap)
  local problems = {}
  local extra = H.new_tasklets(snap)
  if #extra > 0 then
    local names = {}
    for _, t in ipairs(extra) do
      names[#names + 1] = tostring(t)
    end
    problems[#problems + 1] = #extra .. " live tasklet(s): " .. table.concat(names, ", ")
  end
  local s = loom.stats()
  if s.timers ~= snap.timers then
    problems[#problems + 1] = ("timers %d -> %d"):format(snap.timers, s.timers)
  end
  if s.handles ~= snap.handles then
    problems[#problems + 1] = ("handles %d -> %d"):format(snap.handles, s.handles)
  end
  local fds = H.fd_count()
  if fds ~= snap.fds then
    problems[#problems + 1] = ("pipes/sockets %d -> %d"):format(snap.fds, fds)
  end
  if #problems == 0 then
    return nil
  end
  return table.concat(problems, "; ")
end

-- Kills and joins whatever the example left (so the next one starts clean).
function H.cleanup(snap)
  local extra = H.new_tasklets(snap)
  for _, t in ipairs(extra) do
    t:kill("spec cleanup")
  end
  for _, t in ipairs(extra) do
    if t:alive() and t ~= loom.current() then
      t:join(1)
    end
  end
end

-- Asserts that the runtime is back to the snapshot.
function H.assert_clean(snap)
  local what = H.leftovers(snap)
  if what then
    H.cleanup(snap)
    error("not clean after the example: " .. what, 2)
  end
end

-- Functions H.clean runs after the example body, whatever its outcome
-- (removing temporary files, for instance).
local cleanups = {}

function H.on_cleanup(fn)
  cleanups[#cleanups + 1] = fn
end

local function run_cleanups()
  local list = cleanups
  cleanups = {}
  for i = #list, 1, -1 do
    pcall(list[i])
  end
end

-- it("...", H.clean(function() ... end))
function H.clean(fn)
  return function(...)
    local snap = H.snapshot()
    local ok, err = pcall(fn, ...)
    run_cleanups()
    if not ok then
      H.cleanup(snap)
      error(err, 0)
    end
    H.assert_clean(snap)
  end
end

------------------------------------------------------------------ waiting

-- Yields until pred() is true, or fails after `seconds` (default 2).
function H.wait_until(pred, seconds, what)
  local deadline = loom.now() + (seconds or 2)
  while not pred() do
    if loom.now() > deadline then
      error("timed out waiting for " .. (what or "a condition"), 2)
    end
    loom.sleep(0.001)
  end
end

-- Busy-waits (no yield) for `seconds`: keeps the scheduler out.
function H.spin(seconds)
  local t0 = loom.now()
  while loom.now() - t0 < seconds do
  end
end

-- A to-be-closed value that records its closing in `log`.
function H.closer(log, name)
  return setmetatable({}, {
    __close = function()
      log[#log + 1] = name
    end,
  })
end

------------------------------------------------------------------ processes

local tmp_count = 0

-- A fresh temporary file name.
function H.tmpname(suffix)
  tmp_count = tmp_count + 1
  return ("/tmp/loom-spec-%d-%d-%d%s"):format(math.floor(loom.now() * 1e6) % 1000000000,
    tmp_count, math.random(1, 1e6), suffix or "")
end

-- A fresh temporary directory holding `files` (name -> text), removed by
-- H.clean after the example.
function H.tmpdir(files)
  local dir = H.tmpname("")
  assert(os.execute("mkdir -p " .. H.q(dir)))
  for name, text in pairs(files or {}) do
    H.write_file(dir .. "/" .. name, text)
  end
  H.on_cleanup(function() os.execute("rm -rf " .. H.q(dir)) end)
  return dir
end

function H.write_file(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

function H.read_file(path)
  local f = io.open(path, "r")
  if not f then
    return nil
  end
  local s = f:read("a")
  f:close()
  return s
end

-- Shell quoting.
function H.q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- Runs a shell command line; returns exit code, stdout, stderr, seconds.
-- The command runs under `timeout` (default 20 s) so a hang fails the
-- example instead of the suite.
function H.sh(cmdline, opts)
  opts = opts or {}
  local out, err = H.tmpname(".out"), H.tmpname(".err")
  local limit = opts.timeout or 20
  local full = ("%s timeout -k 2 %s sh -c %s >%s 2>%s%s"):format(opts.env or "", limit,
    H.q(cmdline), out, err, opts.stdin and (" <" .. opts.stdin) or " </dev/null")
  local t0 = loom.now()
  local _, how, code = os.execute(full)
  local elapsed = loom.now() - t0
  if how == "signal" then
    code = 128 + code
  end
  local so, se = H.read_file(out) or "", H.read_file(err) or ""
  os.remove(out)
  os.remove(err)
  return code, so, se, elapsed
end

-- Writes `src` to a temporary script and runs it with the loom CLI:
-- returns exit code, stdout, stderr, seconds. opts.args: extra arguments
-- (a string, already quoted); opts.flags: CLI options before the script.
function H.run_loom(src, opts)
  opts = opts or {}
  local path = H.tmpname(".lua")
  H.write_file(path, src)
  local code, so, se, t = H.sh(("%s %s %s %s"):format(H.q(H.bin), opts.flags or "", H.q(path),
    opts.args or ""), opts)
  os.remove(path)
  return code, so, se, t
end

-- A sanitized loom/core.so (an ASan build) needs its runtimes preloaded
-- into a stock lua5.4: returns the LD_PRELOAD assignment, or "".
local preload
local function sanitizer_preload()
  if preload == nil then
    preload = ""
    local p = io.popen("ldd " .. H.q(H.build_dir .. "/lib/loom/core.so") .. " 2>/dev/null")
    if p then
      local libs = {}
      for line in p:lines() do
        local lib = line:match("=>%s*(%S+)")
        if lib and (lib:find("libasan", 1, true) or lib:find("libubsan", 1, true)) then
          libs[#libs + 1] = lib
        end
      end
      p:close()
      if #libs > 0 then
        -- lua5.4 itself is not instrumented: leaks of the interpreter are
        -- not ours to report here.
        preload = ("LD_PRELOAD=%s ASAN_OPTIONS=detect_leaks=0 "):format(H.q(table.concat(libs, " ")))
      end
    end
  end
  return preload
end

-- The same with a stock lua5.4 that loads loom through require "loom".
function H.run_stock(src, opts)
  opts = opts or {}
  local path = H.tmpname(".lua")
  H.write_file(path, src)
  local env = ("%sLUA_PATH=%s LUA_CPATH=%s "):format(sanitizer_preload(),
    H.q("lua/?.lua;lua/?/init.lua;;"), H.q(H.build_dir .. "/lib/?.so;;"))
  local o = {}
  for k, v in pairs(opts) do
    o[k] = v
  end
  o.env = env .. (opts.env or "")
  local code, so, se, t = H.sh(("lua5.4 %s %s"):format(H.q(path), opts.args or ""), o)
  os.remove(path)
  return code, so, se, t
end

-- Plain-text find.
function H.has(haystack, needle)
  return type(haystack) == "string" and haystack:find(needle, 1, true) ~= nil
end

return H
