-- examples/echo_server.lua - a TCP echo server in blocking style.
--
--   loom examples/echo_server.lua [port]     (default 7000; Ctrl-C stops it)
--   nc 127.0.0.1 7000
--
-- loom.tcp.serve() runs the handler below in a tasklet of its own for every
-- connection. The handler reads like ordinary sequential code: read() and
-- write() suspend only this tasklet while the scheduler runs all the others.
-- Loaded with dofile()/require() instead of run as a script, the file
-- returns its functions (the specs use them).
local loom = require "loom"
require "loom.tcp" -- adds loom.tcp.serve (harmless once the facade loads it)

local M = {}

-- Serves one client until it goes away.
function M.handle(conn)
  conn:settimeout(300) -- a client silent for five minutes is dropped
  while true do
    -- Whatever has arrived, at once: no waiting for a full message.
    local data = conn:read()
    if not data then
      return -- EOF, a reset or the timeout; serve() closes the conn
    end
    -- write() returns once the data is queued; it only waits when the
    -- client does not read its answers (backpressure), so one slow client
    -- cannot make this server buffer without bound.
    if not conn:write(data) then
      return
    end
  end
end

-- Starts serving; returns the server (server:close() stops accepting).
function M.start(host, port)
  return loom.tcp.serve(host, port, M.handle)
end

if arg and arg[0] and arg[0]:match("echo_server%.lua$") then
  local srv = assert(M.start("127.0.0.1", tonumber(arg[1]) or 7000))
  print(("echo server listening on %s:%d"):format(srv:sockname()))
  -- The main chunk ends here; the accepting tasklet keeps the program alive.
else
  return M
end
