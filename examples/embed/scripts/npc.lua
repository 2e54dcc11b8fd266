-- npc.lua - one NPC's behaviour, run as its own tasklet: wander by day,
-- sleep through the night (waiting on the world's events), now and then
-- look something up in the host's database, a C function that blocks only
-- this tasklet while a host worker thread answers.
local id = ...
local me = { name = "npc" .. id, state = "waking" }
world.npcs[id] = me

while true do
  if world.is_night() then
    me.state = "sleeping"
    world.day:wait(30)              -- until dawn (or a timeout, whichever first)
  else
    me.state = "wandering"
    loom.sleep(0.2 + math.random() * 0.8)
    if math.random() < 0.05 then
      me.state = "thinking"
      local record = host.db_get(me.name)   -- blocks this NPC only
      me.memory = record
      world.stats.npc_lookups = world.stats.npc_lookups + 1
    end
  end
  world.stats.npc_actions = world.stats.npc_actions + 1
end
