-- loom.tcp policy: serve(host, port, handler [, opts]), a tasklet per
-- connection over the C core's listen()/accept() (src/tcp.c).
-- Requiring this module adds `serve` to the core's tcp table (the same
-- table the facade exposes as loom.tcp) and returns that table.
local core = require "loom.core"

local tcp = core.tcp
local TaskletExit = core.TaskletExit
local traceback = debug and debug.traceback

-- Keeps loom error objects as they are (they carry their own traceback);
-- gives other errors the handler's traceback.
local function msgh(e)
  if type(e) ~= "table" and traceback then
    return traceback(tostring(e), 2)
  end
  return e
end

local function run_handler(handler, conn)
  local c <close> = conn
  local ok, err = xpcall(handler, msgh, c)
  if not ok then
    if TaskletExit:is(err) then
      error(err, 0) -- a kill ends the tasklet as a kill
    end
    core.report_error(err, "tcp handler")
  end
end

--- loom.tcp.serve(host, port, handler [, opts]) -> server or fail.
-- Listens like loom.tcp.listen (same opts) and runs handler(conn) in a new
-- tasklet for every accepted connection; the conn is closed when the
-- handler returns or raises. A handler's error is reported (loom.on_error)
-- and the server goes on. server:close() stops accepting; connections in
-- progress keep running.
function tcp.serve(host, port, handler, opts)
  if type(handler) ~= "function" then
    error(("bad argument #3 to 'serve' (function expected, got %s)"):format(type(handler)), 2)
  end
  local srv, err, code = tcp.listen(host, port, opts)
  if not srv then
    return nil, err, code
  end
  local acceptor = core.spawn(function()
    local s <close> = srv -- the acceptor owns the server: a kill closes it
    while true do
      local conn, aerr, acode = s:accept()
      if conn then
        local t = core.spawn(run_handler, handler, conn)
        t.name = "tcp handler"
      elseif acode == "ECLOSED" then
        return
      else
        -- EMFILE and friends: the kernel keeps the connection queued;
        -- report once and breathe instead of spinning.
        core.report_error(aerr, "tcp serve accept")
        core.sleep(0.05)
      end
    end
  end)
  acceptor.name = "tcp serve"
  return srv
end

return tcp
