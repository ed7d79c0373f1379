#!/usr/bin/env python3
# prof.py SCRIPT_TXT T0 T1 N [HZ [TID]]: from `perf script -F comm,tid,time,ip,sym` of a
# `perf record -F HZ --call-graph dwarf,16384` run, the samples between T0 and T1 by thread,
# with each thread's self and inclusive symbols in µs of CPU per item (N items).
import sys, collections, re
fn=sys.argv[1]; t0=float(sys.argv[2]); t1=float(sys.argv[3]); n=float(sys.argv[4]); hz=float(sys.argv[5]) if len(sys.argv)>5 else 499
tidf=sys.argv[6] if len(sys.argv)>6 else None
samples=[]; cur=None
for line in open(fn):
    if not line.strip():
        if cur: samples.append(cur); cur=None
        continue
    if not line[0].isspace():
        p=line.split()
        # comm may contain spaces; tid is first int token after comm, time ends with ':'
        ti=[i for i,x in enumerate(p) if x.endswith(':')][0]
        cur=(" ".join(p[:ti-1]), p[ti-1], float(p[ti][:-1]), [])
    else:
        s=line.strip().split(None,1)
        cur[3].append(re.sub(r'\+0x[0-9a-f]+$','',s[1]) if len(s)>1 else '?')
if cur: samples.append(cur)
w=[s for s in samples if t0<=s[2]<=t1]
per=1e6/hz/n
thr=collections.Counter((s[0],s[1]) for s in w)
print("window samples",len(w),"us/reading total %.2f"%(len(w)*per))
for k,v in thr.most_common(8): print("  thread",k,"%.2f us"%(v*per))
groups=collections.defaultdict(list)
for s in w: groups[s[1]].append(s)
for tid,ss in sorted(groups.items(), key=lambda x:-len(x[1]))[:5]:
    if tidf and tid!=tidf: continue
    print("== thread",ss[0][0],tid,"%.2f us"%(len(ss)*per))
    selfc=collections.Counter(s[3][0] if s[3] else '?' for s in ss)
    inc=collections.Counter()
    for s in ss:
        for f in set(s[3]): inc[f]+=1
    print("  self:")
    for k,v in selfc.most_common(18): print("    %.3f %s"%(v*per,k[:110]))
    print("  inclusive:")
    for k,v in inc.most_common(40): print("    %.3f %s"%(v*per,k[:110]))
