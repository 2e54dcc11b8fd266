-- world.lua - the shared world of the example game server: day and night
-- (events the host posts), the list of players online, counters the host
-- prints. Runs first, as a tasklet, in the sandboxed runtime.

world = {
  night = loom.event(),   -- set while it is night
  day = loom.event(),     -- set while it is day
  players = {},           -- name -> player (players.lua)
  npcs = {},              -- id -> { name=, state= }
  stats = { npc_actions = 0, npc_lookups = 0, logins = 0, commands = 0 },
}
world.day:set()

-- The host posts "dusk" and "dawn" (loom_post_message): each message runs
-- this function in a new tasklet.
function world_event(name)
  if name == "dusk" then
    world.day:clear()
    world.night:set()
  elseif name == "dawn" then
    world.night:clear()
    world.day:set()
  end
  for _, p in pairs(world.players) do
    p.outbox:send("* the world turns: " .. name)
  end
end

function world.is_night()
  return world.night:is_set()
end
