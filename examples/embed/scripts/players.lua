-- players.lua - the TCP port players connect to: each connection is a
-- tasklet (loom.tcp.serve) that reads commands line by line; a second
-- tasklet per player writes what others send to it. Logging in asks the
-- host's database (host.db_get), which blocks only that player.
local port = ...

local function who()
  local names = {}
  for name in pairs(world.players) do names[#names + 1] = name end
  table.sort(names)
  return table.concat(names, " ")
end

local function look()
  local seen, n = {}, 0
  for id, npc in pairs(world.npcs) do
    n = n + 1
    if n <= 5 then seen[#seen + 1] = npc.name .. " is " .. npc.state end
  end
  return ("%d NPCs around; %s"):format(n, table.concat(seen, ", "))
end

local function play(conn)
  conn:settimeout(60)
  conn:write("welcome to loom town; say 'login <name>'\n")
  local line = conn:read_line({ max = 200 })
  local name = line and line:match("^login (%w+)$")
  if not name or world.players[name] then
    conn:write("bad login\n")
    return
  end
  local record = host.db_get(name)     -- the player waits, the world does not
  local me = { name = name, outbox = loom.channel(64) }
  world.players[name] = me
  world.stats.logins = world.stats.logins + 1
  local writer = loom.spawn(function()
    for msg in me.outbox:iter() do
      if not conn:write(msg, "\n") then return end
    end
  end)
  conn:write(("hello %s (%s), it is %s\n"):format(name, record,
    world.is_night() and "night" or "day"))
  while true do
    local cmd = conn:read_line({ max = 200 })
    if not cmd or cmd == "quit" then break end
    world.stats.commands = world.stats.commands + 1
    if cmd == "look" then
      me.outbox:send(look())
    elseif cmd == "who" then
      me.outbox:send("online: " .. who())
    elseif cmd:match("^say ") then
      for _, p in pairs(world.players) do
        if p.outbox.balance <= 0 and #p.outbox < 64 then
          p.outbox:send(name .. " says: " .. cmd:sub(5))
        end
      end
    else
      me.outbox:send("unknown command: " .. cmd)
    end
  end
  world.players[name] = nil
  me.outbox:send("bye")
  me.outbox:close()
  writer:join(1)
end

local server = assert(loom.tcp.serve("127.0.0.1", port, play))
local _, bound = server:sockname()
PORT = bound      -- the host reads it
