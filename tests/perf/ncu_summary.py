import csv,collections,sys
allr=list(csv.reader(open(sys.argv[1])))
h0=[i for i,r in enumerate(allr) if r and r[0]=='ID'][0]
hdr=allr[h0]; rows=[r for r in allr[h0+1:] if len(r)==len(hdr)]
ki=hdr.index('Kernel Name'); vi=hdr.index('Metric Value'); gi=hdr.index('Grid Size'); bi=hdr.index('Block Size')
data=[(r[ki], float(r[vi].replace(',','')), r[gi], r[bi]) for r in rows]
split=sys.argv[2] if len(sys.argv)>2 else None
steps=[[]]
for d in data:
    steps[-1].append(d)
    if split and split in d[0]: steps.append([])
for s,part in enumerate(steps[:int(sys.argv[3]) if len(sys.argv)>3 else 3]):
    if not part: continue
    agg=collections.OrderedDict()
    for k,v,g,b in part:
        a=agg.setdefault(k[:90],[0,0.0,g,b]); a[0]+=1; a[1]+=v
    tot=sum(v for _,v,_,_ in part)
    print("step",s,"kernels",len(part),"total us",round(tot/1000,1))
    for k,(c,v,g,b) in sorted(agg.items(), key=lambda x:-x[1][1])[:16]:
        print(f"  {c:4d} {v/1000:9.1f} us {v/c/1000:7.2f} avg {g:>14} {b:>12} {k}")
