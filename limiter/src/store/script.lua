-- Tollgate rate-limit script: evaluates every hit of one request atomically, in one round trip.
-- A line-by-line mirror of ratelimit/src/algorithm.rs (keep them in step). Time is the caller's
-- clock in microseconds, so every replica's script agrees within their clock skew.
-- KEYS: one per hit (duplicates allowed: a later hit sees the earlier one's count).
-- ARGV: mode (0 = hit, 1 = refund hits counted at the same now), now_us,
--       then per key: algorithm (0 sliding, 1 fixed, 2/3 meter), limit, window_us, capacity, cost, shadow.
-- Reply (mode 0): per key admitted (0/1), remaining, reset_after_us, retry_after_us (-1 = none).
-- Layout: sliding = hash {sub-window index: count}; fixed = hash {w, c}; meter = hash {t, f}
-- (TAT = t + f/limit us). Every key expires (PEXPIRE) when it can no longer matter.
local K = 10 -- SLIDING_BUCKETS
local D = 2 -- SLIDING_SKEW_BUCKETS
local mode = tonumber(ARGV[1])
local now = tonumber(ARGV[2])
local floor, ceil, max = math.floor, math.ceil, math.max

-- tostring() keeps 14 digits; these integers have up to 16.
local function num(x)
  return string.format('%d', x)
end

local function load(key, alg)
  if alg == 0 then
    local raw = redis.call('HGETALL', key)
    local b = {}
    for i = 1, #raw, 2 do
      b[tonumber(raw[i])] = tonumber(raw[i + 1])
    end
    return { b = b }
  elseif alg == 1 then
    local v = redis.call('HMGET', key, 'w', 'c')
    if v[1] then
      return { w = tonumber(v[1]), c = tonumber(v[2]) }
    end
    return {}
  end
  local v = redis.call('HMGET', key, 't', 'f')
  if v[1] then
    return { t = tonumber(v[1]), f = tonumber(v[2]) }
  end
  return {}
end

local function fixed(L, W, st, cost)
  local w = floor(now / W)
  local c = 0
  if st.w and st.w > w then
    -- The counter is in a later window (this caller's clock lags): check only.
    local retry = -1
    if cost > 0 then retry = max(st.w * W - now, 1) end
    local adm = cost == 0 and st.c <= L
    return adm, max(L - st.c, 0), (st.w + 1) * W - now, retry, st, (st.w + 1) * W
  end
  if st.w == w then
    c = st.c
  end
  local adm = c + cost <= L
  local after = c
  if adm then
    after = c + cost
  end
  local wend = (w + 1) * W
  local until_end = wend - now
  local retry = -1
  if not adm then
    if cost > L then retry = W else retry = until_end end
  end
  local reset = 0
  if after > 0 then
    reset = until_end
  end
  return adm, max(L - after, 0), reset, retry, { w = w, c = after }, wend
end

local function sliding(L, W, st, cost)
  local b = floor((W + K - 1) / K)
  local cur = floor(now / b)
  local top = cur
  for idx, _ in pairs(st.b) do
    if idx > top then
      top = idx
    end
  end
  local held = top - K - D
  -- The newest used sub-window at or after `from` (nil when none).
  local function newest_in(t, from)
    local newest = nil
    for idx, c in pairs(t) do
      if idx >= from and c > 0 and (newest == nil or idx > newest) then
        newest = idx
      end
    end
    return newest
  end
  local function reset_of(newest)
    if newest == nil then return 0 end
    return max((newest + K + 1) * b - now, 0)
  end
  local function keep_of(newest)
    if newest == nil then return now end
    return (newest + K + 1 + D) * b
  end
  if cur + D < top then
    -- This caller's clock lags the newest writer's beyond what is kept: check only.
    local counted = 0
    for idx, c in pairs(st.b) do
      if idx >= held then
        counted = counted + c
      end
    end
    local retry = -1
    if cost > 0 then retry = max((top - D) * b - now, 1) end
    local newest = newest_in(st.b, held)
    return cost == 0 and counted <= L, max(L - counted, 0), reset_of(newest), retry, st, keep_of(newest)
  end
  local from = cur - K
  local counted = 0
  for idx, c in pairs(st.b) do
    if idx >= from then
      counted = counted + c
    end
  end
  local adm = counted + cost <= L
  local after = counted
  local nb = st.b
  if adm and cost > 0 then
    after = counted + cost
    nb = {}
    for idx, c in pairs(st.b) do
      if idx >= held then
        nb[idx] = c
      end
    end
    nb[cur] = (nb[cur] or 0) + cost
  end
  local retry = -1
  if not adm then
    retry = W
    if cost <= L then
      local need, freed = counted + cost - L, 0
      for j = from, top do
        freed = freed + (st.b[j] or 0)
        if freed >= need then
          retry = max((j + K + 1) * b - now, 0)
          break
        end
      end
    end
  end
  return adm, max(L - after, 0), reset_of(newest_in(nb, from)), retry, { b = nb, cur = cur, held = held },
    keep_of(newest_in(nb, held))
end

local function meter(L, W, C, st, cost)
  local bu, bf = now, 0
  if st.t and (st.t > now or (st.t == now and st.f > 0)) then
    bu, bf = st.t, st.f
  end
  local dist = (bu - now) * L + bf
  local full = C * W
  local newdist = dist + cost * W
  local adm = cost <= C and newdist <= full
  local after = dist
  local nst = st
  if adm then
    after = newdist
    if cost > 0 then
      local q1 = floor(W / L)
      local f = bf + cost * (W - q1 * L)
      local carry = floor(f / L)
      nst = { t = bu + cost * q1 + carry, f = f - carry * L }
    end
  end
  local retry = -1
  if not adm then
    if cost > C then retry = W else retry = ceil((newdist - full) / L) end
  end
  local reset = ceil(after / L)
  return adm, floor(max(full - after, 0) / W), reset, retry, nst, now + reset
end

local function eval(alg, L, W, C, st, cost)
  if alg == 0 then
    return sliding(L, W, st, cost)
  elseif alg == 1 then
    return fixed(L, W, st, cost)
  end
  return meter(L, W, C, st, cost)
end

local n = #KEYS

if mode == 1 then
  -- Undo hits counted by an earlier call with the same now (Redis Cluster: another slot of
  -- the same request rejected it). Never below empty.
  for i = 1, n do
    local a = 3 + (i - 1) * 6
    local key, alg = KEYS[i], tonumber(ARGV[a])
    local L, W, cost = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 4])
    if cost > 0 then
      if alg == 0 then
        local cur = num(floor(now / floor((W + K - 1) / K)))
        if redis.call('HINCRBY', key, cur, -cost) <= 0 then
          redis.call('HDEL', key, cur)
        end
      elseif alg == 1 then
        local v = redis.call('HMGET', key, 'w', 'c')
        if v[1] and tonumber(v[1]) == floor(now / W) then
          redis.call('HSET', key, 'c', num(max(tonumber(v[2]) - cost, 0)))
        end
      else
        local v = redis.call('HMGET', key, 't', 'f')
        if v[1] then
          local d = (tonumber(v[1]) - now) * L + tonumber(v[2]) - cost * W
          if d <= 0 then
            redis.call('DEL', key)
          else
            local q = floor(d / L)
            redis.call('HSET', key, 't', num(now + q), 'f', num(d - q * L))
          end
        end
      end
    end
  end
  return {}
end

local orig, tent, algs, adds, exps, counted = {}, {}, {}, {}, {}, {}
local res = {}
local rejected = false
for i = 1, n do
  local a = 3 + (i - 1) * 6
  local key, alg = KEYS[i], tonumber(ARGV[a])
  local L, W, C = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local cost, shadow = tonumber(ARGV[a + 4]), ARGV[a + 5] == '1'
  if orig[key] == nil then
    orig[key] = load(key, alg)
  end
  local adm, rem, reset, retry, nst, exp = eval(alg, L, W, C, tent[key] or orig[key], cost)
  if adm and cost > 0 then
    tent[key], algs[key], exps[key] = nst, alg, exp
    adds[key] = (adds[key] or 0) + cost
    counted[i] = true
  elseif not adm and not shadow then
    rejected = true
  end
  res[4 * i - 3] = adm and 1 or 0
  res[4 * i - 2] = rem
  res[4 * i - 1] = reset
  res[4 * i] = retry
end

if rejected then
  -- Nothing is counted: hits that would have been report their counter as it stands.
  for i = 1, n do
    if counted[i] then
      local a = 3 + (i - 1) * 6
      local key, alg = KEYS[i], tonumber(ARGV[a])
      local L, W, C = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
      local _, rem, reset = eval(alg, L, W, C, orig[key], 0)
      res[4 * i - 2] = rem
      res[4 * i - 1] = reset
    end
  end
  return res
end

for key, st in pairs(tent) do
  local alg = algs[key]
  if alg == 0 then
    redis.call('HINCRBY', key, num(st.cur), adds[key])
    for idx, _ in pairs(orig[key].b) do
      if idx < st.held then
        redis.call('HDEL', key, num(idx))
      end
    end
  elseif alg == 1 then
    redis.call('HSET', key, 'w', num(st.w), 'c', num(st.c))
  else
    redis.call('HSET', key, 't', num(st.t), 'f', num(st.f))
  end
  redis.call('PEXPIRE', key, max(ceil((exps[key] - now) / 1000), 1))
end
return res
