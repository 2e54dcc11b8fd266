-- W4 TCP echo (shared/bench/README.md): listen on 127.0.0.1:PORT and echo
-- every received byte back as soon as it arrives, a tasklet per connection
-- in blocking style. Runs until killed (the loom CLI exits on SIGTERM).
--   loom bench/w4_echo.lua PORT
local loom = require "loom"
local tcp = require "loom.tcp"

local port = tonumber(arg[1])
if not port then
  io.stderr:write("usage: w4_echo.lua PORT\n")
  os.exit(2)
end

local function echo(conn)
  while true do
    local data = conn:read() -- whatever has arrived
    if not data then
      return -- EOF or reset: serve() closes the conn
    end
    if not conn:write(data) then
      return
    end
  end
end

assert(tcp.serve("127.0.0.1", port, echo, { backlog = 511, nodelay = true }))
loom.sleep(0) -- let the accepting tasklet start before the main chunk ends
