-- bots.lua - the self-test's players: a separate, non-sandboxed runtime on
-- its own thread connects bots to the server's port, plays a short session
-- each and counts the ones that saw everything they expected.
local port, count = ...
bots_ok = 0
local failures = {}

local function expect(conn, pattern)
  local line, err = conn:read_line()
  while line and line:match("^%*") do line, err = conn:read_line() end -- world events
  if not line or not line:find(pattern) then
    error(("expected %q, got %s"):format(pattern, tostring(line or err)), 2)
  end
  return line
end

local g = loom.group()
for i = 1, count do
  g:spawn(function()
    local ok, err = pcall(function()
      local conn = assert(loom.tcp.connect("127.0.0.1", port, { timeout = 10 }))
      expect(conn, "^welcome")
      conn:write("login bot" .. i .. "\n")
      expect(conn, "^hello bot" .. i)
      for _ = 1, 3 do
        conn:write("look\n")
        expect(conn, "NPCs around")
        loom.sleep(0.05 + math.random() * 0.1)
      end
      conn:write("who\n")
      expect(conn, "^online: .*bot" .. i)
      conn:write("quit\n")
      expect(conn, "bye")
      conn:close()
    end)
    if ok then bots_ok = bots_ok + 1 else failures[#failures + 1] = tostring(err) end
  end)
end
g:wait()
bot_failures = table.concat(failures, "\n")
