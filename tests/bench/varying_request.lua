-- wrk script for the HTTP benches: every request carries its own x-request-id, as traced
-- service-to-service traffic does, so no two request heads on a connection are identical.
-- Without it wrk repeats one byte-identical head, and the proxy's per-connection head memo
-- (proxy/http/session_fast.py) would answer every request from memory: a figure real
-- clients with request IDs never see.
local counter = 0
request = function()
  counter = counter + 1
  return wrk.format(nil, nil, {["x-request-id"] = string.format("%016x", counter)})
end
