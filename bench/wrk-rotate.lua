-- wrk script for `cargo xtask bench`: every request carries the next token of a pool
-- (one token per line in $WRK_TOKENS), so a verifier with a cache sees mostly new tokens.
-- Thread k of n starts at token k and steps by n, so threads never send the same token at
-- the same time. The Authorization header given with -H is replaced.
local counter = 0
local threads = {}

function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
  table.insert(threads, thread)
end

function init(args)
  tokens = {}
  local path = os.getenv("WRK_TOKENS")
  for line in io.lines(path) do
    if #line > 0 then tokens[#tokens + 1] = line end
  end
  step = os.getenv("WRK_THREADS") and tonumber(os.getenv("WRK_THREADS")) or 2
  idx = id or 1
end

function request()
  wrk.headers["Authorization"] = "Bearer " .. tokens[idx]
  idx = idx + step
  if idx > #tokens then idx = idx - #tokens end
  return wrk.format()
end
