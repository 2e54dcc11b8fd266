-- W7 (bench/README.md): N times create a loom.deferred, attach one callback,
-- fire it with i; the callback adds to a sum. Prints the RESULT line.
-- usage: loom bench/w7_deferred.lua [N=1000000]   (or lua5.4 with loom installed)
local loom = require "loom"

local N = tonumber(arg and arg[1]) or 1000000
local deferred, now = loom.deferred, loom.now

local sum = 0
local function cb(v)
  sum = sum + v
  return v
end

local function run(n)
  sum = 0
  for i = 1, n do
    local d = deferred()
    d:add_callback(cb)
    d:callback(i)
  end
  if sum ~= n * (n + 1) // 2 then
    io.stderr:write("w7_deferred: wrong sum ", sum, "\n")
    os.exit(1)
  end
end

run(N // 10)
collectgarbage("collect")
local t0 = now()
run(N)
local t1 = now()
print(string.format("RESULT elapsed=%.6f count=%d", t1 - t0, N))
