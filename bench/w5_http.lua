-- W5 HTTP hello world for the bench harness (/work/shared/bench/README.md):
--   loom bench/w5_http.lua PORT
-- A tasklet per connection over loom.tcp.serve; the minimal parser the C
-- and luv rows use: a request is complete at "\r\n\r\n" plus its
-- Content-Length body; only Content-Length and Connection are looked at
-- (case-insensitively); HTTP/1.1 keep-alive unless "Connection: close",
-- HTTP/1.0 only with "Connection: keep-alive"; pipelined requests are
-- answered in order with one write per read; more than 64 KiB without a
-- complete header gets a 431 and the connection is closed.
-- Listens on 127.0.0.1 only and runs until killed (the CLI exits on SIGTERM).
local loom = require "loom"

local port = assert(math.tointeger(tonumber(arg[1])), "usage: loom w5_http.lua PORT")
local find, sub, lower, match, concat = string.find, string.sub, string.lower, string.match,
  table.concat

local RESP = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, World!"
local R431 = "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\n" ..
  "Connection: close\r\n\r\n"
local MAXBUF = 65536

-- Answers every complete request in buf; returns the answers (a string, or
-- nil for none), the position of the first unanswered byte and whether the
-- connection ends after these answers.
local function answer(buf)
  local pos, out, nout = 1, nil, 0
  while true do
    local hend = find(buf, "\r\n\r\n", pos, true)
    if not hend then
      break
    end
    local lend = find(buf, "\n", pos, true)
    local http10 = sub(buf, lend - 9, lend - 2) == "HTTP/1.0"
    local clen, conn_close, conn_ka = 0, false, false
    if lend + 1 < hend + 2 then
      -- Plain finds for the two names, then an anchored match: an
      -- unanchored pattern would be tried at every byte of the headers.
      local hdrs = lower(sub(buf, lend + 1, hend + 1))
      local at = find(hdrs, "content-length:", 1, true)
      if at then
        clen = tonumber(match(hdrs, "^[ \t]*(%d+)", at + 15)) or 0
      end
      at = find(hdrs, "connection:", 1, true)
      if at then
        local conn = match(hdrs, "^[^\r\n]*", at + 11)
        conn_close = find(conn, "close", 1, true) ~= nil
        conn_ka = find(conn, "keep-alive", 1, true) ~= nil
      end
    end
    local total = hend + 3 + clen
    if #buf < total then
      break
    end
    pos = total + 1
    nout = nout + 1
    if nout == 1 then
      out = RESP
    else
      if nout == 2 then
        out = { out }
      end
      out[nout] = RESP
    end
    if (http10 and not conn_ka) or (not http10 and conn_close) then
      return nout == 1 and out or concat(out), pos, true
    end
  end
  return nout == 1 and out or nout > 1 and concat(out) or nil, pos, false
end

local function handle(conn)
  -- The methods once per connection, not through the metatable per call.
  local read, write = conn.read, conn.write
  local buf = ""
  while true do
    local data = read(conn)
    if not data then
      return -- EOF or reset: serve() closes the conn
    end
    if buf == "" then
      buf = data
    else
      buf = buf .. data
    end
    local out, pos, close = answer(buf)
    if out and not write(conn, out) then
      return
    end
    if close then
      conn:shutdown()
      return
    end
    if pos > #buf then
      buf = ""
    elseif pos > 1 then
      buf = sub(buf, pos)
    end
    if #buf >= MAXBUF then
      conn:write(R431)
      conn:shutdown()
      return
    end
  end
end

local srv = assert(loom.tcp.serve("127.0.0.1", port, handle, { backlog = 1024 }))
io.stdout:write(("w5_http listening on %s:%d\n"):format(srv:sockname()))
io.stdout:flush()
