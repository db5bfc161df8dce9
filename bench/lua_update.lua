-- The alternative bench/bench_scaleout.py measures: one observation learned atomically inside Redis,
-- the whole Sherman-Morrison update in Lua (veloxserve learns in the server and compare-and-sets instead).
-- KEYS[1]  the user's hash: s = state bytes in UserTable.encode's layout, w = the weights alone,
--          '@<instance>' = the last LSN of that instance's log already learned for this user.
-- ARGV     1 '@<instance>'  2 lsn  3 item row  4 y (packed double)  5 f (k packed doubles)
--          6 the state to start from if the user has none yet, or ''
--          7 'i' (ridge, Sherman-Morrison) or 'l' (logistic SGD)  8 rate  9 reg (k doubles)  10 prior mean (k doubles)
-- Returns 1 learned, 0 already learned (a replay), -1 no state and no initial state given.
local key = KEYS[1]
local mark = redis.call('HGET', key, ARGV[1])
if mark and tonumber(mark) >= tonumber(ARGV[2]) then return 0 end
local s = redis.call('HGET', key, 's')
if not s then
  if ARGV[6] == '' then return -1 end
  s = ARGV[6]
end
local magic, k, count, nseen, pos = struct.unpack('<c4i8i8i8', s)
local fmt = '<' .. string.rep('d', k)
local function vec(bytes, at)
  local v = {struct.unpack(fmt, bytes, at)}
  local after = v[k + 1]
  v[k + 1] = nil
  return v, after
end
local P = {}
for i = 1, k do P[i], pos = vec(s, pos) end
local r, w
r, pos = vec(s, pos)
w, pos = vec(s, pos)
local seen = string.sub(s, pos)
local f = vec(ARGV[5], 1)
local y = struct.unpack('<d', ARGV[4])

if ARGV[7] == 'i' then  -- the same operations, in the same order, as kernels.rls_update
  local pf, denom = {}, 1.0
  for i = 1, k do
    local Pi, acc = P[i], 0.0
    for j = 1, k do acc = acc + Pi[j] * f[j] end
    pf[i] = acc
    denom = denom + f[i] * acc
  end
  local inv = 1.0 / denom
  for i = 1, k do
    local a, Pi = pf[i] * inv, P[i]
    for j = 1, k do Pi[j] = Pi[j] - a * pf[j] end
    r[i] = r[i] + y * f[i]
  end
  for i = 1, k do
    local Pi, acc = P[i], 0.0
    for j = 1, k do acc = acc + Pi[j] * r[j] end
    w[i] = acc
  end
else  -- kernels.logistic_sgd_update
  local rate, reg, prior = tonumber(ARGV[8]), vec(ARGV[9], 1), vec(ARGV[10], 1)
  local z = 0.0
  for j = 1, k do z = z + w[j] * f[j] end
  local p
  if z >= 0 then p = 1.0 / (1.0 + math.exp(-z)) else p = math.exp(z) / (1.0 + math.exp(z)) end
  local g = p - y
  for j = 1, k do w[j] = w[j] - rate * (g * f[j] + reg[j] * (w[j] - prior[j])) end
end

local item = struct.pack('<i8', tonumber(ARGV[3]))
local from, found = 1, false
while true do  -- is the item already among the seen ones (8-byte aligned)?
  local at = string.find(seen, item, from, true)
  if not at then break end
  if (at - 1) % 8 == 0 then found = true break end
  from = at + 1
end
if not found then
  seen = seen .. item
  nseen = nseen + 1
end
local parts = {struct.pack('<c4i8i8i8', magic, k, count + 1, nseen)}
for i = 1, k do parts[i + 1] = struct.pack(fmt, unpack(P[i])) end
local wbytes = struct.pack(fmt, unpack(w))
parts[k + 2] = struct.pack(fmt, unpack(r))
parts[k + 3] = wbytes
parts[k + 4] = seen
redis.call('HSET', key, 's', table.concat(parts), 'w', wbytes, ARGV[1], ARGV[2])
return 1
