import torch,math,torch.nn as nn,torch.nn.functional as F,sys,os
from torch.profiler import profile,ProfilerActivity as A
from torch.nn.attention.flex_attention import flex_attention
O=os.environ["OUT"];d="cuda";B,T,C,H=2,64,256,4;D=C//H
class M(nn.Module):
 def __init__(s,k):super().__init__();s.k=k;s.l=nn.Linear(C,3*C);s.register_buffer("m",torch.tril(torch.ones(T,T)).view(1,1,T,T))
 def forward(s,x):
  q,k,v=(t.view(B,T,H,D).transpose(1,2) for t in s.l(x).split(C,2))
  if s.k=="sdpa":y=F.scaled_dot_product_attention(q,k,v,is_causal=True)
  elif s.k=="flex":y=flex_attention(q,k,v)
  else:
   a=(q@k.transpose(-2,-1))*(1/math.sqrt(D));a=a.masked_fill(s.m==0,float("-inf"))
   y=F.dropout(F.softmax(a,-1),0.1)@v
  return y.transpose(1,2).contiguous().view(B,T,C)
def run(name,m):
 m=m.to(d);x=torch.randn(B,T,C,device=d)
 for _ in range(2):m(x).sum().backward()
 torch.cuda.synchronize()
 with profile(activities=[A.CPU,A.CUDA],record_shapes=True,with_stack=True) as p:
  for _ in range(2):m(x).sum().backward()
  torch.cuda.synchronize()
 p.export_chrome_trace(f"{O}/{name}.json");print(name,"ok",flush=True)
run("eager_manual",nn.Sequential(M("manual"),M("manual")))
for k in ["sdpa","manual","flex"]:
 try:run("compiled_"+k,torch.compile(nn.Sequential(M(k),M(k))))
 except Exception as e:print(k,"failed",repr(e)[:300])
