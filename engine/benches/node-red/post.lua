wrk.method = "POST"
wrk.body = '{"po":"PO-4500000001","total":1500}'
wrk.headers["Content-Type"] = "application/json"
