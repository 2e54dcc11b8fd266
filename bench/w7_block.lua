-- Companion to W7: the cost of the bridges between Deferreds and blocking
-- code. Prints one RESULT line per case (calls/s = count / elapsed).
-- usage: loom bench/w7_block.lua [N=1000000]   (blocking_tasklet cases use N/10)
local loom = require "loom"

local N = tonumber(arg and arg[1]) or 1000000
local now = loom.now

local function identity(x) return x end
local function yield_once(x)
  loom.yield()
  return x
end

local cases = {
  -- fn returns at once: spawn_now runs it to the end, join returns at once
  { name = "blocking_tasklet", n = N // 10, run = function(n)
    local w = loom.blocking_tasklet(identity)
    local sum = 0
    for i = 1, n do sum = sum + w(i) end
    return sum
  end },
  -- fn waits once: the caller really blocks and is woken by the child's end
  { name = "blocking_tasklet_yield", n = N // 10, run = function(n)
    local w = loom.blocking_tasklet(yield_once)
    local sum = 0
    for i = 1, n do sum = sum + w(i) end
    return sum
  end },
  -- block_on on a Deferred that has fired: no waiting, the result is taken
  { name = "block_on_fired", n = N, run = function(n)
    local block_on, succeed = loom.block_on, loom.succeed
    local sum = 0
    for i = 1, n do sum = sum + block_on(succeed(i)) end
    return sum
  end },
  -- block_on that waits: a deferred_tasklet fires the Deferred after a yield
  { name = "block_on_deferred_tasklet", n = N // 10, run = function(n)
    local block_on, f = loom.block_on, loom.deferred_tasklet(yield_once)
    local sum = 0
    for i = 1, n do sum = sum + block_on(f(i)) end
    return sum
  end },
}

for _, case in ipairs(cases) do
  local n = case.n
  case.run(n // 10)
  collectgarbage("collect")
  local t0 = now()
  local sum = case.run(n)
  local elapsed = now() - t0
  if sum ~= n * (n + 1) // 2 then
    io.stderr:write("w7_block: wrong sum for ", case.name, "\n")
    os.exit(1)
  end
  print(string.format("RESULT case=%s elapsed=%.6f count=%d calls_per_s=%.0f",
    case.name, elapsed, n, n / elapsed))
end
