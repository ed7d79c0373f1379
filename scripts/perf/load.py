#!/usr/bin/env python3
# load.py URL TOKEN FIRST COUNT METERS: posts readings FIRST..FIRST+COUNT (numbered as
# `bench ingest` numbers them: meter i % METERS, interval i / METERS from 2026-01-01) as
# NDJSON bodies of 1,000, from 4 clients taking the bodies in turn; prints how many were
# recorded (201) and the first other answer.
import sys, http.client, threading, datetime, json, time
url, token, first, count, meters = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
host, port = url.split("//")[1].split(":"); port = int(port)
base = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
def line(i):
    m = i % meters; k = i // meters
    s = base + datetime.timedelta(minutes=15 * k); e = s + datetime.timedelta(minutes=15)
    wh = 400000 + (i * 7919) % 100000
    return '{"meter_id":"m-%06d","flow":"consumed","start":"%s","end":"%s","wh":"%d"}' % (m, s.strftime("%Y-%m-%dT%H:%M:%SZ"), e.strftime("%Y-%m-%dT%H:%M:%SZ"), wh)
chunks = list(range(first, first + count, 1000))
lock = threading.Lock(); stats = {"ok": 0, "other": 0, "first_other": None}
def worker(n):
    c = http.client.HTTPConnection(host, port)
    for ci in range(n, len(chunks), 4):
        a = chunks[ci]; body = "\n".join(line(i) for i in range(a, min(a + 1000, first + count))) + "\n"
        c.request("POST", "/v1/readings", body, {"authorization": "Bearer " + token, "content-type": "application/x-ndjson"})
        r = c.getresponse(); text = r.read().decode()
        ok = other = 0; fo = None
        for l in text.splitlines():
            if not l.strip(): continue
            d = json.loads(l)
            # 201: recorded; 200: a duplicate; anything else: refused.
            if d.get("status") == 201: ok += 1
            else:
                other += 1; fo = fo or l
        with lock:
            stats["ok"] += ok; stats["other"] += other
            if fo and not stats["first_other"]: stats["first_other"] = fo
t0 = time.time()
ts = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
[t.start() for t in ts]; [t.join() for t in ts]
print(json.dumps({"seconds": round(time.time() - t0, 2), **stats}))
