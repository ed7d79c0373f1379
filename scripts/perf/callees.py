#!/usr/bin/env python3
# callees.py SCRIPT_TXT T0 T1 N FUNC: what FUNC's samples (between T0 and T1) spent in its
# direct callees, in µs of CPU per item (N items, 499 Hz).
import sys, collections, re
fn,t0,t1,n,func=sys.argv[1],float(sys.argv[2]),float(sys.argv[3]),float(sys.argv[4]),sys.argv[5]
per=1e6/499/n
cnt=collections.Counter(); tot=0; cur=None
def flush(c):
    global tot
    if not c or not (t0<=c[0]<=t1): return
    fr=c[1]  # leaf first
    idx=[i for i,f in enumerate(fr) if func in f]
    if not idx: return
    i=idx[-1]  # outermost occurrence
    tot+=1
    cnt[fr[i-1] if i>0 else '(self)']+=1
for line in open(fn):
    if not line.strip():
        flush(cur); cur=None; continue
    if not line[0].isspace():
        p=line.split(); ti=[i for i,x in enumerate(p) if x.endswith(':')][0]
        cur=(float(p[ti][:-1]),[])
    else:
        s=line.strip().split(None,1); cur[1].append(re.sub(r'\+0x[0-9a-f]+$','',s[1]) if len(s)>1 else '?')
flush(cur)
print(func,"%.3f us"%(tot*per))
for k,v in cnt.most_common(25): print("  %.3f %s"%(v*per,k[:120]))
