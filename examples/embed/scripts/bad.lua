-- bad.lua - a misbehaving script: it never waits. The count hook preempts
-- it every slice, so the 30 Hz tick still holds and everyone else runs.
host.log("bad.lua: spinning forever")
local n = 0
while true do
  n = n + 1
end
