-- examples/chat_server.lua - every line a client sends goes to every client.
--
--   loom examples/chat_server.lua [port]     (default 7001)
--   nc 127.0.0.1 7001        (in two or more terminals)
--
-- Channels instead of locks: one hub tasklet owns the list of clients and
-- receives every event (join, leave, message) from a channel, so nothing
-- is shared between tasklets. Each client has an outbox channel drained by
-- its own writer tasklet; the hub never waits on a slow client: when an
-- outbox is full, that client is disconnected.
-- Loaded with dofile()/require() instead of run as a script, the file
-- returns its functions (the specs use them).
local loom = require "loom"
require "loom.tcp" -- adds loom.tcp.serve (harmless once the facade loads it)

local M = {}
local OUTBOX = 64 -- lines a client may lag behind before it is dropped

-- The hub: applies events in the order they were sent.
local function hub(events)
  local clients = {}
  for ev in events:iter() do -- ends when the channel is closed and drained
    if ev.join then
      clients[ev.join] = true
    elseif ev.leave then
      clients[ev.leave] = nil
    else
      for c in pairs(clients) do
        if #c.outbox < OUTBOX then
          c.outbox:send(ev.text) -- there is room: this does not wait
        else
          c.conn:close() -- too slow; its reader sees ECLOSED and leaves
        end
      end
    end
  end
end

-- Starts the server; returns an object whose close() stops it.
function M.start(host, port)
  local events = loom.channel(256)
  local hub_tasklet = loom.spawn(hub, events)
  local next_id = 0
  local srv, err, code = loom.tcp.serve(host, port, function(conn)
    next_id = next_id + 1
    local me = { id = next_id, conn = conn, outbox = loom.channel(OUTBOX) }
    me.outbox:send(("welcome, you are #%d\n"):format(me.id))
    -- The writer: one tasklet per client, so the reader below never waits
    -- for a write (one reader and one writer may use a conn at once).
    local writer = loom.spawn(function()
      for text in me.outbox:iter() do
        if not conn:write(text) then
          return
        end
      end
    end)
    events:send({ join = me })
    while true do
      local line = conn:read_line()
      if not line then
        break -- EOF, reset, or closed by the hub
      end
      events:send({ text = ("#%d: %s\n"):format(me.id, line) })
    end
    events:send({ leave = me })
    me.outbox:close() -- the writer sends what is left, then ends
    writer:join()
  end)
  if not srv then
    events:close()
    return nil, err, code
  end
  return {
    server = srv,
    close = function()
      srv:close()
      events:close()
      hub_tasklet:join()
    end,
  }
end

if arg and arg[0] and arg[0]:match("chat_server%.lua$") then
  local chat = assert(M.start("127.0.0.1", tonumber(arg[1]) or 7001))
  print(("chat server listening on %s:%d"):format(chat.server:sockname()))
else
  return M
end
