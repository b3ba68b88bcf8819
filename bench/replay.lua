-- wrk script for bench/compare.py: send each line of LINES_FILE once, spread over the threads.
--
-- MODE=put:    each line is a path (signed return parameters), sent as PUT with no body.
-- MODE=notify: each line is a form body (a signed notification), POSTed to NOTIFY_PATH.
-- CYCLE=1 lets a thread start over once its lines are used up (reloads); otherwise it still
-- starts over, so that wrk keeps its load, but counts those requests as repeats.
-- EXPECT_BODY, when set, counts answers whose body differs (Alipay wants `success`).
-- done() prints one `replay` line per thread: lines sent fresh, repeats, odd bodies and
-- the status codes seen, which compare.py reads back.
local threads = {}
local thread_count = 0

setup = function(thread)
  thread:set("tid", thread_count)
  thread_count = thread_count + 1
  table.insert(threads, thread)
end

local mode = os.getenv("MODE") or "put"
local notify_path = os.getenv("NOTIFY_PATH") or "/payment/alipay/notify/"
local expect_body = os.getenv("EXPECT_BODY")
local form = {["Content-Type"] = "application/x-www-form-urlencoded"}
local empty = {["Content-Length"] = "0"}

init = function(args)
  -- Each thread keeps only its own stripe of the file: line tid+1, tid+1+T, ...
  local stride = tonumber(os.getenv("WRK_THREADS")) or 2
  lines = {}
  local index = 0
  for line in io.lines(os.getenv("LINES_FILE")) do
    if index % stride == tid then lines[#lines + 1] = line end
    index = index + 1
  end
  sent = 0
  fresh = 0
  repeats = 0
  odd_bodies = 0
  statuses = {}
end

request = function()
  local line = lines[(sent % #lines) + 1]
  if sent < #lines then fresh = fresh + 1 else repeats = repeats + 1 end
  sent = sent + 1
  if mode == "notify" then
    return wrk.format("POST", notify_path, form, line)
  end
  return wrk.format("PUT", line, empty)
end

response = function(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if expect_body and body ~= expect_body then odd_bodies = odd_bodies + 1 end
end

done = function(summary, latency, requests)
  for _, thread in ipairs(threads) do
    local codes = {}
    for code, count in pairs(thread:get("statuses")) do
      codes[#codes + 1] = code .. "=" .. count
    end
    io.write(string.format("replay tid=%d fresh=%d repeats=%d odd_bodies=%d statuses=%s\n",
      thread:get("tid"), thread:get("fresh"), thread:get("repeats"),
      thread:get("odd_bodies"), table.concat(codes, ",")))
  end
end
