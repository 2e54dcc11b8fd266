-- W1 spawn (../shared/bench/README.md): N tasklets, each adds its index to a
-- shared accumulator and ends without waiting; the spawner waits for all.
local loom = require "loom"
local N = tonumber(arg and arg[1]) or 1000000

local function pass(n)
  local acc, done = 0, 0
  local all = loom.event()
  local function task(i)
    acc = acc + i
    done = done + 1
    if done == n then all:set() end
  end
  local t0 = loom.now()
  for i = 1, n do
    loom.spawn(task, i)
  end
  all:wait()
  local elapsed = loom.now() - t0
  assert(acc == n * (n + 1) // 2, "wrong sum")
  return elapsed
end

pass(N // 10)
collectgarbage()
local elapsed = pass(N)
print(("RESULT elapsed=%.6f count=%d"):format(elapsed, N))
