-- wrk script for the HTTP benches: every request carries its own x-request-id, as traced
-- service-to-service traffic does, so no two request heads on a connection are identical.
-- Without it wrk repeats one byte-identical head, and the proxy's per-connection head memo
-- (proxy/http/session_fast.py) would answer every request from memory: a figure real
-- clients with request IDs never see. The head is written out by hand, Host first as
-- curl, browsers and HTTP libraries send it: wrk.format() emits a Lua table's headers in
-- hash order, which put Host after the ID.
local counter = 0
request = function()
  counter = counter + 1
  return string.format("GET %s HTTP/1.1\r\nHost: %s\r\nx-request-id: %016x\r\n\r\n",
                       wrk.path, wrk.headers["Host"], counter)
end
