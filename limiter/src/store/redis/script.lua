-- Tollgate rate-limit script, counter layout 2, call format 4: evaluates every hit of one or
-- more requests atomically, in one round trip. A line-by-line mirror of
-- limiter/src/algorithm.rs (keep them in step). Time is the caller's clock in microseconds, so
-- every replica's script agrees within their clock skew; Redis' own clock is read only to
-- refuse a request whose caller has given up.
--
-- Several requests in one call (a connection's driver merges the calls queued together) cost
-- Redis one command, one Lua invocation and one TIME for all: the requests run in order, each
-- seeing what the ones before it counted, exactly as one call each would.
--
-- KEYS: one per hit, request after request (duplicates allowed: a later hit sees the earlier
--       one's count).
-- ARGV[1]: every argument in one binary string (Redis parses, allocates and hands Lua each
--       argument separately, so one argument costs less than many, and struct.unpack reads
--       doubles without the float parsing of tonumber). struct format '<H', the number of
--       requests; then per request '<BHdd': mode (0 = hit, 1 = refund hits counted at the
--       same now), its number of keys (at least one), now_us, the deadline on Redis' clock in
--       microseconds (0 = none); then per key of the request '<BBddddd' (42 bytes):
--       algorithm (0 sliding, 1 fixed, 2/3 meter, 4 calendar period), shadow (0/1), limit,
--       window_us, capacity, cost, step. The step is the
--       caller's arithmetic: a sliding window's sub-window width (algorithm::sliding_bucket_us),
--       a meter's tick (Rule::meter_tick_us); 0 otherwise. A calendar period's start_us and
--       end_us take the places of window_us and capacity (the caller does the calendar math).
-- Reply: one string (cheaper for Redis to reply than an array, whose every element it
--        converts): Redis' clock as TIME's seconds and microseconds, each a decimal string
--        ending in a zero byte (struct 's'); then per request one byte: 0 when it was a refund
--        or ran after its deadline (and changed nothing), nothing following; 1 when
--        evaluated, followed by little-endian doubles, per key: admitted (0/1), remaining,
--        reset_after_us, retry_after_us (-1 = none).
--
-- Values: one string per counter, a format byte then little-endian doubles (exact below 2^53;
-- every quantity stays below 2^52, see Rule::check):
--   'F' window, count                      fixed_window
--   'S' newest, count[1..13]               sliding_window; ring slot of sub-window i: i % 13 + 1
--   'P' start_us, count                    calendar periods
--   'M' tat, frac[, expiry]                meters; TAT = (tat + frac/limit) ticks of G µs, G
--                                          = Rule::meter_tick_us (the caller's step); expiry:
--                                          when the key's PX ends, on the writer's clock
--                                          (absent when written without it: read as unknown)
-- A reader meeting another format byte treats the counter as empty; a later layout adds its own
-- byte and reads these (and ignores bytes after the doubles it knows). Every key expires (PX)
-- once it can no longer matter: a fixed window when it ends, a sliding window when its newest
-- kept sub-window does (set by the write that starts the window or sub-window: a one-hit
-- request's later hits in it change the count in place, with SETRANGE), a calendar period when
-- it ends, a meter a window after its state stops mattering (renewed when less than half a
-- window of that margin is left, so a busy key's one-hit requests change the state in place).
--
-- No function is defined here: closures would be allocated on every call.
local K, D = 10, 2 -- SLIDING_BUCKETS, SLIDING_SKEW_BUCKETS
local RING = K + D + 1
local FIXED, SLIDING, METER, PERIOD = 70, 83, 77, 80
local SFMT = '<Bdddddddddddddd' -- format byte, newest, RING counts
local HIT = '<BBddddd' -- one key's arguments
local R1 = '<Bdddd' -- the reply to a request of one hit
local floor, ceil, max, min = math.floor, math.ceil, math.max, math.min
-- Numbers passed to redis.call go as strings made with '%d': Redis 7.0 formats a Lua number
-- argument with '%.17g', several times dearer.
local pack, unpack_, byte, fmt = struct.pack, struct.unpack, string.byte, string.format

local P = ARGV[1]
if redis.replicate_commands then
  redis.replicate_commands() -- Redis 5/6: writes after TIME are replicated as effects
end
local clock = redis.call('TIME')
local sec, usec = clock[1], clock[2]
-- Redis' clock in microseconds, exact as a double (below 2^53), parsed once for all requests.
local clk = tonumber(sec) * 1000000 + tonumber(usec)

-- Every request in order, each seeing what the ones before it counted. kb: the keys of the
-- requests before it; n: its own; pos: where its first hit's arguments start; part: its part of
-- the reply (see the header). The body is inline (a function per call would cost Redis more,
-- in allocation and collection, than the merging saves on one request): `break` leaves it.
--
-- A run of requests of the common shape on one counter (consecutive in the call, as a busy key's
-- are) reads its value once and writes it once: the counter's state is held in locals from one
-- request to the next (hkey, halg; hc the sliding ring as struct.unpack returns it, or ha, hb,
-- he the doubles after the format byte), and so is the write it needs (hw: 1 in place, slot hs
-- for a sliding window; 2 whole, with PX hpx), made before any other request runs.
local hkey, halg, hc, ha, hb, he, hw, hs, hpx
local nreq, mode, n, now, dl, pos = unpack_('<HBHdd', P)
local head, kb = pack('<ss', sec, usec), 0
-- The parts, for more than one request (one alone replies without a table).
local out = nreq > 1 and { head } or nil
for r = 1, nreq + 1 do
  if r > 1 and r <= nreq then mode, n, now, dl, pos = unpack_('<BHdd', P, pos + 42 * n) end
  -- The common shape: a hit (not a refund) on one counter of a window or a meter.
  local alg, _, L, W, C, cost, X
  if r <= nreq and n == 1 then alg, _, L, W, C, cost, X = unpack_(HIT, P, pos) end
  local fast = alg and mode == 0 and alg <= 3
  local key = fast and KEYS[kb + 1]
  if hw and key ~= hkey then
    if halg == 0 then
      if hw == 1 then
        -- The slot's offset in the value (8 * s - 15) as the string Redis is given: picked
        -- from constants (formatting it, or a table of them, would cost more per call).
        local s, o = hs, nil
        if s < 9 then
          if s < 6 then o = s == 3 and '9' or s == 4 and '17' or '25'
          else o = s == 6 and '33' or s == 7 and '41' or '49' end
        elseif s < 12 then o = s == 9 and '57' or s == 10 and '65' or '73'
        else o = s == 12 and '81' or s == 13 and '89' or s == 14 and '97' or '105' end
        redis.call('SETRANGE', hkey, o, pack('<d', hc[s]))
      else
        redis.call('SET', hkey, pack(SFMT, SLIDING, hc[2], unpack(hc, 3, RING + 2)), 'PX',
          fmt('%d', hpx))
      end
    elseif halg == 1 then
      if hw == 1 then
        redis.call('SETRANGE', hkey, '9', pack('<d', hb))
      else
        redis.call('SET', hkey, pack('<Bdd', FIXED, ha, hb), 'PX', fmt('%d', hpx))
      end
    elseif hw == 1 then
      redis.call('SETRANGE', hkey, '1', pack('<dd', ha, hb))
    else
      redis.call('SET', hkey, pack('<Bddd', METER, ha, hb, he), 'PX', fmt('%d', hpx))
    end
    hw = nil
  end
  if r > nreq then break end
  -- Any other request reads and writes Redis itself.
  if not fast then hkey = nil end
  local part
  repeat
      -- Late: Redis' clock past the deadline.
      if dl > 0 and clk > dl then part = '\0' break end

      -- The common shape, evaluated straight from its counter's state into the reply, with no
      -- per-hit tables. The general loop below gives the same answers (algorithm.rs is the
      -- reference for both); a request with one key has no duplicate to scan for and nothing to
      -- report as stored when rejected, since a rejected hit changes nothing.
      if fast then
        if key ~= hkey then
          -- The counter as stored.
          hkey, halg, hc, ha, hb, he = key, alg, nil, nil, nil, nil
          local v = redis.call('GET', key)
          if not v then
          elseif alg == 0 then
            if byte(v, 1) == SLIDING then hc = { unpack_(SFMT, v) } end
          elseif alg == 1 then
            if byte(v, 1) == FIXED then _, ha, hb = unpack_('<Bdd', v) end
          elseif byte(v, 1) == METER then
            if #v >= 25 then
              _, ha, hb, he = unpack_('<Bddd', v)
            else
              _, ha, hb = unpack_('<Bdd', v)
            end
          end
        end
        if alg == 0 then
          -- sliding_window, sub-windows of X µs. c: what struct.unpack returns (c[1] format, c[2]
          -- newest, c[3..RING+2] the ring, sub-window i at slot i % RING + 3). A request that
          -- changes nothing leaves hc as it was.
          local b = X
          local cur = floor(now / b)
          local c, same = hc, nil
          if c and c[2] == cur then
            same = true
          elseif not c or cur - c[2] >= RING then
            -- Empty, or every sub-window slid out.
            c = { SLIDING, cur, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 }
          elseif cur > c[2] then
            c = { unpack(c, 1, RING + 2) }
            for s = c[2] + 1, cur do c[s % RING + 3] = 0 end
            c[2] = cur
          end
          local top = c[2]
          local held = max(top - K - D, 0)
          if cur + D < top then
            -- This caller's clock lags the newest writer's beyond what is kept: check only.
            local counted, reset, retry = 0, 0, -1
            for s = 3, RING + 2 do counted = counted + c[s] end
            for idx = top, held, -1 do
              if c[idx % RING + 3] > 0 then reset = max((idx + K + 1) * b - now, 0) break end
            end
            if cost > 0 then retry = max((top - D) * b - now, 1) end
            local adm = (cost == 0 and counted <= L) and 1 or 0
            part = pack(R1, 1, adm, max(L - counted, 0), reset, retry) break
          end
          local from = max(cur - K, 0)
          -- Every kept sub-window, less those older than the window's.
          local counted = c[3] + c[4] + c[5] + c[6] + c[7] + c[8] + c[9] + c[10] + c[11] + c[12] + c[13]
            + c[14] + c[15]
          for idx = top - RING + 1, from - 1 do counted = counted - c[idx % RING + 3] end
          if counted + cost > L then
            local retry = W
            if cost <= L then
              local need, freed = counted + cost - L, 0
              for idx = from, top do
                freed = freed + c[idx % RING + 3]
                if freed >= need then
                  retry = max((idx + K + 1) * b - now, 0)
                  break
                end
              end
            end
            local reset = 0
            for idx = top, from, -1 do
              if c[idx % RING + 3] > 0 then reset = max((idx + K + 1) * b - now, 0) break end
            end
            part = pack(R1, 1, 0, max(L - counted, 0), reset, retry) break
          end
          -- The newest counted sub-window gives the reset; the newest kept one, the expiry.
          local s = cur % RING + 3
          local reset, kept = 0, nil
          if cost > 0 and same and hw ~= 2 then
            -- Still the newest sub-window: only its count changes, and the expiry set when it
            -- became the newest still holds.
            c[s] = c[s] + cost
            hw, hs, kept = 1, s, top
          else
            c[s] = c[s] + cost
            for idx = top, held, -1 do
              if c[idx % RING + 3] > 0 then kept = idx break end
            end
            if cost > 0 then
              hw = 2
              if not same then hpx = max(ceil(((kept + K + 1 + D) * b - now) / 1000), 1) end
            end
          end
          if cost > 0 then hc = c end
          if kept and kept >= from then reset = max((kept + K + 1) * b - now, 0) end
          part = pack(R1, 1, 1, L - counted - cost, reset, -1) break
        elseif alg == 1 then
          -- fixed_window
          local w = floor(now / W)
          local A, B = ha, hb
          if A and A > w then
            -- The counter is already in a later window (this caller's clock lags): check only.
            local retry = -1
            if cost > 0 then retry = max(A * W - now, 1) end
            local adm = (cost == 0 and B <= L) and 1 or 0
            part = pack(R1, 1, adm, max(L - B, 0), (A + 1) * W - now, retry) break
          end
          local count = 0
          if A == w then count = B end
          local wend = (w + 1) * W
          if count + cost > L then
            local retry = wend - now
            if cost > L then retry = W end
            local reset = 0
            if count > 0 then reset = wend - now end
            part = pack(R1, 1, 0, max(L - count, 0), reset, retry) break
          end
          local after = count + cost
          local reset = 0
          if after > 0 then reset = wend - now end
          if cost > 0 then
            if A == w then
              -- Still this window's counter: only its count changes, and the expiry set when
              -- the window's first hit was counted still holds (the window's end).
              hw = hw or 1
            else
              hw, hpx = 2, max(ceil((wend - now) / 1000), 1)
            end
            ha, hb = w, after
          end
          part = pack(R1, 1, 1, L - after, reset, -1) break
        else
          -- token_bucket and gcra: the exact meter, in ticks of X µs
          local G = X
          local nt, Wt = floor(now / G), W / G
          local bu, bf = nt, 0
          if ha and (ha > nt or (ha == nt and hb > 0)) then bu, bf = ha, hb end
          local dist = (bu - nt) * L + bf
          local full = C * Wt
          local newdist = dist + cost * Wt
          if cost > C or newdist > full then
            local retry = W
            if cost <= C then retry = max((nt + ceil((newdist - full) / L)) * G - now, 1) end
            local reset = 0
            if dist > 0 then reset = (nt + ceil(dist / L)) * G - now end
            part = pack(R1, 1, 0, floor(max(full - dist, 0) / Wt), reset, retry) break
          end
          local reset = 0
          if newdist > 0 then reset = (nt + ceil(newdist / L)) * G - now end
          if cost > 0 then
            if he and now + reset + W / 2 <= he then
              -- The key's expiry, set to he, outlasts the new state by half a window or more
              -- (more than any clock skew between replicas): only the state changes.
              hw = hw or 1
            else
              -- The state matters until now + reset; the key lives a window longer, so a busy
              -- key's next hits leave its expiry alone (until half of that is used up).
              he = now + reset + W
              hw, hpx = 2, ceil((he - now) / 1000)
            end
            local q = floor(newdist / L)
            ha, hb = nt + q, newdist - q * L
          end
          part = pack(R1, 1, 1, floor(max(full - newdist, 0) / Wt), reset, -1) break
        end
      end

      -- Every key's arguments, 7 per key: F[7 * i - 6 .. 7 * i] for key i.
      local F = { unpack_('<' .. string.rep('BBddddd', n), P, pos) }

      if mode == 1 then
        -- Undo hits counted by an earlier call with the same now (Redis Cluster: another slot of the
        -- same request rejected it). Never below empty; the key keeps its expiry.
        for i = 1, n do
          local a = 7 * i - 7
          local key, alg, L, W, cost = KEYS[kb + i], F[a + 1], F[a + 3], F[a + 4], F[a + 6]
          local v = redis.call('GET', key)
          if cost > 0 and v then
            local f = byte(v, 1)
            if alg == 0 and f == SLIDING then
              local c = { unpack_(SFMT, v) }
              local top, cur = c[2], floor(now / F[a + 7])
              if cur <= top and top - cur < RING then
                local s = cur % RING + 3
                c[s] = max(c[s] - cost, 0)
                redis.call('SET', key, pack(SFMT, SLIDING, top, unpack(c, 3, RING + 2)), 'KEEPTTL')
              end
            elseif alg == 1 and f == FIXED then
              local _, w, c = unpack_('<Bdd', v)
              if w == floor(now / W) then
                redis.call('SET', key, pack('<Bdd', FIXED, w, max(c - cost, 0)), 'KEEPTTL')
              end
            elseif alg == 4 and f == PERIOD then
              local _, ps, c = unpack_('<Bdd', v)
              if ps == W then
                redis.call('SET', key, pack('<Bdd', PERIOD, ps, max(c - cost, 0)), 'KEEPTTL')
              end
            elseif alg >= 2 and f == METER then
              local G = F[a + 7]
              local nt, Wt = floor(now / G), W / G
              local _, t, fr = unpack_('<Bdd', v)
              local d = (t - nt) * L + fr - cost * Wt
              if d <= 0 then
                redis.call('DEL', key)
              else
                local q = floor(d / L)
                redis.call('SET', key, pack('<Bdd', METER, nt + q, d - q * L), 'KEEPTTL')
              end
            end
          end
        end
        part = '\0' break
      end

      -- Per hit: the stored state of its key (a = window / newest / tat, b = count / frac, r =
      -- sliding ring; absent when empty), kept at the key's first hit; the state after the hit
      -- (na, nb, nr) and its expiry, when counted.
      local sa, sb, sr, na, nb, nr, exp, first = {}, {}, {}, {}, {}, {}, {}, {}
      local res = {}
      local rejected = false
      for pass = 1, 2 do
        for i = 1, n do
          local a = 7 * i - 7
          local key, alg = KEYS[kb + i], F[a + 1]
          -- Pass 2 (the request was rejected): counted hits report their counter as stored.
          if pass == 1 or na[i] then
            local L, W, C, cost, X = F[a + 3], F[a + 4], F[a + 5], F[a + 6], F[a + 7]
            local shadow = F[a + 2] == 1
            local A, B, R
            if pass == 1 then
              -- A key hit again in one request starts from its latest counted hit.
              local f0, latest = i, nil
              for j = i - 1, 1, -1 do
                if KEYS[kb + j] == key then
                  f0 = j
                  if latest == nil and na[j] then latest = j end
                end
              end
              first[i] = f0
              if f0 == i then
                local v = redis.call('GET', key)
                local f = v and byte(v, 1)
                if alg == 0 and f == SLIDING then
                  local c = { unpack_(SFMT, v) }
                  sa[i], sr[i] = c[2], { unpack(c, 3, RING + 2) }
                elseif (alg == 1 and f == FIXED) or (alg == 4 and f == PERIOD)
                    or (alg >= 2 and alg <= 3 and f == METER) then
                  local _, x, y = unpack_('<Bdd', v)
                  sa[i], sb[i] = x, y
                end
              end
              if latest then
                A, B, R = na[latest], nb[latest], nr[latest]
              else
                A, B, R = sa[f0], sb[f0], sr[f0]
              end
            else
              cost = 0
              local f0 = first[i]
              A, B, R = sa[f0], sb[f0], sr[f0]
            end
            local adm, rem, reset, retry, xa, xb, xr, xexp
            if alg == 1 then
              -- fixed_window
              local w = floor(now / W)
              local count = 0
              if A and A > w then
                -- The counter is already in a later window (this caller's clock lags): check only.
                adm = cost == 0 and B <= L
                rem, reset, retry = max(L - B, 0), (A + 1) * W - now, -1
                if cost > 0 then retry = max(A * W - now, 1) end
              else
                if A == w then count = B end
                adm = count + cost <= L
                local after = count
                if adm then after = count + cost end
                local wend = (w + 1) * W
                retry = -1
                if not adm then
                  if cost > L then retry = W else retry = wend - now end
                end
                rem, reset = max(L - after, 0), 0
                if after > 0 then reset = wend - now end
                xa, xb, xexp = w, after, wend
              end
            elseif alg == 4 then
              -- calendar period [W, C): a fixed window whose bounds the caller computed
              local count = 0
              if A and A > W then
                -- The counter is already in a later period (this caller's clock lags): check only.
                adm = cost == 0 and B <= L
                rem, reset, retry = max(L - B, 0), C - now, -1
                if cost > 0 then retry = max(A - now, 1) end
              else
                if A == W then count = B end
                adm = count + cost <= L
                local after = count
                if adm then after = count + cost end
                retry = -1
                if not adm then retry = C - now end
                rem, reset = max(L - after, 0), 0
                if after > 0 then reset = C - now end
                xa, xb, xexp = W, after, C
              end
            elseif alg == 0 then
              -- sliding_window
              local b = X
              local cur = floor(now / b)
              local top = A or cur
              local c = {}
              for s = 1, RING do c[s] = R and R[s] or 0 end
              if cur > top then
                -- Sub-windows that slid out are reused for the new ones.
                for s = top + 1, top + min(cur - top, RING) do c[s % RING + 1] = 0 end
                top = cur
              end
              local held = max(top - K - D, 0)
              if cur + D < top then
                -- This caller's clock lags the newest writer's beyond what is kept: check only.
                local counted, newest = 0, nil
                for s = 1, RING do counted = counted + c[s] end
                for idx = top, held, -1 do
                  if c[idx % RING + 1] > 0 then newest = idx break end
                end
                adm = cost == 0 and counted <= L
                rem, reset, retry = max(L - counted, 0), 0, -1
                if newest then reset = max((newest + K + 1) * b - now, 0) end
                if cost > 0 then retry = max((top - D) * b - now, 1) end
              else
                local from = max(cur - K, 0)
                local counted = 0
                for idx = from, top do counted = counted + c[idx % RING + 1] end
                adm = counted + cost <= L
                local after = counted
                retry = -1
                if not adm then
                  retry = W
                  if cost <= L then
                    local need, freed = counted + cost - L, 0
                    for idx = from, top do
                      freed = freed + c[idx % RING + 1]
                      if freed >= need then
                        retry = max((idx + K + 1) * b - now, 0)
                        break
                      end
                    end
                  end
                elseif cost > 0 then
                  after = counted + cost
                  c[cur % RING + 1] = c[cur % RING + 1] + cost
                end
                rem, reset = max(L - after, 0), 0
                local newest = nil
                for idx = top, from, -1 do
                  if c[idx % RING + 1] > 0 then newest = idx break end
                end
                if newest then reset = max((newest + K + 1) * b - now, 0) end
                local kept = nil
                for idx = top, held, -1 do
                  if c[idx % RING + 1] > 0 then kept = idx break end
                end
                xa, xr, xexp = top, c, now
                if kept then xexp = (kept + K + 1 + D) * b end
              end
            else
              -- token_bucket and gcra: the exact meter, in ticks of G µs (Rule::meter_tick_us)
              local G = X
              local nt, Wt = floor(now / G), W / G
              local bu, bf = nt, 0
              if A and (A > nt or (A == nt and B > 0)) then bu, bf = A, B end
              local dist = (bu - nt) * L + bf
              local full = C * Wt
              local newdist = dist + cost * Wt
              adm = cost <= C and newdist <= full
              local after = dist
              if adm then after = newdist end
              retry = -1
              if not adm then
                if cost > C then retry = W else retry = max((nt + ceil((newdist - full) / L)) * G - now, 1) end
              end
              reset = 0
              if after > 0 then reset = (nt + ceil(after / L)) * G - now end
              rem = floor(max(full - after, 0) / Wt)
              if adm and cost > 0 then
                local q = floor(newdist / L)
                xa, xb = nt + q, newdist - q * L
              end
              xexp = now + reset
            end
            if pass == 1 then
              if adm and cost > 0 then
                na[i], nb[i], nr[i], exp[i] = xa, xb, xr, xexp
              elseif not adm and not shadow then
                rejected = true
              end
              res[4 * i - 3] = adm and 1 or 0
              res[4 * i - 2] = rem
              res[4 * i - 1] = reset
              res[4 * i] = retry
            else
              res[4 * i - 2] = rem
              res[4 * i - 1] = reset
            end
          end
        end
        if not rejected then break end
      end
      if rejected then
        part = pack('<B' .. string.rep('d', #res), 1, unpack(res)) break
      end

      -- Commit: one SET per key, with the state after its last counted hit.
      for i = 1, n do
        if na[i] then
          local key, last = KEYS[kb + i], true
          for j = i + 1, n do
            if KEYS[kb + j] == key and na[j] then last = false break end
          end
          if last then
            local alg, v = F[7 * i - 6], nil
            if alg == 0 then
              v = pack(SFMT, SLIDING, na[i], unpack(nr[i], 1, RING))
            elseif alg == 1 then
              v = pack('<Bdd', FIXED, na[i], nb[i])
            elseif alg == 4 then
              v = pack('<Bdd', PERIOD, na[i], nb[i])
            else
              v = pack('<Bdd', METER, na[i], nb[i])
            end
            redis.call('SET', key, v, 'PX', fmt('%d', max(ceil((exp[i] - now) / 1000), 1)))
          end
        end
      end
      part = pack('<B' .. string.rep('d', #res), 1, unpack(res)) break
  until true
  if out then out[r + 1] = part else out = part end
  kb = kb + n
end
if nreq == 1 then return head .. out end
return table.concat(out)
