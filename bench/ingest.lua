-- wrk script for bench/ingest.py: every request POSTs one realistic ORDER_CREATED event with
-- the bearer token from EVENTFLOW_TOKEN. Counts responses by status so the runner can check
-- that every 202 became a row, and prints one machine-readable RESULT line when wrk is done.

local token = os.getenv("EVENTFLOW_TOKEN")
if token == nil or token == "" then
  error("EVENTFLOW_TOKEN is not set: run this script through bench/ingest.py")
end

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. token
wrk.body = [[{"type":"ORDER_CREATED","payload":{"orderId":"ord_7f3a9c21","customerId":"cus_42817",]]
  .. [["currency":"EUR","channel":"web","items":[{"sku":"SKU-1042","name":"Espresso beans 1 kg",]]
  .. [["price":24.9,"qty":2},{"sku":"SKU-2210","name":"Milk frother","price":39.0,"qty":1},]]
  .. [[{"sku":"SKU-0007","name":"Paper filters (100)","price":3.5,"qty":3}],]]
  .. [["shippingAddress":{"name":"Ada Lovelace","street":"12 St James's Square",]]
  .. [["city":"London","postcode":"SW1Y 4JH","country":"GB"},"coupon":null,]]
  .. [["placedAt":"2025-11-25T10:15:00Z"}}]]

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
  sent = 0
  prepared = wrk.format()  -- the same request every time, built once
end

-- Counting what was sent tells the runner how many requests were still unanswered when wrk's
-- clock ran out: the server may have committed those without wrk ever seeing the 202.
function request()
  sent = sent + 1
  return prepared
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local counts = {}
  local sent = 0
  for _, thread in ipairs(threads) do
    sent = sent + thread:get("sent")
    for status, n in pairs(thread:get("statuses")) do
      counts[status] = (counts[status] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(counts) do
    table.insert(parts, string.format('"%d":%d', status, n))
  end
  local errors = summary.errors
  io.write(string.format(
    'RESULT {"requests":%d,"sent":%d,"duration_us":%d,"statuses":{%s},'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
      .. '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f}}\n',
    summary.requests, sent, summary.duration, table.concat(parts, ","),
    errors.connect, errors.read, errors.write, errors.status, errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
