"""Names the functions of an hvprof profile (tools/profile/hvprof.c):
report.py PROFILE ELF [ROWS]. Each translation block's count goes to the
function its first instruction is in (addr2line), so inlined code counts
for its caller."""
import subprocess, sys, collections
f=open(sys.argv[1]); elf=sys.argv[2]
total=int(f.readline().split()[1])
rows=[l.split() for l in f]
addrs=[r[0] for r in rows]; counts=[int(r[1]) for r in rows]
out=subprocess.run(['addr2line','-f','-C','-e',elf]+['0x'+a for a in addrs],capture_output=True,text=True).stdout.split('\n')
funcs=out[0::2]
agg=collections.Counter()
for fn,c in zip(funcs,counts):
    agg[fn if fn.startswith('<') else fn.split('<')[0]]+=c
hv=sum(counts)
print("machine instructions %d, hypervisor text %d (%.1f%%)"%(total,hv,100*hv/total))
for fn,c in agg.most_common(int(sys.argv[3]) if len(sys.argv)>3 else 40):
    print("%12d %5.1f%%  %s"%(c,100*c/hv,fn))
